"""Exact dedup: one survivor per group of rows whose normalised key is identical.

Keys are built from a configurable field of each row and normalised (`normalize_text`:
Unicode NFKC, casefold, whitespace collapsed, stripped), then hashed with blake2b (16 bytes);
rows with equal digests form a group. Survivor rule, deterministic: the highest score when
scores are given (None / NaN count lowest), ties and the no-score case broken by input order
(first wins). Run this before `semantic_dedup`: it is cheap and removes exact repeats first.
"""
from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from typing import Callable, Sequence

import numpy as np

from roost.filters.dedup_result import DedupResult
from roost.filters.heuristics import first_instruction

_WS = re.compile(r"\s+", re.UNICODE)


def normalize_text(s: str | None) -> str:
    """NFKC, casefold, collapse runs of whitespace to one space, strip."""
    if not s:
        return ""
    return _WS.sub(" ", unicodedata.normalize("NFKC", s).casefold()).strip()


def key_first_instruction(row: dict) -> str:
    """Normalised first user message (or `instruction` column)."""
    return normalize_text(first_instruction(row))


def key_conversation(row: dict) -> str:
    """Normalised role + content of every message (or instruction + response columns)."""
    msgs = row.get("messages")
    if not msgs:
        msgs = [{"role": "user", "content": row.get("instruction")},
                {"role": "assistant", "content": row.get("response")}]
    return "\x1e".join(f"{m.get('role')}\x1f{normalize_text(m.get('content'))}" for m in msgs)


KEY_BUILDERS: dict[str, Callable[[dict], str]] = {
    "first_instruction": key_first_instruction,
    "conversation": key_conversation,
}


def build_keys(rows: Sequence[dict], field: str | Callable[[dict], str] = "first_instruction") -> list[str]:
    """Keys for `rows`: field is "first_instruction", "conversation" or a callable row -> str."""
    fn = field if callable(field) else KEY_BUILDERS.get(field)
    if fn is None:
        raise ValueError(f"unknown key field {field!r}; one of {sorted(KEY_BUILDERS)} or a callable")
    return [fn(r) for r in rows]


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest()


def exact_dedup(keys: Sequence[str], ids: Sequence[str],
                scores: Sequence[float | None] | None = None, *, normalize: bool = False) -> DedupResult:
    """Group rows by the blake2b of `keys` (normalised first if `normalize`), keep one per group.

    Tags: `exact_group_size` (rows sharing the key, incl. itself) and `exact_hash` (hex digest)."""
    n = len(keys)
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} keys")
    if scores is not None and len(scores) != n:
        raise ValueError(f"{len(scores)} scores for {n} keys")

    def score(i: int) -> float:
        if scores is None:
            return 0.0
        v = scores[i]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return -math.inf
        return float(v)

    best: dict[bytes, int] = {}
    digests: list[bytes] = []
    sizes: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        h = _digest(normalize_text(key) if normalize else key)
        digests.append(h)
        sizes[h] = sizes.get(h, 0) + 1
        j = best.get(h)
        if j is None or score(i) > score(j):  # strict: on a tie the earlier row stays
            best[h] = i
    keep = np.zeros(n, dtype=bool)
    dup_of: list[str | None] = [None] * n
    sim: list[float | None] = [None] * n
    for i, h in enumerate(digests):
        j = best[h]
        if j == i:
            keep[i] = True
        else:
            dup_of[i] = ids[j]
            sim[i] = 1.0
    tags = {"exact_group_size": np.array([sizes[h] for h in digests], dtype=np.int32),
            "exact_hash": [h.hex() for h in digests]}
    settings = {"hash": "blake2b-128", "normalize": "NFKC+casefold+whitespace",
                "priority": "score desc, then input order" if scores is not None else "input order",
                "groups": len(best)}
    return DedupResult(ids, keep, dup_of, sim, "exact_duplicate", tags=tags, settings=settings)


def exact_dedup_rows(rows: Sequence[dict], field: str | Callable[[dict], str] = "first_instruction",
                     id_field: str = "id", score_field: str | None = None) -> DedupResult:
    """`exact_dedup` over rows: keys from `field`, ids from `id_field` (row index if absent)."""
    keys = build_keys(rows, field)
    ids = [str(r.get(id_field, i)) for i, r in enumerate(rows)]
    scores = [r.get(score_field) for r in rows] if score_field else None
    return exact_dedup(keys, ids, scores)


def dedup_digests(digests: np.ndarray, priority: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`exact_dedup` for large inputs, on 16-byte key hashes held in one (n, 16) uint8 array.

    Same survivor rule (highest priority, NaN lowest, then first in input order), all numpy:
    no per-row Python objects. Returns (keep mask, index of each row's survivor)."""
    n = len(digests)
    if n == 0:
        return np.zeros(0, bool), np.zeros(0, np.int64)
    halves = np.ascontiguousarray(digests, dtype=np.uint8).view(np.uint64).reshape(n, 2)
    index = np.arange(n, dtype=np.int64)
    pri = np.zeros(n) if priority is None else np.where(np.isnan(priority), -np.inf, priority)
    order = np.lexsort((index, -pri, halves[:, 1], halves[:, 0]))
    h = halves[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = (h[1:] != h[:-1]).any(axis=1)
    first = np.maximum.accumulate(np.where(starts, index, 0))
    survivor = np.empty(n, dtype=np.int64)
    survivor[order] = order[first]
    return survivor == index, survivor
