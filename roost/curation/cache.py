"""Resumable curation: what each stage computed, cached under OUT/.cache as it finishes, so a
curation that is killed resumes from the stage it was in, never from the start.

Layout: one directory per entry, named by what it holds and its key.

    OUT/.cache/
      read-<key>/                           pass 1: validation and the leading row filters
          kept.parquet                      position, id, priority of each row still in
          removed.parquet                   position, stage, reason, detail of each row removed
      digest-<view>-<key>/digests.npy       (n, 16) uint8: exact-dedup keys of the rows still in
      embedding-<view>-<key>/part-<a>-<b>.npy   (b - a, dim) float32 unit rows a..b of the rows
                                            still in (.npy: np.load(..., mmap_mode="r") maps them)
      embedding-<view>-<key>.parts/         the same, while embedding: a part every PART_ROWS rows,
                                            so a kill during embedding loses at most one part
      <i>-<kind>-<key>/decision.parquet     set stage i (dedup, selection): its decision over the
                                            rows it was given (and their positions, to check)
      <i>-<kind>-<key>/rows.parquet         row filter or annotator i: the rows it saw, its drops
                                            and its columns (scores, tags)
      .tmp/                                 entries being written

Every entry has a meta.json (its key, the parts of the key, what the manifest says of the
stage). An entry is written in .tmp/ and renamed into place whole (a checkpoint part is
written to a hidden name and renamed), so a killed run leaves either a whole entry or none:
a partial file is never read. A entry that fails to load is recomputed.

Keys: sha256 (16 hex) of JSON of
    input   sha256 of the input files' bytes, in order (see `input_fingerprint`)
    read    roost version, input, input settings (columns, split, score column; not its path
            or batch size), the leading row filters' kinds and settings
    digest  read, view            embedding  read, view, embedding model identity
    stage i the key before it (read, then stage i-1: everything that decides which rows reach
            it), its kind and canonical settings (throughput fields left out, as in the recipe
            fingerprint), digests of files it names (benchmark sets), sizes and times of local
            paths it names (models), and the embedding model identity for a stage that may use
            the embedder (set stages with an Embedding feature; every stage not known not to)
Embedding model identity: `embedding:` of the recipe (canonical) and the sha256 of the model's
files (a local directory, the bundled all-MiniLM-L6-v2 included) or its Hub revision.

An entry written for another key is never read: the stage is recomputed, and the manifest
says why (`cache: stale (input changed)`, `stale (settings changed)`, ...). Once a new entry
is written, older entries of the same stage are removed; `roost curate` removes the whole
cache when the curation completes (a finished output is never recomputed).

Why content digests for the input: hashing reads each byte once (sha256 here: ~0.9 GB/s,
about 1 s for a 1M-row input) where names, sizes and mtimes could miss a file edited in
place with its size and time kept, or rewritten within a coarse file-system timestamp (a process hashes a file once per size and
nanosecond mtime). A Hub input is its commit.

Beside this module: keys.py (what the keys are made of), checkpoints.py (embedding checkpoints),
ledger.py (the ledger's records as the tables entries hold), files.py (each file written whole).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from roost import __version__
from roost.config import canonical
from roost.curation.checkpoints import EmbeddingFeed, load_parts
from roost.curation.files import write_json, write_npy, write_parquet
from roost.curation.keys import embedding_identity, input_fingerprint, key_hash, stage_identity, uses_embedder
from roost.curation.ledger import rows_table
from roost.stages.base import Digest, Embedding, SetDecision, Stage

CACHE_DIR = ".cache"
_ORDER = ("version", "input", "model", "settings", "upstream")
_WHY = {"version": "roost version changed", "input": "input changed", "model": "embedding model changed",
        "settings": "settings changed", "upstream": "upstream changed"}


# -- entries ------------------------------------------------------------------------------------


@dataclass
class Entry:
    name: str  # what it holds: "read", "embedding-prompt", "02-semantic_dedup"
    parts: dict[str, str | None]
    status: str = "miss"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return key_hash(self.parts)

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.key}"


@dataclass
class ReadState:
    """Pass 1's outcome: how many rows, which were removed and why, and the rows still in."""

    total: int
    kept: pa.Table  # position int64, id string, priority float64
    removed: pa.Table  # position int64, stage, reason, detail (strings)
    settings: list[dict[str, Any]]  # the manifest's settings of validate and each leading filter


