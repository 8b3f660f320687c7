"""The work of `roost curate`, as plain functions (roost.flows.curate wires them into Prefect).

    input -> validate -> heuristics -> exact dedup -> semantic dedup -> deita scores -> selection -> Parquet

Memory stays bounded: the input is read in batches, three times (1: validate, filter, hash and
embed; 2: score the survivors; 3: write). Between passes only per-row decisions, hashes, ids,
scores and the embeddings are kept, never the text. Every row that does not reach the output
is written to rejects/ with the stage and reason that removed it (and, for duplicates, the
id of the row it duplicates). The output keeps the input's columns and adds the tag and
score columns below.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from roost import __version__
from roost.build import OutputMismatch
from roost.filters.base import FilterStep
from roost.filters.exact_dedup import KEY_BUILDERS, exact_dedup
from roost.filters.heuristics import LengthFilter, NotARequestFilter, RepeatedNgramFilter, first_instruction
from roost.recipe import CurateRecipe
from roost.schemas import RowSchema, row_id
from roost.sources import Columns, Source, open_source, to_conversation
from roost.writer import (
    DatasetWriter,
    Reject,
    REJECT,
    atomic_write_table,
    base_manifest,
    shard_name,
)

TAG_FIELDS = [
    pa.field("min_neighbor_distance", pa.float64()),  # cosine distance to the nearest other row
    pa.field("repeat_count", pa.int64()),  # other rows at or above the dedup threshold
    pa.field("nearest_id", pa.string()),
    pa.field("nearest_similarity", pa.float64()),
]
SCORE_FIELDS = [
    pa.field("complexity_scores", pa.list_(pa.float64())),
    pa.field("quality_scores", pa.list_(pa.float64())),
    pa.field("deita_score", pa.float64()),
    pa.field("deita_score_reason", pa.string()),
]
SELECTION_FIELDS = [
    pa.field("selection_rank", pa.int64()),
    pa.field("nearest_kept_similarity", pa.float64()),
]


@dataclass
class Fate:
    stage: str
    reason: str
    detail: str | None = None
    duplicate_of: str | None = None


@dataclass
class Survivors:
    """What pass 1 keeps about the rows that are still in, indexed 0..n-1 in input order."""

    position: list[int] = field(default_factory=list)  # row number in the input
    ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # hash of the normalized exact-dedup key
    priority: list[float | None] = field(default_factory=list)
    embeddings: np.ndarray | None = None


@dataclass
class Stage:
    name: str
    rows_in: int
    kept: int
    removed: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)


class Curation:
    def __init__(self, recipe: CurateRecipe, source: Source, out: str | Path, *, progress: bool = True):
        self.recipe = recipe
        self.source = source
        self.out = Path(out)
        self.cols = Columns(
            recipe.input.messages_column, recipe.input.instruction_column,
            recipe.input.response_column, recipe.input.id_column,
        )
        self.form = self.cols.check(source.schema)
        self.fates: dict[int, Fate] = {}
        self.stages: list[Stage] = []
        self.tags: dict[int, dict[str, Any]] = {}  # input position -> new column values
        self.total = 0
        self.embedder_info: dict[str, Any] | None = None
        self.scorer_info: dict[str, Any] | None = None
        self._progress = _progress_bar() if progress else None

    # -- passes -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        with self._progress or _Null():
            survivors = self.read_and_filter()
            survivors = self.exact(survivors)
            survivors = self.semantic(survivors)
            scores = self.score(survivors)
            survivors = self.select(survivors, scores)
            return self.write(survivors)

    def read_and_filter(self) -> Survivors:
        """Pass 1: validate every row, apply the heuristics, hash the key, embed the text."""
        cfg = self.recipe
        heuristics = FilterStep(_heuristics(cfg)) if cfg.heuristics.enabled else None
        key_fn = KEY_BUILDERS[cfg.exact_dedup.field]
        embed_fn = _embed_text(cfg.semantic_dedup.field)
        embedder = self._embedder() if (cfg.semantic_dedup.enabled or cfg.selection.enabled) else None
        s, chunks = Survivors(), []
        bad = filtered = 0
        task = self._task("read, filter, embed")
        for batch in self.source.batches(cfg.input.batch_size):
            texts = []
            for row in batch:
                pos, self.total = self.total, self.total + 1
                conv, problem = to_conversation(row, self.form, self.cols)
                if problem:
                    self.fates[pos] = Fate("validate", "bad_input", problem)
                    bad += 1
                    continue
                view = {"messages": conv}
                drop = heuristics.first_drop(view) if heuristics else None
                if drop:
                    self.fates[pos] = Fate("heuristics", drop.reason, drop.detail)
                    filtered += 1
                    continue
                s.position.append(pos)
                s.ids.append(_external_id(row, self.cols.id, conv))
                s.keys.append(hashlib.blake2b(key_fn(view).encode(), digest_size=16).hexdigest())
                s.priority.append(_priority(row, cfg.input.score_column))
                texts.append(embed_fn(view))
            if embedder and texts:
                chunks.append(embedder.encode(texts))
            self._advance(task, len(batch))
        if embedder:
            s.embeddings = np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), np.float32)
        self._stage("validate", self.total, self.total - bad, {"bad_input": bad} if bad else {})
        if heuristics:
            removed = _count_reasons(self.fates, "heuristics")
            self._stage("heuristics", self.total - bad, len(s.position), removed,
                        {f.name: f.settings() for f in heuristics.filters})
        return s

    def exact(self, s: Survivors) -> Survivors:
        if not self.recipe.exact_dedup.enabled:
            return s
        n = len(s.position)
        result = exact_dedup(s.keys, [str(i) for i in range(n)], s.priority if self._has_priority() else None)
        for i in result.removed_indices():
            kept = int(result.duplicate_of[i])
            self.fates[s.position[i]] = Fate("exact_dedup", "exact_duplicate", f"same {self.recipe.exact_dedup.field}", s.ids[kept])
        self._stage("exact_dedup", n, int(result.keep.sum()), {"exact_duplicate": n - int(result.keep.sum())},
                    {"field": self.recipe.exact_dedup.field, "normalization": "NFKC, casefold, whitespace"})
        return _subset(s, result.kept_indices())

    def semantic(self, s: Survivors) -> Survivors:
        cfg = self.recipe.semantic_dedup
        if not cfg.enabled:
            return s
        from roost.filters.semantic_dedup import semantic_dedup

        n = len(s.position)
        task = self._task("semantic dedup", total=1)
        result = semantic_dedup(
            s.embeddings, [str(i) for i in range(n)], threshold=cfg.threshold,
            scores=s.priority if self._has_priority() else None, k=cfg.k, index=cfg.index,
        )
        self._advance(task, 1)
        for i in range(n):
            tags = result.row_tags(i)
            near = tags.get("nearest_id")
            self.tags.setdefault(s.position[i], {}).update(
                min_neighbor_distance=tags.get("min_neighbor_distance"),
                repeat_count=tags.get("repeat_count"),
                nearest_id=s.ids[int(near)] if near is not None else None,
                nearest_similarity=tags.get("nearest_similarity"),
            )
        for i in result.removed_indices():
            kept = int(result.duplicate_of[i])
            self.fates[s.position[i]] = Fate(
                "semantic_dedup", "semantic_duplicate",
                f"cosine {result.similarity[i]:.4f} >= {cfg.threshold}", s.ids[kept],
            )
        kept = int(result.keep.sum())
        settings = {**result.settings, "field": cfg.field, "embedding": self.embedder_info}
        self._stage("semantic_dedup", n, kept, {"semantic_duplicate": n - kept}, settings)
        return _subset(s, result.kept_indices())

    def score(self, s: Survivors) -> dict[int, dict[str, Any]]:
        """Pass 2: deita complexity and quality for every surviving row, batched."""
        cfg = self.recipe.scoring
        if not cfg.enabled:
            return {}
        complexity, quality = self._scorers()
        alive = set(s.position)
        out: dict[int, dict[str, Any]] = {}
        task = self._task("deita scores", total=len(alive))
        pending: list[tuple[int, list[dict]]] = []

        def flush():
            for pos, result in zip((p for p, _ in pending), _score_batch(complexity, quality, [c for _, c in pending])):
                out[pos] = result
            self._advance(task, len(pending))
            pending.clear()

        for pos, row in self._rows():
            if pos in alive:
                conv, _ = to_conversation(row, self.form, self.cols)
                pending.append((pos, conv))
                if len(pending) >= cfg.batch_size:
                    flush()
        flush()
        nulls = sum(1 for r in out.values() if r["deita_score"] is None)
        self._stage("deita_scoring", len(alive), len(alive), {},
                    {**self.scorer_info, "null_scores": nulls})
        for pos, result in out.items():
            self.tags.setdefault(pos, {}).update(result)
        return out

    def select(self, s: Survivors, scores: dict[int, dict[str, Any]]) -> Survivors:
        cfg = self.recipe.selection
        if not cfg.enabled:
            return s
        from roost.selection import select_diverse

        if scores:
            values = [scores[p]["deita_score"] for p in s.position]
        elif self._has_priority():
            values = s.priority
        else:
            raise ValueError("selection needs scores: enable scoring or set input.score_column")
        result = select_diverse(s.embeddings, values, cfg.budget, cfg.tau)
        for i, pos in enumerate(s.position):
            row = result.row(i)
            self.tags.setdefault(pos, {}).update(
                selection_rank=row["rank"], nearest_kept_similarity=row["nearest_kept_similarity"]
            )
            if row["selected"]:
                continue
            if row["considered"]:
                sim = row["nearest_kept_similarity"]
                self.fates[pos] = Fate("selection", "too_similar_to_selected", f"cosine {sim:.4f} > tau {cfg.tau}")
            else:
                self.fates[pos] = Fate("selection", "over_budget", f"budget {cfg.budget} filled before rank {row['rank']}")
        n, kept = len(s.position), len(result.selected)
        self._stage("selection", n, kept, _count_reasons(self.fates, "selection"), result.settings)
        return _subset(s, np.array(sorted(result.selected), dtype=np.int64))

    def write(self, s: Survivors) -> dict[str, Any]:
        """Pass 3: stream the input again; survivors to data/, everything else to rejects/."""
        cfg = self.recipe
        schema = self._output_schema()
        n_out, n_rej = len(s.position), self.total - len(s.position)
        shards = max(1, math.ceil(n_out / cfg.shard_size), math.ceil(n_rej / cfg.shard_size))
        writer = DatasetWriter(self.out, RowSchema("curated", schema), split=cfg.input.split, num_shards=shards)
        kept, rejects = [], []
        counts = {"data": [0] * shards, "rejects": [0] * shards}
        shard = {"data": 0, "rejects": 0}
        meta = self._provenance()
        task = self._task("write", total=self.total)

        def flush(kind: str, final: bool = False):
            # Full shards go out as they fill; the last shard index takes whatever is left.
            buf = kept if kind == "data" else rejects
            while buf:
                last = shard[kind] == shards - 1
                if not final and (last or len(buf) < cfg.shard_size):
                    return
                take = buf[:] if last else buf[: cfg.shard_size]
                del buf[: len(take)]
                i = shard[kind]
                if kind == "data":
                    good, bad = writer.validate(take)
                    rejects.extend(bad)
                    table = pa.Table.from_pylist(good, schema=schema)
                    atomic_write_table(writer.data_path(i), _meta(table, meta))
                    counts["data"][i] += len(good)
                else:
                    table = pa.Table.from_pylist([r.as_row() for r in take], schema=REJECT)
                    atomic_write_table(writer.rejects_path(i), _meta(table, meta))
                    counts["rejects"][i] += len(take)
                shard[kind] += 1

        for pos, row in self._rows():
            fate = self.fates.get(pos)
            if fate is None:
                kept.append(self._output_row(pos, row))
                flush("data")
            else:
                rejects.append(Reject(fate.stage, fate.reason, row, id=self._reject_id(row),
                                      detail=fate.detail, duplicate_of=fate.duplicate_of))
                flush("rejects")
            self._advance(task, 1)
        flush("data", final=True)
        flush("rejects", final=True)
        for i in range(shards):  # every shard index exists on both sides, possibly empty
            if not writer.data_path(i).exists():
                atomic_write_table(writer.data_path(i), _meta(schema.empty_table(), meta))
            if not writer.rejects_path(i).exists():
                atomic_write_table(writer.rejects_path(i), _meta(REJECT.empty_table(), meta))
        return self._manifest(shards, counts)

    # -- helpers ------------------------------------------------------------------------------

    def _rows(self):
        pos = 0
        for batch in self.source.batches(self.recipe.input.batch_size):
            for row in batch:
                yield pos, row
                pos += 1

    def _output_schema(self) -> pa.Schema:
        extra = [*TAG_FIELDS] if self.recipe.semantic_dedup.enabled else []
        extra += SCORE_FIELDS if self.recipe.scoring.enabled else []
        extra += SELECTION_FIELDS if self.recipe.selection.enabled else []
        base = self.source.schema.remove_metadata()
        names = {f.name for f in extra}
        fields = [f for f in base if f.name not in names]
        if self.cols.id not in base.names:
            fields.insert(0, pa.field(self.cols.id, pa.string()))
        return pa.schema(fields + extra)

    def _output_row(self, pos: int, row: dict) -> dict:
        out = dict(row)
        if self.cols.id not in out:
            conv, _ = to_conversation(row, self.form, self.cols)
            out[self.cols.id] = row_id(conv)
        out.update(self.tags.get(pos, {}))
        return out

    def _reject_id(self, row: dict) -> str | None:
        """The id the row would have had in the output (None if it is not a conversation)."""
        conv, problem = to_conversation(row, self.form, self.cols)
        return None if problem else _external_id(row, self.cols.id, conv)

    def _has_priority(self) -> bool:
        return self.recipe.input.score_column is not None

    def _embedder(self):
        from roost.embeddings import Embedder

        cfg = self.recipe.semantic_dedup
        embedder = Embedder(cfg.model, batch_size=cfg.embed_batch_size)
        self.embedder_info = embedder.describe()
        return embedder

    def _scorers(self):
        from roost.engines import EngineConfig, get_engine
        from roost.scorers.deita import DeitaScorer

        cfg = self.recipe.scoring
        if not cfg.complexity_model or not cfg.quality_model:
            raise ValueError("scoring needs scoring.complexity_model and scoring.quality_model")
        engines = {}
        for role, model in (("complexity", cfg.complexity_model), ("quality", cfg.quality_model)):
            config = EngineConfig(model=model, dtype=cfg.dtype, max_model_len=cfg.max_model_len)
            engines[role] = DeitaScorer(get_engine(config), overflow=cfg.overflow)
        self.scorer_info = {
            "complexity": {**engines["complexity"].engine.describe(), **engines["complexity"].settings()},
            "quality": {**engines["quality"].engine.describe(), **engines["quality"].settings()},
        }
        return engines["complexity"], engines["quality"]

    def _stage(self, name, rows_in, kept, removed, settings=None):
        self.stages.append(Stage(name, rows_in, kept, dict(removed), settings or {}))

    def _provenance(self) -> dict[str, Any]:
        return {"provenance": {"roost_version": __version__, "recipe_hash": self.recipe.fingerprint(),
                               "input": self.source.description}}

    def _manifest(self, shards: int, counts: dict[str, list[int]]) -> dict[str, Any]:
        by_reason: dict[str, int] = {}
        for fate in self.fates.values():
            by_reason[fate.reason] = by_reason.get(fate.reason, 0) + 1
        split = self.recipe.input.split
        return base_manifest(
            "curated",
            self.recipe.model_dump(mode="json"),
            self.recipe.fingerprint(),
            status="complete",
            input=self.source.description,
            input_rows=self.total,
            stages=[s.__dict__ for s in self.stages],
            embedding=self.embedder_info,
            scoring=self.scorer_info,
            rows=sum(counts["data"]),
            rejects=sum(counts["rejects"]),
            rejects_by_reason=by_reason,
            split=split,
            num_shards=shards,
            shards={shard_name(split, i, shards): {"rows": counts["data"][i], "rejects": counts["rejects"][i]}
                    for i in range(shards)},
        )

    def _task(self, name: str, total: int | None = None):
        if not self._progress:
            return None
        if total is None:
            total = self.source.count()
        return self._progress.add_task(name, total=total)

    def _advance(self, task, n: int) -> None:
        if self._progress and task is not None:
            self._progress.advance(task, n)


def curate(recipe: CurateRecipe, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Curate `recipe.input.path` into `out`. Re-running a finished curation is a no-op."""
    out = Path(out)
    writer_probe = DatasetWriter(out, RowSchema("curated", pa.schema([])), num_shards=1)
    existing = writer_probe.read_manifest()
    if existing:
        if existing.get("recipe_hash") != recipe.fingerprint() or existing.get("kind") != "curated":
            raise OutputMismatch(f"{out} holds a different dataset (recipe hash {existing.get('recipe_hash')}); "
                                 "choose another --out or delete it")
        if existing.get("status") == "complete":
            return {**existing, "skipped": True}
    source = open_source(recipe.input.path, split=recipe.input.split)
    writer_probe.write_manifest(base_manifest("curated", recipe.model_dump(mode="json"), recipe.fingerprint(),
                                              status="running"))
    for stale in [*out.glob("data/*.parquet"), *out.glob("rejects/*.parquet")]:
        stale.unlink()  # a previous unfinished run of this same recipe: its shard plan may differ
    manifest = Curation(recipe, source, out, progress=progress).run()
    writer_probe.write_manifest(manifest)
    return manifest


