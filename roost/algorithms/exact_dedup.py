"""Exact dedup: one survivor per group of rows whose normalized key is identical.

Keys are normalized (`text_rules.normalize_text`: NFKC, casefold, whitespace collapsed) and
hashed with blake2b (16 bytes); rows with equal digests form a group. Survivor rule,
deterministic: the highest priority when given (NaN lowest), ties and the no-priority case
broken by input order (first wins). One implementation, all numpy (`dedup_digests`), so a
million keys cost a sort, not a million Python objects; `exact_dedup` is the same rule over a
list of keys, returning a `DedupResult` that explains itself.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from roost.algorithms.dedup_result import DedupResult
from roost.algorithms.ranking import priority_keys
from roost.algorithms.text_rules import normalize_text

__all__ = ["dedup_digests", "digest", "digests", "exact_dedup", "normalize_text"]


def digest(key: str) -> bytes:
    """16-byte blake2b of the normalized key."""
    return hashlib.blake2b(normalize_text(key).encode("utf-8"), digest_size=16).digest()


def digests(keys: Sequence[str]) -> np.ndarray:
    """(n, 16) uint8 digests of normalized keys."""
    return np.frombuffer(b"".join(digest(k) for k in keys), dtype=np.uint8).reshape(-1, 16)


def dedup_digests(digests: np.ndarray, priority: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Survivors over 16-byte key hashes held in one (n, 16) uint8 array.

    Highest priority wins (NaN lowest), then first in input order. Returns (keep mask, index
    of each row's survivor)."""
    n = len(digests)
    if n == 0:
        return np.zeros(0, bool), np.zeros(0, np.int64)
    halves = np.ascontiguousarray(digests, dtype=np.uint8).view(np.uint64).reshape(n, 2)
    index = np.arange(n, dtype=np.int64)
    order = np.lexsort((index, priority_keys(priority, n), halves[:, 1], halves[:, 0]))
    h = halves[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = (h[1:] != h[:-1]).any(axis=1)
    first = np.maximum.accumulate(np.where(starts, index, 0))
    survivor = np.empty(n, dtype=np.int64)
    survivor[order] = order[first]
    return survivor == index, survivor


def exact_dedup(keys: Sequence[str], ids: Sequence[str], scores: Sequence[float | None] | None = None) -> DedupResult:
    """Group rows by their normalized key, keep one per group (see module doc).

    Tags: `exact_group_size` (rows sharing the key, itself included) and `exact_hash`."""
    n = len(keys)
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} keys")
    if scores is not None and len(scores) != n:
        raise ValueError(f"{len(scores)} scores for {n} keys")
    d = digests(keys)
    priority = None if scores is None else np.array([np.nan if s is None else float(s) for s in scores])
    keep, survivor = dedup_digests(d, priority)
    sizes = np.bincount(survivor, minlength=n)[survivor] if n else np.zeros(0, np.int64)
    dup_of = [None if keep[i] else ids[survivor[i]] for i in range(n)]
    sim = [None if keep[i] else 1.0 for i in range(n)]
    tags = {"exact_group_size": sizes.astype(np.int32), "exact_hash": [bytes(h).hex() for h in d]}
    settings = {"hash": "blake2b-128", "normalize": "NFKC+casefold+whitespace",
                "priority": "score desc, then input order" if scores is not None else "input order",
                "groups": int(keep.sum())}
    return DedupResult(ids, keep, dup_of, sim, "exact_duplicate", tags=tags, settings=settings,
                       duplicate_index=np.where(keep, -1, survivor).astype(np.int64))
