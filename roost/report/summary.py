"""`summarize`: the numbers of a dataset report, computed by lazy polars scans of its Parquet.

Only the columns a measure needs are read, and every table (stats, histogram bins, reject
counts, per-iteration figures) is aggregated inside the query on polars' streaming engine, so
the rows are never held whole: a report on a million rows costs a few scans, not the table.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from roost.report.columns import REMOVED_SIMILARITY, Measure, measures, panels, removed_similarity, row_kind, texts
from roost.report.layout import Build, Output, open_output

BINS = 40
SAMPLE_ROWS = 5
SAMPLE_CHARS = 400
SEP = "::"  # joins measure and statistic in the aliases of one wide aggregation
STATS = ("count", "mean", "min", "p50", "p90", "max")


@dataclass
class Histogram:
    edges: list[float]  # len(counts) + 1; bins are [edges[i], edges[i+1]), the last one closed
    counts: list[int]
    above: int = 0  # values past the last edge (a long tail cut at p99), counted in the last bin


@dataclass
class Summary:
    path: str
    kind: str  # the manifest's kind: sft, preference, curated; "iterate" for a loop
    row_kind: str  # sft or preference
    facts: dict[str, str]  # what made it (model, revision, synthesizer, sampling, ...), shown as is
    rows: int
    rejects: int
    files: int
    columns: list[str]
    subsets: dict[str, int]  # rows per subset folder (easy, hard, sppo, prm, ...)
    stages: list[dict[str, Any]]  # curate: {name, rows_in, kept, removed: {reason: n}}
    labels: dict[str, str]  # measure -> axis label
    stats: dict[str, dict[str, float | int | None]]  # measure -> {count, mean, min, p50, p90, max}
    histograms: dict[str, Histogram]  # measure -> bins (measures drawn together share edges)
    thresholds: dict[str, float]  # "semantic_dedup", "difficulty", "zero": lines the plots mark
    threshold_notes: dict[str, str]  # where each threshold came from
    rejects_by_reason: list[dict[str, Any]]  # {stage, reason, rows}, most first
    sample: list[dict[str, Any]]  # the first rows, texts cut to SAMPLE_CHARS
    iterations: list[dict[str, Any]] = field(default_factory=list)  # {iteration, rows, rejects, stats, eval}
    baseline: dict[str, Any] | None = None  # `roost iterate` with loop.eval: the base model's held-out metric

    def panels(self):
        """The histogram panels this summary can draw."""
        return [p for p in panels(set(self.histograms)) if any(m in self.histograms for m in p.measures)]


def summarize(out: Path) -> Summary:
    output = open_output(Path(out))
    scan = _scan(output.data)
    schema = scan.collect_schema()
    found = measures(schema)
    wide = _aggregate(scan, schema, found)
    stats = {m.name: {s: wide[f"{m.name}{SEP}{s}"] for s in STATS} for m in found}
    stats = {name: s for name, s in stats.items() if s["count"]}
    labels = {m.name: m.label for m in found if m.name in stats}
    thresholds, notes = _thresholds(output, wide)

    rejects, removed = _rejects(output.rejects)
    tails = {m.name: wide[f"{m.name}{SEP}p99"] for m in found if m.name in stats}
    if removed is not None and removed["count"]:
        stats[REMOVED_SIMILARITY] = removed
        labels[REMOVED_SIMILARITY] = "cosine similarity to the row it duplicates"
        tails[REMOVED_SIMILARITY] = removed["max"]
    integer = {m.name for m in found if m.integer}
    edges = _edges(stats, tails, integer, thresholds)
    histograms = _histograms(scan, found, edges, integer)
    if REMOVED_SIMILARITY in edges:
        histograms[REMOVED_SIMILARITY] = _removed_histogram(output.rejects, edges[REMOVED_SIMILARITY])

    first = output.builds[0].manifest
    return Summary(
        path=str(output.root),
        kind="iterate" if output.is_loop else str(first.get("kind", "")),
        row_kind=str(first.get("row_kind") or row_kind(schema)),
        facts=_facts(output),
        rows=int(wide["rows"]),
        rejects=sum(pq.ParquetFile(f).metadata.num_rows for f in output.rejects),
        files=len(output.data),
        columns=list(schema.names()),
        subsets={k: v for b in output.builds for k, v in b.subsets().items()} if not output.is_loop else {},
        stages=[{k: st.get(k) for k in ("name", "rows_in", "kept", "removed")} for st in first.get("stages") or []]
        if not output.is_loop else [],
        labels=labels,
        stats=stats,
        histograms=histograms,
        thresholds=thresholds,
        threshold_notes=notes,
        rejects_by_reason=rejects,
        sample=_sample(scan, schema, found),
        iterations=_iterations(output, scan, found, wide),
        baseline=output.manifest.get("baseline") if output.is_loop else None,
    )


def _scan(files: list[Path]) -> pl.LazyFrame:
    return pl.scan_parquet([str(f) for f in files])


def _collect(frame: pl.LazyFrame) -> pl.DataFrame:
    return frame.collect(engine="streaming")


def _stat_exprs(name: str, extra: bool = True) -> list[pl.Expr]:
    x = pl.col(name)
    exprs = [x.count().alias(f"{name}{SEP}count"), x.mean().alias(f"{name}{SEP}mean"),
             x.min().cast(pl.Float64).alias(f"{name}{SEP}min"),
             x.quantile(0.5, "linear").alias(f"{name}{SEP}p50"), x.quantile(0.9, "linear").alias(f"{name}{SEP}p90"),
             x.max().cast(pl.Float64).alias(f"{name}{SEP}max")]
    if extra:  # where a histogram's axis stops when a long tail would squash it
        exprs.append(x.quantile(0.99, "linear").alias(f"{name}{SEP}p99"))
    return exprs


def _aggregate(scan: pl.LazyFrame, schema: pl.Schema, found: list[Measure]) -> dict[str, Any]:
    """One scan: the row count, every measure's statistics, and the easy/hard cut of score gaps."""
    base = scan.select(*(m.expr.alias(m.name) for m in found), *_aux(schema))
    aggs = [pl.len().alias("rows")]
    for m in found:
        aggs += _stat_exprs(m.name)
    if "difficulty" in schema and any(m.name == "score_gap" for m in found):
        gap, level = pl.col("score_gap"), pl.col("difficulty")
        aggs += [gap.filter(level == "easy").min().alias("easy_min_gap"),
                 gap.filter(level == "hard").max().alias("hard_max_gap")]
    if "iteration" in schema:
        aggs.append(pl.col("iteration").n_unique().alias("iterations"))
    return _collect(base.select(aggs)).row(0, named=True)