# -- small pure helpers -----------------------------------------------------------------------


def _heuristics(recipe: CurateRecipe):
    h = recipe.heuristics
    filters = [
        LengthFilter(h.min_instruction_chars, h.max_instruction_chars, h.min_response_chars, h.max_response_chars),
        RepeatedNgramFilter(n=h.ngram, max_fraction=h.max_repeated_ngram_fraction),
    ]
    if h.not_a_request:
        filters.insert(0, NotARequestFilter())
    return filters


def _embed_text(field_name: str) -> Callable[[dict], str]:
    if field_name == "first_instruction":
        return first_instruction
    return lambda view: "\n".join(f"{m['role']}: {m['content']}" for m in view["messages"])


def _external_id(row: dict, id_column: str, conv: list[dict]) -> str:
    value = row.get(id_column)
    return str(value) if value not in (None, "") else row_id(conv)


def _priority(row: dict, column: str | None) -> float | None:
    if not column:
        return None
    value = row.get(column)
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


def _count_reasons(fates: dict[int, Fate], stage: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in fates.values():
        if f.stage == stage:
            counts[f.reason] = counts.get(f.reason, 0) + 1
    return counts


def _subset(s: Survivors, keep: np.ndarray) -> Survivors:
    keep = [int(i) for i in keep]
    return Survivors(
        position=[s.position[i] for i in keep],
        ids=[s.ids[i] for i in keep],
        keys=[s.keys[i] for i in keep],
        priority=[s.priority[i] for i in keep],
        embeddings=s.embeddings[keep] if s.embeddings is not None else None,
    )


def _score_batch(complexity, quality, conversations: list[list[dict]]) -> list[dict[str, Any]]:
    from roost.scorers.deita import conversation_turns, deita_score

    turns = [conversation_turns(c) for c in conversations]
    flat = [t for ts in turns for t in ts]
    cs = complexity.complexity([i for i, _ in flat])
    qs = quality.quality([i for i, _ in flat], [r for _, r in flat])
    out, at = [], 0
    for ts in turns:
        c, q = cs[at: at + len(ts)], qs[at: at + len(ts)]
        at += len(ts)
        value, reason = deita_score([x.value for x in c], [x.value for x in q])
        notes = [x.reason for x in (*c, *q) if x.reason]
        out.append({
            "complexity_scores": [x.value for x in c],
            "quality_scores": [x.value for x in q],
            "deita_score": value,
            "deita_score_reason": reason or ("; ".join(notes) if notes else None),
        })
    return out


def _meta(table: pa.Table, meta: dict) -> pa.Table:
    return table.replace_schema_metadata({b"roost": json.dumps(meta, default=str).encode()})


def _progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
