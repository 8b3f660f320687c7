"""`decontaminate`: remove rows that copy items of benchmark sets the user names (their test
splits: GSM8K, MATH, HumanEval, MT-Bench prompts, ...).

    - kind: decontaminate
      view: auto                 # first_instruction for SFT rows, prompt for preference rows
      check_responses: false     # also n-gram-check the response (SFT) / chosen and rejected
      benchmarks:
        - {name: gsm8k-test, path: data/gsm8k_test.jsonl, text_column: question}
        - {name: gsm8k-hub, path: hf://openai/gsm8k, config: main, split: test, text_column: question}
      ngram: {n: 13, min_overlap: 0.5, min_words: 8}   # roost.algorithms.decontaminate
      embedding: {threshold: 0.9}            # nearest benchmark item by cosine similarity

Two checks, in this order; a row removed by the first is not embedded:

- `contaminated_ngram`: word n-gram overlap (roost.algorithms.decontaminate): the share of a
  benchmark item's words that lie in n-grams also found in the row is >= `ngram.min_overlap`.
  Catches verbatim copies, also inside longer text and in any language. An item shorter than
  `n` words counts when the row contains it whole; one shorter than `min_words` only when the
  row's view is that item and nothing else.
- `contaminated_embedding`: the row's view (never its responses) embedded with the run's
  embedding model (`embedding:` of the recipe, as semantic dedup) has a benchmark item at cosine
  similarity >= `embedding.threshold`, searched exactly in a FAISS index of the benchmark items
  (roost.algorithms.semantic_dedup.ReferenceIndex). Catches copies with changed numbers or
  names and close paraphrases; bench/bench_decontaminate.py measures both on planted data.
  The model reads only the start of a long text (all-MiniLM-L6-v2: 256 tokens); the n-gram
  check reads all of it.

The reject's detail names the benchmark, the item's id (its `id_column`, else its row number
in the file, from 0) and the measure: "gsm8k-test#123 overlap 0.84 >= 0.5",
"gsm8k-test#7 cosine 0.9312 >= 0.9". A text cell holding a list of strings (MT-Bench's
`turns`) is one item per string, id "81[0]", "81[1]". The manifest lists each benchmark set
with its fingerprint: sha256 of its files (or the Hub revision) and of the items read.

Benchmarks are read and indexed when the stage is made, so an unreadable set or a missing
column fails before any row is read (one line naming the field, exit 2). Embeddings of the
benchmark items are computed on the first batch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from roost.algorithms.decontaminate import NgramIndex
from roost.config import Strict, canonical, throughput
from roost.errors import UserError
from roost.stages.base import STAGES, Annotation, Annotator, Drop, StageConfig, View


class BenchmarkSet(Strict):
    name: str = Field(min_length=1)
    path: str = Field(min_length=1)  # Parquet file/dir/glob, JSON Lines file, or hf://<dataset id>
    text_column: str = Field(min_length=1)
    id_column: str | None = None  # default: the row number in the file, from 0
    split: str = "test"  # hf:// datasets and roost output directories
    config: str | None = None  # hf:// only: the dataset's config (gsm8k: "main")
    revision: str | None = None  # hf:// only: a branch, tag or commit


class NgramCheck(Strict):
    enabled: bool = True
    n: int = Field(13, ge=1)  # lm-evaluation-harness's 13-grams
    min_overlap: float = Field(0.5, gt=0, le=1)  # share of an item's words in shared n-grams
    min_words: int = Field(8, ge=1)  # shorter items match only a row equal to them


class EmbeddingCheck(Strict):
    enabled: bool = True
    threshold: float = Field(0.9, gt=0, le=1)  # cosine similarity to the nearest benchmark item


class DecontaminateConfig(StageConfig):
    kind: Literal["decontaminate"]
    view: View = "auto"
    check_responses: bool = False
    benchmarks: list[BenchmarkSet] = Field(min_length=1)
    ngram: NgramCheck = NgramCheck()
    embedding: EmbeddingCheck = EmbeddingCheck()
    batch_size: int = throughput(1024, ge=1)  # rows per batch (n-gram lookup and embedding)

    def contents(self) -> dict[str, str]:
        """Digests of the local benchmark files: editing one makes this a new recipe."""
        from roost.config import file_digest

        digests = {f"benchmarks[{i}]": file_digest(b.path) for i, b in enumerate(self.benchmarks)
                   if not b.path.startswith("hf://")}
        return {k: v for k, v in digests.items() if v is not None}

    @model_validator(mode="after")
    def _check(self):
        names = [b.name for b in self.benchmarks]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"two benchmark sets named {dup!r}")
        if not self.ngram.enabled and not self.embedding.enabled:
            raise ValueError("ngram and embedding are both disabled: nothing to check")
        return self


@dataclass
class Benchmark:
    name: str
    texts: list[str]
    ids: list[str]
    info: dict[str, Any]


def load_benchmark(cfg: BenchmarkSet) -> Benchmark:
    """Read one benchmark set: its item texts, ids and fingerprint. Raises `_Bad(field, why)`."""
    if cfg.path.startswith("hf://"):
        rows, columns, info = _read_hub(cfg)
    else:
        rows, columns, info = _read_local(cfg)
    for field_name in ("text_column", "id_column"):
        column = getattr(cfg, field_name)
        if column is not None and column not in columns:
            raise _Bad(field_name, f"no column {column!r} in {cfg.path} (columns: {', '.join(columns) or 'none'})")
    texts, ids, skipped = [], [], 0
    content = hashlib.sha256()
    for number, row in enumerate(rows):
        value = row.get(cfg.text_column)
        key = row.get(cfg.id_column) if cfg.id_column else None
        key = str(number if key is None else key)
        if isinstance(value, str):
            parts = [(key, value)]
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            parts = [(f"{key}[{k}]", v) for k, v in enumerate(value)]
        else:
            parts = []
        parts = [(k, v) for k, v in parts if v.strip()]
        if not parts:
            skipped += 1
        for k, v in parts:
            ids.append(k)
            texts.append(v)
            content.update(f"{k}\t{v}\n".encode("utf-8"))
    if not texts:
        raise _Bad("text_column", f"{cfg.path}: no text in column {cfg.text_column!r}")
    info = {"name": cfg.name, "path": cfg.path, "text_column": cfg.text_column, "id_column": cfg.id_column,
            **info, "rows": len(rows), "items": len(texts), "rows_without_text": skipped,
            "content_sha256": content.hexdigest()}
    return Benchmark(cfg.name, texts, ids, info)


class _Bad(Exception):
    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field_name = field_name


def _read_local(cfg: BenchmarkSet) -> tuple[list[dict], list[str], dict]:
    from roost.dataset.sources import open_source

    try:
        source = open_source(cfg.path, split=cfg.split)
        columns = list(source.schema.names)
        if cfg.text_column not in columns:  # say so before reading every row
            return [], columns, {}
        rows = [r for batch in source.batches() for r in batch]
    except UserError as e:
        raise _Bad("path", str(e)) from None
    except (OSError, ValueError) as e:  # a file that is not Parquet, unreadable bytes
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _Bad("path", f"{cfg.path}: cannot read ({why})") from None
    files = [cfg.path] if Path(cfg.path).is_file() else list(getattr(source, "_files", []))
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return rows, columns, {"sha256": digest.hexdigest(), "files": len(files)}


def _read_hub(cfg: BenchmarkSet) -> tuple[list[dict], list[str], dict]:
    import datasets

    dataset_id = cfg.path[len("hf://"):]
    try:  # streamed: only the split asked for is read, not the dataset's train split too
        ds = datasets.load_dataset(dataset_id, name=cfg.config, split=cfg.split, revision=cfg.revision, streaming=True)
        rows = list(ds)
    except Exception as e:  # offline, no such dataset/config/split: say which
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _Bad("path", f"{cfg.path}: cannot open config {cfg.config!r} split {cfg.split!r}: {why}") from None
    columns = list(ds.features) if ds.features is not None else list(dict.fromkeys(k for r in rows for k in r))
    revision = cfg.revision
    try:
        from huggingface_hub import HfApi

        revision = HfApi().dataset_info(dataset_id, revision=cfg.revision).sha
    except Exception:  # offline: the revision asked for (None: the default branch); content_sha256 still holds
        pass
    return rows, columns, {"dataset": dataset_id, "config": cfg.config, "split": cfg.split, "revision": revision}


@STAGES.register
class Decontaminate(Annotator):
    kind = "decontaminate"
    Config = DecontaminateConfig

    def __init__(self, config: DecontaminateConfig, context):
        super().__init__(config, context)
        self.batch_size = config.batch_size
        if self.view in ("chosen", "rejected") and context.kind != "preference":
            raise context.config_error(self, f"view: '{self.view}' needs preference rows")
        self.benchmarks: list[Benchmark] = []
        for i, b in enumerate(config.benchmarks):
            try:
                self.benchmarks.append(load_benchmark(b))
            except _Bad as e:
                raise context.config_error(self, f"benchmarks[{i}] ({b.name}).{e.field_name}: {e}") from None
        self.texts = [t for b in self.benchmarks for t in b.texts]
        self.labels = [f"{b.name}#{k}" for b in self.benchmarks for k in b.ids]
        self.ngram = NgramIndex(self.texts, n=config.ngram.n, min_words=config.ngram.min_words) \
            if config.ngram.enabled else None
        self._reference = None
        self._reference_info: dict[str, Any] = {}

    def views(self) -> list[str]:
        """The views the n-gram check reads: `view`, then the answers if `check_responses`."""
        extra = (["chosen", "rejected"] if self.context.kind == "preference" else ["response"]) \
            if self.config.check_responses else []
        return [self.view] + [v for v in extra if v != self.view]

    def annotate(self, rows) -> list[Annotation]:
        cfg = self.config
        n = len(rows)
        share = np.zeros(n)
        item = np.full(n, -1, np.int64)
        where = np.full(n, -1, np.int64)  # which view
        views = self.views()
        if self.ngram is not None:
            for v, view in enumerate(views):
                s, i = self.ngram.match([r.view(view) for r in rows])
                better = s > share
                share[better], item[better], where[better] = s[better], i[better], v
        dirty = share >= cfg.ngram.min_overlap if self.ngram is not None else np.zeros(n, bool)
        out = []
        for j in range(n):
            if dirty[j]:
                view = views[where[j]]
                note = "" if view == self.view else f" in {view}"
                detail = f"{self.labels[item[j]]} overlap {share[j]:.2f} >= {cfg.ngram.min_overlap}{note}"
                out.append(Annotation({}, Drop("contaminated_ngram", detail)))
            else:
                out.append(Annotation({}))
        if cfg.embedding.enabled:
            todo = [j for j in range(n) if not dirty[j] and rows[j].view(self.view).strip()]
            if todo:
                embedder = self.context.embedder()
                sim, idx = self.reference().nearest(embedder.encode([rows[j].view(self.view) for j in todo]))
                for j, s, i in zip(todo, sim.tolist(), idx.tolist()):
                    if i >= 0 and s >= cfg.embedding.threshold:
                        out[j] = Annotation({}, Drop("contaminated_embedding", f"{self.labels[i]} cosine {s:.4f} "
                                                                               f">= {cfg.embedding.threshold}"))
        return out

    def reference(self):
        """FAISS index of the benchmark items' embeddings, built on first use."""
        if self._reference is None:
            import time

            from roost.algorithms.semantic_dedup import ReferenceIndex

            t0 = time.perf_counter()
            x = self.context.embedder().encode(self.texts)
            embed_seconds = round(time.perf_counter() - t0, 3)
            self._reference = ReferenceIndex(x)
            self._reference_info = {**self._reference.settings, "embed_seconds": embed_seconds}
        return self._reference

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {**canonical(self.config), "view": self.view, "views": self.views(),
                               "benchmarks": [b.info for b in self.benchmarks]}
        if self.ngram is not None:
            out["ngram_index"] = self.ngram.settings
        if self.config.embedding.enabled:
            out["embedding_index"] = self._reference_info or None
            out["embedding_model"] = self.context.embedder_info
        return out