class StageCache:
    """The cache of one curation (see the module doc). `enabled=False` keeps the interface and
    stores nothing."""

    def __init__(self, root: str | Path, recipe, source, stages: list[Stage], lead: int, *, enabled: bool = True):
        self.root = Path(root)
        t = time.perf_counter()
        self.input = input_fingerprint(source) if enabled else None
        self.input_seconds = round(time.perf_counter() - t, 3)
        self.enabled = self.input is not None
        self.off = None if self.enabled else "caching disabled"
        self.entries: dict[str, Entry] = {}
        base = {"version": __version__, "input": (self.input or {}).get("sha256")}
        input_settings = {k: v for k, v in canonical(recipe.input).items() if k != "path"}
        self.read = self._add("read", {**base, "settings": key_hash(
            {"input": input_settings, "filters": [stage_identity(s) for s in stages[:lead]]})})
        self._model = key_hash(embedding_identity(recipe)) if self.enabled and any(
            uses_embedder(s) for s in stages) else None
        self._base = base
        self.stage_entries: dict[int, Entry] = {}
        prev = self.read.key
        for i in range(lead, len(stages)):
            st = stages[i]
            parts = {**base, "settings": key_hash(stage_identity(st)), "upstream": prev}
            if uses_embedder(st):
                parts["model"] = self._model
            self.stage_entries[i] = e = self._add(f"{i:02d}-{st.kind}", parts)
            prev = e.key
        if self.enabled:
            shutil.rmtree(self.root / ".tmp", ignore_errors=True)  # what a killed run was writing

    def _add(self, name: str, parts: dict) -> Entry:
        e = self.entries[name] = Entry(name, parts, status="miss" if self.enabled else f"off ({self.off})")
        return e

    def feature(self, f) -> Entry:
        name = f"{'digest' if isinstance(f, Digest) else 'embedding'}-{f.view}"
        if name not in self.entries:
            parts = {**self._base, "upstream": self.read.key, "settings": key_hash([name])}
            if isinstance(f, Embedding):
                parts["model"] = self._model
            self._add(name, parts)
        return self.entries[name]

    def status(self, index: int) -> str:
        return self.stage_entries[index].status

    # -- pass 1 ---------------------------------------------------------------------------------

    def load_read(self) -> ReadState | None:
        def load(d: Path, meta: dict) -> ReadState:
            kept, removed = pq.read_table(d / "kept.parquet"), pq.read_table(d / "removed.parquet")
            if kept.num_rows != meta["kept"] or removed.num_rows != meta["removed"]:
                raise ValueError("row counts differ from meta.json")
            return ReadState(meta["total"], kept, removed, meta["settings"])

        return self._load(self.read, load)

    def save_read(self, state: ReadState, seconds: float) -> None:
        def write(d: Path) -> dict:
            write_parquet(d / "kept.parquet", state.kept)
            write_parquet(d / "removed.parquet", state.removed)
            return {"total": state.total, "kept": state.kept.num_rows, "removed": state.removed.num_rows,
                    "settings": state.settings}

        self._save(self.read, write, seconds)

    def load_feature(self, f, rows: int | None) -> np.ndarray | None:
        e = self.feature(f)

        def load(d: Path, meta: dict) -> np.ndarray:
            if isinstance(f, Digest):
                x = np.load(d / "digests.npy")
            else:
                x = load_parts(d, meta)
                e.info["embedder"] = meta.get("embedder")
            if rows is not None and len(x) != rows:
                raise ValueError(f"{len(x)} rows, pass 1 kept {rows}")
            return x

        x = self._load(e, load)
        if x is not None and isinstance(f, Embedding):
            e.info.update(rows=len(x), embedded=0, reused=len(x))
        return x

    def save_digests(self, f: Digest, x: np.ndarray, seconds: float) -> None:
        def write(d: Path) -> dict:
            write_npy(d / "digests.npy", x)
            return {"rows": len(x)}

        self._save(self.feature(f), write, seconds)

    def embedding_feed(self, f: Embedding, embedder: Callable[[], Any]) -> EmbeddingFeed:
        return EmbeddingFeed(self, self.feature(f), embedder)

    # -- set stages -------------------------------------------------------------------------------

    def load_decision(self, index: int, positions: np.ndarray) -> tuple[SetDecision, dict] | None:
        def load(d: Path, meta: dict):
            t = pq.read_table(d / "decision.parquet")
            if not np.array_equal(_np(t, "position"), positions):
                raise _RowsDiffer()
            col = (lambda name: _np(t, name) if name in t.column_names else None)
            reasons = np.array(t.column("reason").to_pylist(), dtype=object) if "reason" in t.column_names else None
            columns = {}
            for name in meta["columns"]:
                c = t.column(f"column:{name}")
                columns[name] = _np(t, f"column:{name}") if _numeric(c.type) else np.array(c.to_pylist(), dtype=object)
            d = SetDecision(keep=_np(t, "keep").astype(bool), reasons=reasons, measure=col("measure"),
                            duplicate_of=col("duplicate_of"), columns=columns, settings=meta["decision_settings"])
            return d, meta["report"]

        return self._load(self.stage_entries[index], load)

    def save_decision(self, index: int, positions: np.ndarray, d: SetDecision, report: dict, seconds: float) -> None:
        def write(dd: Path) -> dict:
            cols: dict[str, Any] = {"position": pa.array(positions, pa.int64()), "keep": pa.array(d.keep, pa.bool_())}
            if d.reasons is not None:
                cols["reason"] = pa.array([None if r is None else str(r) for r in d.reasons.tolist()], pa.string())
            if d.measure is not None:
                cols["measure"] = pa.array(np.asarray(d.measure, np.float64))
            if d.duplicate_of is not None:
                cols["duplicate_of"] = pa.array(np.asarray(d.duplicate_of, np.int64))
            for name, v in d.columns.items():
                cols[f"column:{name}"] = pa.array(v if isinstance(v, np.ndarray) and v.dtype != object else list(v))
            write_parquet(dd / "decision.parquet", pa.table(cols))
            return {"rows": len(positions), "columns": list(d.columns), "decision_settings": d.settings,
                    "report": report}

        self._save(self.stage_entries[index], write, seconds)

    # -- row filters and annotators after pass 1 ---------------------------------------------------

    def load_rows(self, index: int, positions: np.ndarray) -> tuple[pa.Table, dict] | None:
        def load(d: Path, meta: dict):
            t = pq.read_table(d / "rows.parquet")
            if not np.array_equal(_np(t, "position"), positions):
                raise _RowsDiffer()
            return t, meta["report"]

        return self._load(self.stage_entries[index], load)

    def save_rows(self, index: int, ledger, stage: Stage, positions: np.ndarray,
                  drops: list[tuple[int, str, str | None]], report: dict, seconds: float) -> None:
        def write(d: Path) -> dict:
            table = rows_table(ledger, stage, positions, drops)
            write_parquet(d / "rows.parquet", table)
            return {"rows": table.num_rows, "report": report}

        self._save(self.stage_entries[index], write, seconds)

    def recomputed(self, index: int) -> None:
        """Stage `index` runs in a pass with an earlier stage that missed: note why."""
        e = self.stage_entries[index]
        if self.enabled:
            e.status = self._why(e)
            if e.status == "hit":
                e.status = "miss (recomputed with the pass of an earlier stage)"

    # -- the manifest, and the end -------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        return {
            "dir": str(self.root), "enabled": self.enabled,
            "input": {**(self.input or {}), "seconds": self.input_seconds} if self.enabled else None,
            "entries": {n: {"key": e.key, "status": e.status, **{k: v for k, v in e.info.items() if k != "embedder"}}
                        for n, e in self.entries.items()},
        }

    def clear(self) -> None:
        if self.root.exists():
            trash = self.root.with_name(f"{self.root.name}.removing-{uuid.uuid4().hex}")
            os.replace(self.root, trash)
            shutil.rmtree(trash, ignore_errors=True)

    # -- machinery -----------------------------------------------------------------------------------

    def _load(self, e: Entry, load: Callable[[Path, dict], Any]):
        if not self.enabled:
            return None
        d = self.root / e.dirname
        if not (d / "meta.json").is_file():
            e.status = self._why(e)
            return None
        try:
            meta = json.loads((d / "meta.json").read_text())
            if meta.get("key") != e.key or meta.get("parts") != e.parts:
                raise ValueError("meta.json names another key")
            value = load(d, meta)
        except _RowsDiffer:
            e.status = "stale (rows differ)"
            self._discard(d)
            return None
        except Exception as exc:  # a damaged entry is recomputed, never trusted
            e.status = f"stale (unreadable: {type(exc).__name__}: {str(exc)[:120]})"
            self._discard(d)
            return None
        e.status = "hit"
        e.info["computed_in_seconds"] = meta.get("seconds")
        return value

    def _why(self, e: Entry) -> str:
        """miss, or stale (why) when an entry of this stage was written for another key."""
        if (self.root / e.dirname / "meta.json").is_file():
            return "hit"
        why: list[str] = []
        for other in self._siblings(e):
            try:
                parts = json.loads((other / "meta.json").read_text())["parts"]
            except Exception:
                why.append("unreadable")
                continue
            diff = [k for k in _ORDER if parts.get(k) != e.parts.get(k)]
            named = [_WHY[k] for k in diff if k != "upstream"] or [_WHY[k] for k in diff] or ["key differs"]
            why.extend(w for w in named if w not in why)
        return f"stale ({', '.join(why)})" if why else "miss"

    def _siblings(self, e: Entry) -> list[Path]:
        if not self.root.is_dir():
            return []
        pattern = re.compile(re.escape(e.name) + r"-[0-9a-f]{16}")
        return sorted(p for p in self.root.iterdir() if pattern.fullmatch(p.name) and p.name != e.dirname)

    def _save(self, e: Entry, write: Callable[[Path], dict], seconds: float) -> None:
        if not self.enabled:
            return
        tmp = self.root / ".tmp" / f"{e.dirname}.{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            meta = write(tmp)
            write_json(tmp / "meta.json", {"name": e.name, "key": e.key, "parts": e.parts,
                                            "seconds": round(seconds, 3), **meta})
            self._install(tmp, e)
        except Exception as exc:  # the run goes on; the stage is only not resumable
            shutil.rmtree(tmp, ignore_errors=True)
            e.info["not_saved"] = f"{type(exc).__name__}: {exc}"
            return
        e.info["seconds"] = round(seconds, 3)

    def _install(self, src: Path, e: Entry) -> None:
        final = self.root / e.dirname
        if final.exists():
            self._discard(final)
        os.replace(src, final)
        _fsync_dir(self.root)
        for other in self._siblings(e):  # older keys of this stage: never read again
            self._discard(other)

    def _discard(self, path: Path) -> None:
        trash = self.root / ".tmp" / f"removing-{path.name}-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


class _RowsDiffer(Exception):
    pass


# -- atomic files ------------------------------------------------------------------------------------


def _np(t: pa.Table, name: str) -> np.ndarray:
    return t.column(name).to_numpy()


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