def _aux(schema: pl.Schema) -> list[pl.Expr]:
    return [pl.col(c) for c in ("difficulty", "iteration") if c in schema]


def _thresholds(output: Output, wide: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    values: dict[str, float] = {"zero": 0.0}
    notes: dict[str, str] = {}
    manifest = output.builds[0].manifest
    for st in manifest.get("stages") or []:
        threshold = (st.get("settings") or {}).get("threshold")
        if st.get("name") == "semantic_dedup" and isinstance(threshold, (int, float)):
            values["semantic_dedup"] = float(threshold)
            notes["semantic_dedup"] = "semantic dedup threshold (manifest)"
    cut = (manifest.get("difficulty") or {}).get("threshold")
    recorded = ((manifest.get("input_provenance") or {}).get("difficulty") or {}).get("threshold")
    source = _input_manifest(output) if recorded is None else None
    if isinstance(cut, (int, float)):
        values["difficulty"] = float(cut)
        notes["difficulty"] = "easy/hard cut (manifest: score_gap >= cut is easy)"
    elif isinstance(recorded, (int, float)):
        values["difficulty"] = float(recorded)  # curated pairs: the cut their build drew, as the curation recorded it
        notes["difficulty"] = "easy/hard cut (the input's build, manifest input_provenance)"
    elif isinstance(cut := (source[1].get("difficulty") or {}).get("threshold") if source else None, (int, float)):
        values["difficulty"] = float(cut)  # curated pairs: the cut their build drew
        notes["difficulty"] = f"easy/hard cut (manifest of the input, {(manifest.get('input') or {}).get('path')})"
    elif wide.get("easy_min_gap") is not None:  # e.g. curated pairs: the cut is where easy rows start
        values["difficulty"] = float(wide["easy_min_gap"])
        notes["difficulty"] = "easy/hard cut (smallest gap of the easy rows)"
    return values, notes


def _input_manifest(output: Output) -> tuple[Path, dict[str, Any]] | None:
    """A curated output's input, when it is a roost output still on disk. Its path was recorded
    as given (often relative to where curate ran), so it is tried as is and against the
    folders above this output."""
    source = output.builds[0].manifest.get("input")
    given = source.get("path") if isinstance(source, dict) else None
    if not isinstance(given, str) or "://" in given:
        return None
    for base in (Path.cwd(), output.root.resolve(), *output.root.resolve().parents):  # roost.dataset.portable: ../x
        folder = base / given
        if (folder / "manifest.json").is_file() and folder.resolve() != output.root.resolve():
            try:
                return folder, json.loads((folder / "manifest.json").read_text())
            except (OSError, ValueError):
                return None
    return None


def _edges(stats: dict, tails: dict, integer: set[str], thresholds: dict[str, float]) -> dict[str, list[float]]:
    """Bin edges per measure, shared by the measures of one panel; a marked threshold is kept in range."""
    out: dict[str, list[float]] = {}
    for panel in panels(set(stats)):
        names = [m for m in panel.measures if m in stats]
        if not names:
            continue
        lo = min(stats[m]["min"] for m in names)
        hi = max(_axis_end(stats[m], tails[m]) for m in names)
        mark = thresholds.get(panel.marker) if panel.marker else None
        if mark is not None:
            lo, hi = min(lo, mark), max(hi, mark)
        edges = _bin_edges(lo, hi, all(m in integer for m in names))
        out.update((m, edges) for m in names)
    return out


def _axis_end(s: dict, p99: float | None) -> float:
    # A top 1% stretching the axis past three times the body's width is cut off at p99
    # (and counted in the last bin, which the plot labels).
    if p99 is not None and s["max"] - s["min"] > 3 * (p99 - s["min"]) and p99 > s["min"]:
        return p99
    return s["max"]


def _bin_edges(lo: float, hi: float, integer: bool) -> list[float]:
    if integer:
        lo, hi = math.floor(lo), math.ceil(hi)
        width = max(1, math.ceil((hi - lo + 1) / BINS))
        return [lo + width * i for i in range(math.ceil((hi - lo + 1) / width) + 1)]
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / BINS
    return [lo + width * i for i in range(BINS)] + [hi]


def _bin_exprs(name: str, edges: list[float], integer: bool) -> list[pl.Expr]:
    x = pl.col(name)
    n = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    if integer:
        index = (x.cast(pl.Int64) - int(lo)) // int(edges[1] - edges[0])
        above = x >= hi
    else:
        index = ((x - lo) / ((hi - lo) / n)).floor()
        above = x > hi
    index = index.clip(0, n - 1).cast(pl.Int64)
    return [(index == i).sum().alias(f"{name}{SEP}{i}") for i in range(n)] + [above.sum().alias(f"{name}{SEP}above")]


def _histograms(scan: pl.LazyFrame, found: list[Measure], edges: dict[str, list[float]],
                integer: set[str]) -> dict[str, Histogram]:
    binned = [m for m in found if m.name in edges]
    if not binned:
        return {}
    aggs = [e for m in binned for e in _bin_exprs(m.name, edges[m.name], m.name in integer)]
    wide = _collect(scan.select(*(m.expr.alias(m.name) for m in binned)).select(aggs)).row(0, named=True)
    return {m.name: _histogram(wide, m.name, edges[m.name]) for m in binned}


def _histogram(wide: dict, name: str, edges: list[float]) -> Histogram:
    counts = [int(wide[f"{name}{SEP}{i}"] or 0) for i in range(len(edges) - 1)]
    return Histogram(edges=[float(e) for e in edges], counts=counts, above=int(wide[f"{name}{SEP}above"] or 0))


def _reject_scan(files: list[Path]) -> pl.LazyFrame | None:
    if not files:
        return None
    scan = _scan(files)
    return scan if {"stage", "reason"} <= set(scan.collect_schema().names()) else None


def _rejects(files: list[Path]) -> tuple[list[dict[str, Any]], dict | None]:
    """Reject counts by stage and reason, and statistics of the similarities semantic dedup removed at."""
    scan = _reject_scan(files)
    if scan is None:
        return [], None
    counts = _collect(scan.group_by("stage", "reason").agg(pl.len().alias("rows")))
    table = sorted(counts.to_dicts(), key=lambda r: (-r["rows"], r["stage"] or "", r["reason"] or ""))
    if "detail" not in scan.collect_schema().names():
        return table, None
    sims = scan.filter(pl.col("reason") == "semantic_duplicate").select(removed_similarity().alias(REMOVED_SIMILARITY))
    wide = _collect(sims.select(_stat_exprs(REMOVED_SIMILARITY, extra=False))).row(0, named=True)
    return table, {s: wide[f"{REMOVED_SIMILARITY}{SEP}{s}"] for s in STATS}


def _removed_histogram(files: list[Path], edges: list[float]) -> Histogram:
    scan = _reject_scan(files)
    sims = scan.filter(pl.col("reason") == "semantic_duplicate").select(removed_similarity().alias(REMOVED_SIMILARITY))
    wide = _collect(sims.select(_bin_exprs(REMOVED_SIMILARITY, edges, integer=False))).row(0, named=True)
    return _histogram(wide, REMOVED_SIMILARITY, edges)


def _clip(text: pl.Expr) -> pl.Expr:
    cut = text.str.slice(0, SAMPLE_CHARS) + pl.lit("…")
    return pl.when(text.str.len_chars() > SAMPLE_CHARS).then(cut).otherwise(text)


def _sample(scan: pl.LazyFrame, schema: pl.Schema, found: list[Measure]) -> list[dict[str, Any]]:
    """The first rows (a head reads only the first row group): id, texts cut short, scores."""
    cols = [pl.col("id")] if "id" in schema else []
    cols += [_clip(expr).alias(name) for name, expr in texts(schema).items()]
    cols += [m.expr.alias(m.name) for m in found if not m.integer]
    if not cols:
        return []
    return scan.select(cols).head(SAMPLE_ROWS).collect().to_dicts()


def _iterations(output: Output, scan: pl.LazyFrame, found: list[Measure], wide: dict[str, Any]) -> list[dict[str, Any]]:
    """Per iteration of a self-play loop: rows, rejects, mean and median of every measure.
    From each iteration's build for `roost iterate`, or from the `iteration` column of rows
    that span several iterations."""
    if output.is_loop:
        steps = {s.get("iteration"): s for s in output.manifest.get("iterations") or []}
        return [_iteration_of_build(b, steps.get(b.iteration, {})) for b in output.builds]
    if (wide.get("iterations") or 0) < 2:
        return []
    aggs = [pl.len().alias("rows")]
    for m in found:
        aggs += [pl.col(m.name).mean().alias(f"{m.name}{SEP}mean"),
                 pl.col(m.name).quantile(0.5, "linear").alias(f"{m.name}{SEP}p50")]
    base = scan.select(*(m.expr.alias(m.name) for m in found), pl.col("iteration"))
    frame = _collect(base.group_by("iteration").agg(aggs)).sort("iteration")
    return [{"iteration": r["iteration"], "rows": r["rows"], "rejects": None, "model": None,
             "stats": _mean_p50(r, found)} for r in frame.iter_rows(named=True)]


def _iteration_of_build(build: Build, step: dict[str, Any]) -> dict[str, Any]:
    scan = _scan(build.data)
    found = measures(scan.collect_schema())
    aggs = [pl.len().alias("rows")]
    for m in found:
        aggs += [pl.col(m.name).mean().alias(f"{m.name}{SEP}mean"),
                 pl.col(m.name).quantile(0.5, "linear").alias(f"{m.name}{SEP}p50")]
    row = _collect(scan.select(*(m.expr.alias(m.name) for m in found)).select(aggs)).row(0, named=True)
    rejects = sum(pq.ParquetFile(f).metadata.num_rows for f in build.rejects)
    return {"iteration": build.iteration, "rows": row["rows"], "rejects": rejects, "model": step.get("model"),
            "stats": _mean_p50(row, found), "eval": step.get("eval")}  # held-out metric of the model it trained


def _mean_p50(row: dict[str, Any], found: list[Measure]) -> dict[str, dict[str, float | None]]:
    return {m.name: {"mean": row[f"{m.name}{SEP}mean"], "p50": row[f"{m.name}{SEP}p50"]} for m in found
            if row[f"{m.name}{SEP}mean"] is not None}


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _facts(output: Output) -> dict[str, str]:
    """What made the dataset, from its manifest (for a loop: the loop's and its first build's)."""
    first = output.builds[0].manifest
    recipe = first.get("recipe") or {}
    facts: dict[str, Any] = {"output": str(output.root), "recipe": recipe.get("name"),
                             "recipe hash": first.get("recipe_hash"), "kind": first.get("kind"),
                             "row kind": first.get("row_kind"), "synthesizer": first.get("synthesizer"),
                             "model": first.get("model"), "revision": first.get("revision"), "seed": first.get("seed"),
                             "sampling": first.get("sampling")}
    reward_model = first.get("reward_model")
    if isinstance(reward_model, dict):
        facts["reward model"] = f"{reward_model.get('model')} ({reward_model.get('revision')})"
    if first.get("kind") == "curated":
        facts["input"] = (first.get("input") or {}).get("path") if isinstance(first.get("input"), dict) else None
        facts["input rows"] = first.get("input_rows")
        facts["embedding model"] = (first.get("embedding") or {}).get("model")
    if (difficulty := first.get("difficulty")) and isinstance(difficulty, dict):
        facts["difficulty"] = difficulty.get("rule")
    if output.is_loop:
        loop = output.manifest.get("loop") or {}
        facts.update({"kind": "iterate", "iterations": len(output.builds), "loop status": output.manifest.get("status"),
                      "train command": loop.get("train"), "final model": output.manifest.get("final_model")})
    facts.update({"created": first.get("created_at"), "roost version": first.get("roost_version")})
    return {k: _short(v) for k, v in facts.items() if v not in (None, "", {}, [])}
