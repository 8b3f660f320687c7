"""`DedupResult`: what a dedup pass kept, what it removed, because of which row.

Shared by `exact_dedup` and `semantic_dedup`. Row `i` of every array refers to input row `i`.
A removed row always names the kept row it duplicates (`duplicate_of`) and how similar they
are (`similarity`: 1.0 for exact duplicates, cosine for semantic ones), so a reviewer can
check every decision; `settings` records how the pass was run (index, parameters, recall).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from roost.dataset.writer import Reject


@dataclass
class DedupResult:
    ids: list[str]
    keep: np.ndarray  # bool per row
    duplicate_of: list[str | None]  # id of the kept row that caused the removal
    similarity: list[float | None]  # similarity to that kept row
    reason: str  # "exact_duplicate" / "semantic_duplicate"
    tags: dict[str, Any] = field(default_factory=dict)  # per-row arrays/lists, len == n
    settings: dict[str, Any] = field(default_factory=dict)
    # semantic only: every pair found with similarity >= threshold, as row indices (i, j, sim),
    # each pair as found from i's neighbour list (a pair may appear from both sides)
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    # the same links as row positions (int64, -1: none), for callers that work in positions
    duplicate_index: np.ndarray | None = None  # the kept row a removed row duplicates
    nearest_index: np.ndarray | None = None  # semantic only: each row's nearest other row

    def __len__(self) -> int:
        return len(self.ids)

    def kept_indices(self) -> np.ndarray:
        return np.flatnonzero(self.keep)

    def removed_indices(self) -> np.ndarray:
        return np.flatnonzero(~self.keep)

    def kept_ids(self) -> list[str]:
        return [self.ids[i] for i in self.kept_indices()]

    def removed(self) -> list[tuple[str, str, float]]:
        """(removed id, kept id it duplicates, similarity) for every removed row."""
        return [(self.ids[i], self.duplicate_of[i], self.similarity[i]) for i in self.removed_indices()]

    def duplicates_by_kept(self) -> dict[str, list[tuple[str, float]]]:
        """kept id -> [(removed id, similarity), ...]: each survivor with what it replaced."""
        out: dict[str, list[tuple[str, float]]] = {}
        for rid, kid, sim in self.removed():
            out.setdefault(kid, []).append((rid, sim))
        return out

    def rejects(self, records: Sequence[Any], stage: str = "dedup") -> list[Reject]:
        """One `Reject` per removed row, in input order, with `duplicate_of` and the similarity."""
        if len(records) != len(self.ids):
            raise ValueError(f"{len(records)} records for a result over {len(self.ids)} rows")
        out = []
        for i in self.removed_indices():
            sim = self.similarity[i]
            detail = f"similarity={sim:.4f} to {self.duplicate_of[i]}" if sim is not None else None
            out.append(Reject(stage, self.reason, records[i], id=self.ids[i], detail=detail,
                              duplicate_of=self.duplicate_of[i]))
        return out

    def row_tags(self, i: int) -> dict[str, Any]:
        """Tags of row i as plain Python values (for adding as columns)."""
        out = {}
        for name, values in self.tags.items():
            v = values[i]
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and np.isnan(v):
                v = None
            out[name] = v
        return out

    def summary(self) -> dict[str, Any]:
        n = len(self.ids)
        removed = int((~self.keep).sum())
        sims = [s for s, k in zip(self.similarity, self.keep) if not k and s is not None]
        groups = Counter(d for d in self.duplicate_of if d is not None)
        return {
            "reason": self.reason,
            "rows": n,
            "kept": n - removed,
            "removed": removed,
            "removed_fraction": removed / n if n else 0.0,
            "survivors_with_duplicates": len(groups),
            "largest_group": (max(groups.values()) + 1) if groups else 1,
            "min_removed_similarity": min(sims) if sims else None,
            "settings": self.settings,
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (f"DedupResult({s['reason']}: {s['kept']} kept, {s['removed']} removed of {s['rows']}, "
                f"settings={self.settings})")
