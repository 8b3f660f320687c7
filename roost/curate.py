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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from roost import __version__
from roost.build import OutputMismatch
from roost.filters.base import FilterStep
from roost.filters.exact_dedup import KEY_BUILDERS, dedup_digests
from roost.filters.heuristics import (
    LengthFilter,
    NotARequestFilter,
    RepeatedNgramFilter,
    first_instruction,
)
from roost.recipe import CurateRecipe
from roost.schemas import RowSchema, row_id
from roost.sources import Columns, Source, open_source, to_conversation
from roost.writer import (
    REJECT,
    DatasetWriter,
    Reject,
    ShardedOutput,
    base_manifest,
    read_manifest,
    shard_name,
    write_manifest,
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
class Survivors:
    """Rows still in, as arrays (no per-row Python objects outlive a read batch: with 1M rows,
    millions of small long-lived strings would fragment the heap and grow memory with N).

    `p1` indexes the rows that passed pass 1; their ids live in `Curation.p1_ids`."""

    p1: np.ndarray  # int64 index into pass-1 rows
    position: np.ndarray  # int64 row number in the input
    digests: np.ndarray  # (n, 16) uint8: hash of the normalized exact-dedup key
    priority: np.ndarray  # float64, NaN = none
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.p1)

    def subset(self, keep) -> Survivors:
        keep = np.asarray(keep, dtype=np.int64)
        return Survivors(self.p1[keep], self.position[keep], self.digests[keep], self.priority[keep],
                         self.embeddings[keep] if self.embeddings is not None else None)

    def priorities(self) -> list[float | None]:
        return [None if math.isnan(v) else float(v) for v in self.priority]


@dataclass
class Stage:
    name: str
    rows_in: int
    kept: int
    removed: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)


