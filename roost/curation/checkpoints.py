"""Embedding checkpoints: a curation killed while embedding loses at most one part (PART_ROWS
rows); the next run reads the parts back and embeds only the rest (roost.curation.cache)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from roost.curation.files import write_json, write_npy

if TYPE_CHECKING:
    from roost.curation.cache import Entry, StageCache

PART_ROWS = 16_384  # embedding checkpoint: rows per part (~25 MB at 384 floats)
_PART = re.compile(r"part-(\d{12})-(\d{12})\.npy")


class EmbeddingFeed:
    """Embeddings of the rows still in, batch by batch, in order: rows a killed run already
    embedded come from its checkpoint parts; the rest are embedded and checkpointed every
    PART_ROWS rows. `finish()` turns the parts into the cache entry."""

    def __init__(self, cache: StageCache, entry: Entry, embedder: Callable[[], Any]):
        self.cache, self.entry, self._embedder = cache, entry, embedder
        self.dir = cache.root / f"{entry.dirname}.parts"
        self.parts: list[tuple[int, int, str]] = []
        self.prefix = np.zeros((0, 0), np.float32)
        self.embedded = 0
        self.reused = 0
        self.seconds = 0.0  # spent embedding
        self._pending: list[np.ndarray] = []
        self._info: dict | None = None
        if not cache.enabled:
            return
        for other in cache.root.glob(f"{entry.name}-*.parts") if cache.root.is_dir() else ():
            if other != self.dir:
                cache._discard(other)  # checkpoints of another key
        if self.dir.is_dir():
            try:
                self._resume()
            except Exception:  # damaged checkpoints: start again
                self.parts, self.prefix = [], np.zeros((0, 0), np.float32)
                cache._discard(self.dir)
        if self.parts:
            entry.status = f"partial ({self.done} rows checkpointed)"
        self._start = self.done

    def _resume(self) -> None:
        found = {}
        for p in self.dir.iterdir():
            m = _PART.fullmatch(p.name)
            if m:
                found[int(m.group(1))] = (int(m.group(2)), p.name)
        at, arrays = 0, []
        while at in found:
            stop, name = found[at]
            x = np.load(self.dir / name, mmap_mode="r")
            if x.ndim != 2 or len(x) != stop - at or x.dtype != np.float32:
                break
            self.parts.append((at, stop, name))
            arrays.append(x)
            at = stop
        if arrays:
            self.prefix = np.concatenate(arrays)
        info = self.dir / "embedder.json"
        self._info = json.loads(info.read_text()) if info.is_file() else None

    @property
    def done(self) -> int:
        return self.parts[-1][1] if self.parts else 0

    def embedder_info(self) -> dict | None:
        return self._info

    def encode(self, texts: list[str], start: int) -> np.ndarray:
        """Embeddings of `texts`, the rows still in numbered start, start + 1, ..."""
        out = []
        cut = min(max(self.done - start, 0), len(texts))
        if cut:
            out.append(self.prefix[start:start + cut])
            self.reused += cut
        rest = texts[cut:]
        if rest:
            t0 = time.perf_counter()
            embedder = self._embedder()
            x = embedder.encode(rest)
            self.seconds += time.perf_counter() - t0
            self.embedded += len(rest)
            out.append(x)
            self._add(x, embedder)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def dim(self) -> int:
        if self.parts:
            return self.prefix.shape[1]
        embedder = self._embedder()
        if self._info is None:
            self._info = embedder.describe()
        return embedder.dim

    def _add(self, x: np.ndarray, embedder) -> None:
        if not self.cache.enabled:
            return
        if self._info is None:
            self._info = embedder.describe()
        self._pending.append(x)
        if sum(len(p) for p in self._pending) >= PART_ROWS:
            self._checkpoint()

    def _checkpoint(self) -> None:
        if not self._pending:
            return
        x = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        a = self.done
        name = f"part-{a:012d}-{a + len(x):012d}.npy"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self._info is not None and not (self.dir / "embedder.json").is_file():
                write_json(self.dir / "embedder.json", self._info)
            write_npy(self.dir / name, x)
        except OSError:
            return  # not resumable from here; the run goes on
        self.parts.append((a, a + len(x), name))
        self._pending = []

    def finish(self, rows: int, seconds: float) -> None:
        """All `rows` embedded: seal the parts into the cache entry."""
        e = self.entry
        e.info.update(rows=rows, embedded=self.embedded, reused=self.reused, seconds=round(seconds, 3))
        if not self.cache.enabled:
            return
        try:
            self._checkpoint()
            if self.done != rows:
                raise ValueError(f"parts cover {self.done} of {rows} rows")
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(self.dir / "meta.json", {"name": e.name, "key": e.key, "parts": e.parts,
                                                 "seconds": round(seconds, 3), "rows": rows,
                                                 "files": [[a, b, n] for a, b, n in self.parts],
                                                 "embedder": self._info})
            self.cache._install(self.dir, e)
        except Exception as exc:
            e.info["not_saved"] = f"{type(exc).__name__}: {exc}"


def load_parts(d: Path, meta: dict) -> np.ndarray:
    arrays, at = [], 0
    for a, b, name in meta["files"]:
        x = np.load(d / name, mmap_mode="r")
        if a != at or len(x) != b - a or x.ndim != 2 or x.dtype != np.float32:
            raise ValueError(f"{name}: not rows {a}..{b} as float32")
        arrays.append(x)
        at = b
    if at != meta["rows"]:
        raise ValueError(f"parts cover {at} of {meta['rows']} rows")
    if not arrays:
        return np.zeros((0, int((meta.get("embedder") or {}).get("dim") or 0)), np.float32)
    return np.concatenate(arrays) if len(arrays) > 1 else np.array(arrays[0])  # in memory, as a fresh run holds them
