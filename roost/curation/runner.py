"""The work of `roost curate`: the stage runner (roost.flows.curate wires it into Prefect).

    input -> parse/validate -> stages, in the recipe's order -> Parquet (data/ + rejects/)

The runner alone owns the passes over the input, the ledger of decisions, the counts per
stage and reason, the rejects, the progress bars and the output schema (the input's columns
plus each stage's declared fields). Stages (roost/stages/) only decide.

Memory stays bounded: the input is read in batches, never whole. Pass 1 parses and
validates every row, runs the row filters that lead the list and computes the features
later set stages asked for (key digests, embeddings). Each later run of row filters and
annotators is one more pass over the surviving rows; set stages (dedup, selection) work on
the in-memory arrays between passes; a last pass writes. Between passes only per-row
decisions, digests, embeddings and column values are kept, never the text.

Resumable: pass 1's outcome, the embeddings (checkpointed while they are computed), each set
stage's decision and each annotator's columns are cached under OUT/.cache as they finish
(roost.curation.cache), keyed by the input's bytes, the settings and everything upstream; a
killed curation re-run reads back what still holds and goes on from there.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from roost import __version__
from roost.algorithms.exact_dedup import digest
from roost.curation.cache import CACHE_DIR, ReadState, StageCache
from roost.curation.ledger import Ledger, apply_removed, apply_rows, removed_table
from roost.dataset.rows import Parsed, check_share, parse
from roost.dataset.sources import Source
from roost.dataset.writer import (
    REJECT,
    DatasetWriter,
    Reject,
    ShardedOutput,
    base_manifest,
    read_manifest,
    shard_name,
    write_manifest,
)
from roost.errors import ConfigError, InputError, OutputMismatch
from roost.recipe import CurateRecipe
from roost.runtime import stopping
from roost.schemas import RowSchema
from roost.stages.base import (
    STAGES,
    Annotator,
    Digest,
    Embedding,
    RowFilter,
    SetDecision,
    SetStage,
    Stage,
    Survivors,
)


@dataclass
class StageReport:
    name: str
    rows_in: int
    kept: int
    removed: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)
    cache: str | None = None  # hit, miss, partial (n rows checkpointed), stale (why), off (why)


class Context:
    """What stages may ask of the run: the row kind, default views, the shared embedder,
    input priorities and the columns earlier stages wrote."""

    def __init__(self, recipe: CurateRecipe, source: Source):
        self.recipe = recipe
        self.shape = recipe.input.shape(source.schema)
        self.cols = self.shape.cols
        self.kind = self.shape.kind
        self.has_priority = recipe.input.score_column is not None
        self.stages: list[Stage] = []
        self.ledger: Ledger | None = None
        self.embedder_info: dict[str, Any] | None = None
        self._embedder = None

    def view(self, name: str) -> str:
        if name != "auto":
            return name
        return "prompt" if self.kind == "preference" else "first_instruction"

    def priority(self, s: Survivors) -> np.ndarray | None:
        return s.priority if self.has_priority else None

    def embedder(self):
        if self._embedder is None:
            from roost.engines.embeddings import load_embedder

            cfg = self.recipe.embedding
            self._embedder = load_embedder(cfg.model, kind=cfg.kind, batch_size=cfg.batch_size)
            self.embedder_info = self._embedder.describe()
        return self._embedder

    def config_error(self, stage: Stage, message: str) -> ConfigError:
        index = next((i for i, c in enumerate(self.recipe.stages) if c is stage.config), "?")
        return ConfigError(f"stages[{index}] ({stage.kind}): {message}")

    def score_column(self, stage: Stage, name: str | None) -> str:
        """The column a stage ranks by: `name`, or the last score written before it."""
        earlier = self.stages[: self.stages.index(stage)]
        written = [f.name for st in earlier for f in st.fields()]
        score_columns = {c for st in earlier for c in st.score_columns}
        found = [c for c in written if c in score_columns]  # in the order they are written
        if name == "input" or (name is None and not found and self.has_priority):
            if not self.has_priority:
                raise self.config_error(stage, "score 'input' needs input.score_column")
            return "input"
        if name is None:
            if not found:
                raise self.config_error(stage, "needs scores: put a deita, reward or judge stage before it, "
                                               "or set input.score_column")
            return found[-1]
        if name not in written:
            raise self.config_error(stage, f"no earlier stage writes '{name}' (written: {', '.join(written) or 'none'})")
        return name

    def scores(self, stage: Stage, s: Survivors, name: str | None) -> tuple[str, np.ndarray]:
        column = self.score_column(stage, name)
        if column == "input":
            return column, s.priority
        return column, self.ledger.numbers[column][s.position]


class Curation:
    def __init__(self, recipe: CurateRecipe, source: Source, out: str | Path, *, progress: bool = True,
                 cache: bool = True):
        self.recipe = recipe
        self.source = source
        self.out = Path(out)
        self.context = Context(recipe, source)
        self.stages = [STAGES.get(c.kind)(c, self.context) for c in recipe.stages]
        self.context.stages = self.stages
        for stage in self.stages:
            stage.check()  # fail now, not after an hour
        self.reports: list[StageReport] = []
        self.lead = 0  # the row filters that lead the list run in pass 1
        while self.lead < len(self.stages) and isinstance(self.stages[self.lead], RowFilter):
            self.lead += 1
        self.use_cache = cache
        self.cache: StageCache | None = None
        self.total = 0
        self.ledger: Ledger | None = None
        self.p1_ids: pa.ChunkedArray | None = None
        self.p1_of: np.ndarray | None = None
        self._progress = _progress_bar() if progress else None

    def run(self) -> dict[str, Any]:
        self.cache = StageCache(self.out / CACHE_DIR, self.recipe, self.source, self.stages, self.lead,
                                enabled=self.use_cache)
        finished = [0]  # stages whose results are in the cache: what a stop keeps
        stopping.track("stages", lambda: finished[0] if self.use_cache else 0, len(self.stages),
                       manifest=self.out / "manifest.json")
        with self._progress or _Null():
            s = self.first_pass(self.stages[:self.lead])
            finished[0] = self.lead
            rest = self.stages[self.lead:]
            i = 0
            while i < len(rest):
                if isinstance(rest[i], SetStage):
                    s = self.apply_set(rest[i], s)
                    i += 1
                else:
                    j = i
                    while j < len(rest) and not isinstance(rest[j], SetStage):
                        j += 1
                    s = self.data_pass(rest[i:j], s)
                    i = j
                finished[0] = self.lead + i
            return self.write(s)

    # -- passes -------------------------------------------------------------------------------

    def first_pass(self, filters: list[RowFilter]) -> Survivors:
        """Parse and validate every row, run the leading row filters, compute features. What a
        killed run finished of this is read back from the cache instead."""
        features = list(dict.fromkeys(f for st in self.stages if isinstance(st, SetStage) for f in st.features()))
        cache = self.cache
        state = cache.load_read()
        feats = {f: cache.load_feature(f, None if state is None else state.kept.num_rows) for f in features}
        missing = [f for f in features if feats[f] is None]
        fresh, feeds = state is None, {}
        if fresh or missing:
            t0 = time.perf_counter()
            state, computed, feeds = self._scan(filters, missing, state)
            feats.update(computed)
            scan_seconds = time.perf_counter() - t0 - sum(feed.seconds for feed in feeds.values())

        self.total = state.total
        self.ledger = self.context.ledger = Ledger(self.total)
        for st in self.stages:
            for f in st.fields():
                self.ledger.declare(f)
        apply_removed(self.ledger, state.removed)
        self.p1_ids = state.kept.column("id")
        position = state.kept.column("position").to_numpy()
        self.p1_of = np.full(self.total, -1, dtype=np.int64)
        self.p1_of[position] = np.arange(len(position))
        s = Survivors(position, state.kept.column("priority").to_numpy())
        # cached in this order: a run killed once the embeddings are written resumes after pass 1
        if fresh:
            cache.save_read(state, scan_seconds)
        for f in missing:
            if isinstance(f, Digest):
                cache.save_digests(f, feats[f], scan_seconds)
            else:
                feeds[f].finish(len(position), feeds[f].seconds)
        for f in features:
            if len(feats[f]) != len(position):
                raise RuntimeError(f"{f}: {len(feats[f])} rows for {len(position)} kept")  # keys forbid it
            s.features[f] = feats[f]
            if isinstance(f, Embedding) and self.context.embedder_info is None:  # the model did not load
                self.context.embedder_info = (feeds[f].embedder_info() if f in feeds
                                              else cache.feature(f).info.get("embedder"))

        counts = self.ledger.counts("validate")
        self._check_bad_input(state)
        self._report("validate", self.total, counts, state.settings[0], cache=cache.read.status)
        rows_in = self.total - sum(counts.values())
        for st, settings in zip(filters, state.settings[1:]):
            removed_here = self.ledger.counts(st.name)
            self._report(st.name, rows_in, removed_here, settings, cache=cache.read.status)
            rows_in -= sum(removed_here.values())
        return s

    def _scan(self, filters: list[RowFilter], missing: list, state: ReadState | None):
        """One read of the input: parse, validate and run the leading row filters on every row
        (unless `state` already holds their outcome), and compute the `missing` features of the
        rows still in."""
        feeds = {f: self.cache.embedding_feed(f, self.context.embedder) for f in missing if isinstance(f, Embedding)}
        alive = None
        if state is not None:
            alive = np.zeros(state.total, dtype=bool)
            alive[state.kept.column("position").to_numpy()] = True
        kept: dict[str, list] = {"position": [], "ids": [], "priority": []}
        out: dict[Any, list] = {f: [] for f in missing}
        removed: list[tuple[int, str, str, str | None]] = []
        task = self._task("read, filter, embed")
        cfg = self.recipe.input
        total = done = 0
        for batch in self.source.batches(cfg.batch_size):
            pos_b, ids_b, pri_b, rows_b = [], [], [], []
            for row in batch:
                pos, total = total, total + 1
                if alive is not None:
                    if pos < len(alive) and alive[pos]:
                        rows_b.append(parse(row, self.context.shape)[0])
                    continue
                parsed, problem = parse(row, self.context.shape)
                if problem:
                    removed.append((pos, "validate", "bad_input", problem))
                    continue
                drop, stage = next(((d, f) for f in filters if (d := f.filter(parsed))), (None, None))
                if drop:
                    removed.append((pos, stage.name, drop.reason, drop.detail))
                    continue
                pos_b.append(pos)
                ids_b.append(_external_id(row, self.context.cols.id, parsed))
                pri_b.append(_priority(row, cfg.score_column))
                rows_b.append(parsed)
            if alive is None:
                kept["position"].append(np.asarray(pos_b, dtype=np.int64))
                kept["ids"].append(pa.array(ids_b, pa.string()))
                kept["priority"].append(np.asarray(pri_b, dtype=np.float64))
            for f in missing:
                texts = [r.view(f.view) for r in rows_b]
                if isinstance(f, Digest):
                    out[f].append(np.frombuffer(b"".join(digest(t) for t in texts), np.uint8).reshape(-1, 16))
                elif texts:
                    out[f].append(feeds[f].encode(texts, done))
            done += len(rows_b)
            self._advance(task, len(batch))
        if state is None:
            state = ReadState(total, pa.table({
                "position": _cat(kept["position"], np.zeros(0, np.int64)),
                "id": pa.chunked_array(kept["ids"], pa.string()),
                "priority": _cat(kept["priority"], np.zeros(0))}), removed_table(removed),
                [{"kind": self.context.kind, "form": self.context.shape.format, **self._columns_setting()}, *[st.settings() for st in filters]])
        elif total != state.total or done != state.kept.num_rows:
            raise RuntimeError(f"{self.source.description}: the input changed during the curation")
        arrays = {f: _cat(out[f], np.zeros((0, 16), np.uint8) if isinstance(f, Digest)
                          else np.zeros((0, feeds[f].dim()), np.float32)) for f in missing}
        return state, arrays, feeds

    def _columns_setting(self) -> dict:
        """The columns read, where they are not the format's defaults (older caches stay valid)."""
        shape = self.context.shape
        try:
            defaults = self.recipe.input.model_copy(update={"columns": {}}).shape(self.source.schema)
        except InputError:  # the format's columns must be named
            defaults = None
        return {} if shape == defaults else {"columns": shape.used()}

    def _check_bad_input(self, state) -> None:
        removed = state.removed
        bad = [i for i, r in enumerate(removed.column("reason").to_pylist()) if r == "bad_input"]
        limit = self.recipe.input.max_bad_share
        if self.total and len(bad) / self.total > limit:
            pos, detail = removed.column("position")[bad[0]].as_py(), removed.column("detail")[bad[0]].as_py()
            raise InputError(f"{self.recipe.input.path}: {len(bad)} of {self.total} rows cannot be read as "
                             f"{self.context.shape.line()} (over {limit:.0%}); first: row {pos}: {detail}; "
                             "set input.format / input.columns (or input.max_bad_share)")

    def apply_set(self, stage: SetStage, s: Survivors) -> Survivors:
        index = self.stages.index(stage)
        task = self._task(stage.name, total=1)
        cached = self.cache.load_decision(index, s.position)
        if cached is not None:
            d, settings = cached
        else:
            t0 = time.perf_counter()
            d: SetDecision = stage.run(s)
            settings = {**stage.settings(), **d.settings}
            self.cache.save_decision(index, s.position, d, settings, time.perf_counter() - t0)
        self._advance(task, 1)
        gone = np.flatnonzero(~d.keep)
        positions = s.position[gone]
        for reason in set(d.reasons[gone].tolist()) if len(gone) else ():
            self.ledger.fate[positions[d.reasons[gone] == reason]] = self.ledger.code(stage.name, reason)
        if d.measure is not None:
            self.ledger.measure[positions] = d.measure[gone]
        if d.duplicate_of is not None:
            dup = d.duplicate_of[gone]
            self.ledger.ref[positions] = np.where(dup >= 0, s.position[np.maximum(dup, 0)], -1)
        for name, values in d.columns.items():
            self.ledger.put(name, s.position, values)
        self._report(stage.name, len(s), self.ledger.counts(stage.name), settings, cache=self.cache.status(index))
        return s.subset(np.flatnonzero(d.keep))

    def data_pass(self, group: list[Stage], s: Survivors) -> Survivors:
        """One pass over the survivors for a run of row filters and annotators. Those of them a
        killed run finished (the leading ones: a stage sees what the ones before it left) are
        read back from the cache instead."""
        while group:
            index = self.stages.index(group[0])
            cached = self.cache.load_rows(index, s.position)
            if cached is None:
                break
            table, settings = cached
            dropped = apply_rows(self.ledger, group[0], table)
            self._report(group[0].name, table.num_rows, self.ledger.counts(group[0].name), settings, cache="hit")
            s = s.subset(np.flatnonzero(~dropped))
            group = group[1:]
        if not group:
            return s
        for st in group[1:]:
            self.cache.recomputed(self.stages.index(st))
        seen: list[list[np.ndarray]] = [[] for _ in group]  # positions each stage saw
        drops: list[list[tuple[int, str, str | None]]] = [[] for _ in group]
        spent = [0.0] * len(group)
        alive = np.zeros(self.total, dtype=bool)
        alive[s.position] = True
        rows_in = {st.name: 0 for st in group}
        batch_size = max([st.batch_size for st in group if isinstance(st, Annotator)] or [1024])
        task = self._task(" + ".join(st.name for st in group), total=len(s))
        pending: list[tuple[int, Parsed]] = []

        def flush():
            batch = pending
            for k, st in enumerate(group):
                rows_in[st.name] += len(batch)
                seen[k].append(np.fromiter((pos for pos, _ in batch), np.int64, len(batch)))
                t0 = time.perf_counter()
                if isinstance(st, RowFilter):
                    survivors = []
                    for pos, row in batch:
                        drop = st.filter(row)
                        if drop:
                            self.ledger.remove(pos, st.name, drop.reason, drop.detail)
                            drops[k].append((pos, drop.reason, drop.detail))
                            alive[pos] = False
                        else:
                            survivors.append((pos, row))
                    batch = survivors
                    spent[k] += time.perf_counter() - t0
                    continue
                notes = st.annotate([row for _, row in batch]) if batch else []
                spent[k] += time.perf_counter() - t0
                positions = np.asarray([pos for pos, _ in batch], dtype=np.int64)
                for f in st.fields():
                    self.ledger.put(f.name, positions, [a.values.get(f.name) for a in notes])
                for (pos, _), note in zip(batch, notes):
                    if note.drop:
                        self.ledger.remove(pos, st.name, note.drop.reason, note.drop.detail)
                        drops[k].append((pos, note.drop.reason, note.drop.detail))
                        alive[pos] = False
                batch = [(pos, row) for (pos, row), note in zip(batch, notes) if not note.drop]
            self._advance(task, len(pending))
            pending.clear()

        for pos, row in self._rows():
            if alive[pos]:
                parsed, _ = parse(row, self.context.shape)
                pending.append((pos, parsed))
                if len(pending) >= batch_size:
                    flush()
        flush()
        for k, st in enumerate(group):
            index = self.stages.index(st)
            settings = st.settings()
            self._report(st.name, rows_in[st.name], self.ledger.counts(st.name), settings,
                         cache=self.cache.status(index))
            positions = _cat(seen[k], np.zeros(0, np.int64))
            self.cache.save_rows(index, self.ledger, st, positions, drops[k], settings, spent[k])
        return s.subset(np.flatnonzero(alive[s.position]))

    def write(self, s: Survivors) -> dict[str, Any]:
        """Last pass: stream the input again; survivors to data/, everything else to rejects/."""
        cfg = self.recipe
        schema = self._output_schema()
        n_out, n_rej = len(s), self.total - len(s)
        shards = max(1, math.ceil(n_out / cfg.shard_size), math.ceil(n_rej / cfg.shard_size))
        writer = DatasetWriter(self.out, RowSchema("curated", schema), split=cfg.input.split, num_shards=shards)
        meta = {"provenance": {"roost_version": __version__, "recipe_hash": cfg.fingerprint(),
                               "input": self.source.description}}
        data = ShardedOutput(writer.data_path, shards, cfg.shard_size, _with_meta(schema, meta))
        rejects = ShardedOutput(writer.rejects_path, shards, cfg.shard_size, _with_meta(REJECT, meta))
        pending: list[dict] = []
        task = self._task("write", total=self.total)
        fields = [(f.name, f.name in st.refs()) for st in self.stages for f in st.fields()]

        def flush_pending():
            good, bad = writer.validate(pending)
            for row in good:
                data.add(row)
            for reject in bad:
                rejects.add(reject.as_row())
            pending.clear()

        try:
            for pos, row in self._rows():
                if self.ledger.fate[pos] == 0:
                    pending.append(self._output_row(pos, row, fields))
                    if len(pending) >= 4096:
                        flush_pending()
                else:
                    rejects.add(self._reject(pos, row).as_row())
                self._advance(task, 1)
            flush_pending()
            counts = {"data": data.close(), "rejects": rejects.close()}
        except BaseException:
            data.abort()
            rejects.abort()
            raise
        return self._manifest(shards, counts)

    # -- helpers ------------------------------------------------------------------------------

    def _rows(self):
        pos = 0
        for batch in self.source.batches(self.recipe.input.batch_size):
            for row in batch:
                yield pos, row
                pos += 1

    def _output_schema(self) -> pa.Schema:
        extra = [f for st in self.stages for f in st.fields()]
        base = self.source.schema.remove_metadata()
        names = {f.name for f in extra}
        fields = [f for f in base if f.name not in names]
        if self.context.cols.id not in base.names:
            fields.insert(0, pa.field(self.context.cols.id, pa.string()))
        return pa.schema(fields + extra)

    def _output_row(self, pos: int, row: dict, fields: list[tuple[str, bool]]) -> dict:
        out = dict(row)
        if self.context.cols.id not in out:
            out[self.context.cols.id] = self._id(pos, row)
        for name, is_ref in fields:
            value = self.ledger.get(name, pos)
            out[name] = self._id_at(value) if is_ref else value
        return out

    def _reject(self, pos: int, row: dict) -> Reject:
        stage_name, reason = self.ledger.codes[self.ledger.fate[pos]]
        detail = self.ledger.details.get(pos)
        if detail is None:
            stage = next((st for st in self.stages if st.name == stage_name), None)
            detail = stage.detail(reason, float(self.ledger.measure[pos])) if stage else None
        ref = int(self.ledger.ref[pos])
        return Reject(stage_name, reason, row, id=self._id(pos, row), detail=detail,
                      duplicate_of=self._id_at(ref) if ref >= 0 else None)

    def _id_at(self, pos: int | None) -> str | None:
        if pos is None or pos < 0 or self.p1_of[pos] < 0:
            return None
        return self.p1_ids[int(self.p1_of[pos])].as_py()

    def _id(self, pos: int, row: dict) -> str | None:
        """The id pass 1 gave the row; rows dropped in pass 1 get theirs recomputed (None if
        the row cannot be parsed)."""
        if self.p1_of[pos] >= 0:
            return self._id_at(pos)
        parsed, problem = parse(row, self.context.shape)
        return None if problem else _external_id(row, self.context.cols.id, parsed)

    def _report(self, name, rows_in, removed, settings=None, cache=None):
        self.reports.append(StageReport(name, rows_in, rows_in - sum(removed.values()), dict(removed), settings or {},
                                        cache))

    def _manifest(self, shards: int, counts: dict[str, list[int]]) -> dict[str, Any]:
        split = self.recipe.input.split
        return base_manifest(
            "curated",
            self.recipe.model_dump(mode="json"),
            self.recipe.fingerprint(),
            status="complete",
            row_kind=self.context.kind,
            input=self.source.description,
            input_shape=self.context.shape.describe(),
            input_identity=self.source.identity(),
            input_rows=self.total,
            stages=[r.__dict__ for r in self.reports],
            embedding=self.context.embedder_info,
            cache=self.cache.manifest() if self.cache else None,
            rows=sum(counts["data"]),
            rejects=sum(counts["rejects"]),
            rejects_by_reason=self.ledger.counts(),
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


def preflight(recipe: CurateRecipe, out: str | Path, *, progress: bool = False) -> Curation | dict[str, Any]:
    """What a user can get wrong, checked before any model loads: the output is this recipe's,
    the input opens and is of a known kind, every stage's options fit it. Returns the finished
    manifest when there is nothing to do."""
    out = Path(out)
    existing = read_manifest(out)
    if existing:
        # an unfinished curation may be re-run with a changed recipe: its cache entries are
        # keyed by their settings, so only what still holds is reused
        finished = existing.get("status") == "complete"
        if existing.get("kind") != "curated" or (finished and existing.get("recipe_hash") != recipe.fingerprint()):
            raise OutputMismatch(f"{out} holds a different dataset (recipe hash {existing.get('recipe_hash')}); "
                                 "choose another --out or delete it")
    if not recipe.input.path:
        raise ConfigError("field 'input.path': required (the dataset to curate)")
    source = recipe.input.open()
    if existing and existing.get("status") == "complete":
        if existing.get("input_identity") not in (None, source.identity()):
            raise OutputMismatch(f"{out} was curated from another version of {recipe.input.path} (then "
                                 f"{_said(existing['input_identity'])}, now {_said(source.identity())}); "
                                 "choose another --out or delete it")
        return {**existing, "skipped": True}
    curation = Curation(recipe, source, out, progress=progress)
    shape = curation.context.shape
    check_share(next(source.rows(0, 1000), []), shape, recipe.input.max_bad_share, recipe.input.path,
                sampled=source.count() > 1000)
    if progress:
        say(f"input: {recipe.input.path}: {source.count()} rows of {shape.line()}")
    return curation


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _said(identity: dict) -> str:
    return f"commit {identity['revision'][:12]}" if "revision" in identity else f"sha256 {identity.get('sha256')}"


def curate(recipe: CurateRecipe, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Curate `recipe.input.path` into `out`. Re-running a finished curation is a no-op; re-running
    a killed one resumes from the cache in OUT/.cache, which is removed once it completes."""
    out = Path(out)
    curation = preflight(recipe, out, progress=progress)
    if isinstance(curation, dict):
        return curation
    write_manifest(out, base_manifest("curated", recipe.model_dump(mode="json"), recipe.fingerprint(),
                                      status="running"))
    for stale in [*out.glob("data/*.parquet"), *out.glob("rejects/*.parquet")]:
        stale.unlink()  # a previous unfinished run of this same recipe: its shard plan may differ
    manifest = curation.run()
    write_manifest(out, manifest)
    curation.cache.clear()
    return manifest


# -- small pure helpers -----------------------------------------------------------------------


def _cat(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    return np.concatenate(parts) if parts else empty


def _external_id(row: dict, id_column: str, parsed: Parsed) -> str:
    value = row.get(id_column)
    return str(value) if value not in (None, "") else parsed.id


def _priority(row: dict, column: str | None) -> float:
    if not column:
        return math.nan
    value = row.get(column)
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else math.nan


def _with_meta(schema: pa.Schema, meta: dict) -> pa.Schema:
    return schema.with_metadata({b"roost": json.dumps(meta, default=str).encode()})


def _progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