class Ledger:
    """Per input row: why it was removed (a code), and the tag columns it gets. Columnar."""

    NAN_TAGS = ("min_neighbor_distance", "nearest_similarity", "deita_score", "nearest_kept_similarity", "similarity")
    INT_TAGS = ("repeat_count", "nearest_p1", "selection_rank", "duplicate_of_p1")

    def __init__(self, total: int):
        self.codes: list[tuple[str, str]] = [("", "")]  # code 0: still in
        self.fate = np.zeros(total, dtype=np.int16)
        self.details: dict[int, str] = {}  # only for reasons whose detail is row-specific text
        self.arrays = {name: np.full(total, np.nan) for name in self.NAN_TAGS}
        self.arrays.update({name: np.full(total, -1, dtype=np.int64) for name in self.INT_TAGS})
        self.score_lists: dict[int, tuple[list, list, str | None]] = {}

    def code(self, stage: str, reason: str) -> int:
        if (stage, reason) not in self.codes:
            self.codes.append((stage, reason))
        return self.codes.index((stage, reason))

    def remove(self, positions, stage: str, reason: str) -> None:
        self.fate[np.asarray(positions, dtype=np.int64)] = self.code(stage, reason)

    def counts(self, stage: str | None = None) -> dict[str, int]:
        hist = np.bincount(self.fate, minlength=len(self.codes))
        return {r: int(hist[c]) for c, (st, r) in enumerate(self.codes)
                if c and hist[c] and (stage is None or st == stage)}

    def get(self, name: str, pos: int):
        v = self.arrays[name][pos]
        if isinstance(v, np.floating):
            return None if math.isnan(v) else float(v)
        return None if v < 0 else int(v)


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
        self.stages: list[Stage] = []
        self.total = 0
        self.ledger: Ledger | None = None
        self.p1_ids: pa.ChunkedArray | None = None
        self.p1_of: np.ndarray | None = None
        self.embedder_info: dict[str, Any] | None = None
        self.scorer_info: dict[str, Any] | None = None
        self._progress = _progress_bar() if progress else None

    # -- passes -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        with self._progress or _Null():
            survivors = self.read_and_filter()
            survivors = self.exact(survivors)
            survivors = self.semantic(survivors)
            self.score(survivors)
            survivors = self.select(survivors)
            return self.write(survivors)

    def read_and_filter(self) -> Survivors:
        """Pass 1: validate every row, apply the heuristics, hash the key, embed the text."""
        cfg = self.recipe
        heuristics = FilterStep(_heuristics(cfg)) if cfg.heuristics.enabled else None
        key_fn = KEY_BUILDERS[cfg.exact_dedup.field]
        embed_fn = _embed_text(cfg.semantic_dedup.field)
        embedder = self._embedder() if (cfg.semantic_dedup.enabled or cfg.selection.enabled) else None
        kept = {"position": [], "ids": [], "digests": [], "priority": [], "embeddings": []}
        removed: list[tuple[int, str, str, str | None]] = []
        task = self._task("read, filter, embed")
        for batch in self.source.batches(cfg.input.batch_size):
            pos_b, ids_b, dig_b, pri_b, texts = [], [], [], [], []
            for row in batch:
                pos, self.total = self.total, self.total + 1
                conv, problem = to_conversation(row, self.form, self.cols)
                if problem:
                    removed.append((pos, "validate", "bad_input", problem))
                    continue
                view = {"messages": conv}
                drop = heuristics.first_drop(view) if heuristics else None
                if drop:
                    removed.append((pos, "heuristics", drop.reason, drop.detail))
                    continue
                pos_b.append(pos)
                ids_b.append(_external_id(row, self.cols.id, conv))
                dig_b.append(hashlib.blake2b(key_fn(view).encode(), digest_size=16).digest())
                pri_b.append(_priority(row, cfg.input.score_column))
                texts.append(embed_fn(view))
            kept["position"].append(np.asarray(pos_b, dtype=np.int64))
            kept["ids"].append(pa.array(ids_b, pa.string()))
            kept["digests"].append(np.frombuffer(b"".join(dig_b), dtype=np.uint8).reshape(-1, 16))
            kept["priority"].append(np.asarray([np.nan if v is None else v for v in pri_b], dtype=np.float64))
            if embedder and texts:
                kept["embeddings"].append(embedder.encode(texts))
            self._advance(task, len(batch))

        self.ledger = Ledger(self.total)
        for pos, stage, reason, detail in removed:
            self.ledger.fate[pos] = self.ledger.code(stage, reason)
            if detail:
                self.ledger.details[pos] = detail
        self.p1_ids = pa.chunked_array(kept["ids"], pa.string())
        position = np.concatenate(kept["position"]) if kept["position"] else np.zeros(0, np.int64)
        self.p1_of = np.full(self.total, -1, dtype=np.int64)  # input position -> pass-1 index
        self.p1_of[position] = np.arange(len(position))
        s = Survivors(
            p1=np.arange(len(position), dtype=np.int64),
            position=position,
            digests=np.concatenate(kept["digests"]) if kept["digests"] else np.zeros((0, 16), np.uint8),
            priority=np.concatenate(kept["priority"]) if kept["priority"] else np.zeros(0),
        )
        if embedder:
            s.embeddings = np.concatenate(kept["embeddings"]) if kept["embeddings"] else np.zeros((0, embedder.dim), np.float32)
        bad = self.ledger.counts("validate").get("bad_input", 0)
        self._stage("validate", self.total, self.total - bad, self.ledger.counts("validate"))
        if heuristics:
            self._stage("heuristics", self.total - bad, len(s), self.ledger.counts("heuristics"),
                        {f.name: f.settings() for f in heuristics.filters})
        return s

    def exact(self, s: Survivors) -> Survivors:
        if not self.recipe.exact_dedup.enabled:
            return s
        n = len(s)
        keep, survivor = dedup_digests(s.digests, s.priority if self._has_priority() else None)
        removed = np.flatnonzero(~keep)
        self.ledger.remove(s.position[removed], "exact_dedup", "exact_duplicate")
        self.ledger.arrays["duplicate_of_p1"][s.position[removed]] = s.p1[survivor[removed]]
        self.ledger.arrays["similarity"][s.position[removed]] = 1.0
        self._stage("exact_dedup", n, n - len(removed), {"exact_duplicate": len(removed)},
                    {"field": self.recipe.exact_dedup.field, "normalization": "NFKC, casefold, whitespace"})
        return s.subset(np.flatnonzero(keep))

    def semantic(self, s: Survivors) -> Survivors:
        cfg = self.recipe.semantic_dedup
        if not cfg.enabled:
            return s
        from roost.filters.semantic_dedup import semantic_dedup

        n = len(s)
        task = self._task("semantic dedup", total=1)
        result = semantic_dedup(
            s.embeddings, [str(i) for i in range(n)], threshold=cfg.threshold,
            scores=s.priorities() if self._has_priority() else None, k=cfg.k, index=cfg.index,
        )
        self._advance(task, 1)
        a = self.ledger.arrays
        a["min_neighbor_distance"][s.position] = np.asarray(result.tags["min_neighbor_distance"], dtype=np.float64)
        a["repeat_count"][s.position] = np.asarray(result.tags["repeat_count"], dtype=np.int64)
        a["nearest_similarity"][s.position] = np.asarray(result.tags["nearest_similarity"], dtype=np.float64)
        near = np.array([-1 if v is None else int(v) for v in result.tags["nearest_id"]], dtype=np.int64)
        a["nearest_p1"][s.position] = np.where(near >= 0, s.p1[np.maximum(near, 0)], -1)
        removed = result.removed_indices()
        self.ledger.remove(s.position[removed], "semantic_dedup", "semantic_duplicate")
        dup = np.array([int(result.duplicate_of[i]) for i in removed], dtype=np.int64)
        a["duplicate_of_p1"][s.position[removed]] = s.p1[dup] if len(dup) else dup
        a["similarity"][s.position[removed]] = [result.similarity[i] for i in removed]
        settings = {**result.settings, "field": cfg.field, "embedding": self.embedder_info}
        self._stage("semantic_dedup", n, n - len(removed), {"semantic_duplicate": len(removed)}, settings)
        return s.subset(result.kept_indices())

    def score(self, s: Survivors) -> None:
        """Pass 2: deita complexity and quality for every surviving row, batched."""
        cfg = self.recipe.scoring
        if not cfg.enabled:
            return
        complexity, quality = self._scorers()
        alive = np.zeros(self.total, dtype=bool)
        alive[s.position] = True
        task = self._task("deita scores", total=len(s))
        pending: list[tuple[int, list[dict]]] = []

        def flush():
            results = _score_batch(complexity, quality, [c for _, c in pending])
            for (pos, _), r in zip(pending, results):
                self.ledger.arrays["deita_score"][pos] = np.nan if r["deita_score"] is None else r["deita_score"]
                self.ledger.score_lists[pos] = (r["complexity_scores"], r["quality_scores"], r["deita_score_reason"])
            self._advance(task, len(pending))
            pending.clear()

        for pos, row in self._rows():
            if alive[pos]:
                conv, _ = to_conversation(row, self.form, self.cols)
                pending.append((pos, conv))
                if len(pending) >= cfg.batch_size:
                    flush()
        flush()
        nulls = int(np.isnan(self.ledger.arrays["deita_score"][s.position]).sum())
        self._stage("deita_scoring", len(s), len(s), {}, {**self.scorer_info, "null_scores": nulls})

    def select(self, s: Survivors) -> Survivors:
        cfg = self.recipe.selection
        if not cfg.enabled:
            return s
        from roost.selection import select_diverse

        if self.recipe.scoring.enabled:
            values = [None if math.isnan(v) else float(v) for v in self.ledger.arrays["deita_score"][s.position]]
        elif self._has_priority():
            values = s.priorities()
        else:
            raise ValueError("selection needs scores: enable scoring or set input.score_column")
        result = select_diverse(s.embeddings, values, cfg.budget, cfg.tau)
        a = self.ledger.arrays
        a["selection_rank"][s.position] = result.rank
        a["nearest_kept_similarity"][s.position] = result.nearest_kept_similarity
        dropped = ~result.selected_mask
        self.ledger.remove(s.position[dropped & result.considered], "selection", "too_similar_to_selected")
        self.ledger.remove(s.position[dropped & ~result.considered], "selection", "over_budget")
        self._stage("selection", len(s), len(result.selected), self.ledger.counts("selection"), result.settings)
        return s.subset(np.sort(np.asarray(result.selected, dtype=np.int64)))

    def write(self, s: Survivors) -> dict[str, Any]:
        """Pass 3: stream the input again; survivors to data/, everything else to rejects/."""
        cfg = self.recipe
        schema = self._output_schema()
        n_out, n_rej = len(s), self.total - len(s)
        shards = max(1, math.ceil(n_out / cfg.shard_size), math.ceil(n_rej / cfg.shard_size))
        writer = DatasetWriter(self.out, RowSchema("curated", schema), split=cfg.input.split, num_shards=shards)
        meta = self._provenance()
        data = ShardedOutput(writer.data_path, shards, cfg.shard_size, _with_meta(schema, meta))
        rejects = ShardedOutput(writer.rejects_path, shards, cfg.shard_size, _with_meta(REJECT, meta))
        pending: list[dict] = []
        task = self._task("write", total=self.total)

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
                    pending.append(self._output_row(pos, row))
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
            out[self.cols.id] = self._id(pos, row)
        cfg, get = self.recipe, self.ledger.get
        if cfg.semantic_dedup.enabled:
            near = get("nearest_p1", pos)
            out.update(
                min_neighbor_distance=get("min_neighbor_distance", pos),
                repeat_count=get("repeat_count", pos),
                nearest_id=self.p1_ids[near].as_py() if near is not None else None,
                nearest_similarity=get("nearest_similarity", pos),
            )
        if cfg.scoring.enabled:
            c, q, reason = self.ledger.score_lists.get(pos, ([], [], "not scored"))
            out.update(complexity_scores=c, quality_scores=q, deita_score=get("deita_score", pos),
                       deita_score_reason=reason)
        if cfg.selection.enabled:
            out.update(selection_rank=get("selection_rank", pos),
                       nearest_kept_similarity=get("nearest_kept_similarity", pos))
        return out

    def _reject(self, pos: int, row: dict) -> Reject:
        stage, reason = self.ledger.codes[self.ledger.fate[pos]]
        get = self.ledger.get
        dup = get("duplicate_of_p1", pos)
        duplicate_of = self.p1_ids[dup].as_py() if dup is not None else None
        detail = self.ledger.details.get(pos)
        if reason == "exact_duplicate":
            detail = f"same normalized {self.recipe.exact_dedup.field}"
        elif reason == "semantic_duplicate":
            detail = f"cosine {get('similarity', pos):.4f} >= {self.recipe.semantic_dedup.threshold}"
        elif reason == "too_similar_to_selected":
            detail = f"cosine {get('nearest_kept_similarity', pos):.4f} > tau {self.recipe.selection.tau}"
        elif reason == "over_budget":
            detail = f"budget {self.recipe.selection.budget} filled before rank {get('selection_rank', pos)}"
        return Reject(stage, reason, row, id=self._id(pos, row), detail=detail, duplicate_of=duplicate_of)

    def _id(self, pos: int, row: dict) -> str | None:
        """The row's id as pass 1 computed it; rows dropped in pass 1 get theirs recomputed
        (None if the row is not a conversation)."""
        p1 = self.p1_of[pos]
        if p1 >= 0:
            return self.p1_ids[int(p1)].as_py()
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
        by_reason = self.ledger.counts()
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
    existing = read_manifest(out)
    if existing:
        if existing.get("recipe_hash") != recipe.fingerprint() or existing.get("kind") != "curated":
            raise OutputMismatch(f"{out} holds a different dataset (recipe hash {existing.get('recipe_hash')}); "
                                 "choose another --out or delete it")
        if existing.get("status") == "complete":
            return {**existing, "skipped": True}
    source = open_source(recipe.input.path, split=recipe.input.split)
    write_manifest(out, base_manifest("curated", recipe.model_dump(mode="json"), recipe.fingerprint(),
                                              status="running"))
    for stale in [*out.glob("data/*.parquet"), *out.glob("rejects/*.parquet")]:
        stale.unlink()  # a previous unfinished run of this same recipe: its shard plan may differ
    manifest = Curation(recipe, source, out, progress=progress).run()
    write_manifest(out, manifest)
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


def _with_meta(schema: pa.Schema, meta: dict) -> pa.Schema:
    return schema.with_metadata({b"roost": json.dumps(meta, default=str).encode()})


def _progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
