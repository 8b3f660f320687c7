"""deita's score-first, diversity-aware selection (paper Algorithm 1; deita IterativeFilter).

Rows are ranked by score, highest first (null/NaN scores last; ties keep input order, a
stable sort, where deita's pandas quicksort leaves tie order arbitrary). Walking down the
ranking, a row is kept if its cosine *similarity* to every row kept so far is <= tau
(deita's code and maintainers, issues #20/#38; the paper's "distance < tau" wording is wrong),
until `budget` rows are kept.

Batched exactly: the kept rows live in a FAISS inner-product index. Each batch of ranked rows
is searched against the index once, then the batch is resolved in rank order, where only
rows *kept* earlier in the batch block later ones. deita also lets a row rejected earlier in
the batch block later rows (its `tril(-1)` test), which makes its output depend on
batch_size; ours does not: any batch_size gives the sequential greedy result.

FAISS finds the nearest kept candidates (in float32); the similarities that decide are
recomputed in float64 from the stored vectors, so the decision at the tau boundary does not
depend on which FAISS kernel (BLAS or not) ran for a given batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from roost.algorithms.ranking import priority_order

_CANDIDATES = 4  # nearest kept rows re-checked in float64 per query


@dataclass
class SelectionResult:
    selected: list[int]  # input indices of kept rows, in selection (rank) order
    selected_mask: np.ndarray  # bool per input row
    rank: np.ndarray  # int per input row: position in the score ranking (0 = best)
    considered: np.ndarray  # bool per input row: reached before the budget was filled
    nearest_kept_similarity: np.ndarray  # float per row, NaN if nothing was kept before it / not considered
    settings: dict[str, Any] = field(default_factory=dict)

    def row(self, i: int) -> dict[str, Any]:
        sim = float(self.nearest_kept_similarity[i])
        return {
            "selected": bool(self.selected_mask[i]),
            "rank": int(self.rank[i]),
            "considered": bool(self.considered[i]),
            "nearest_kept_similarity": None if math.isnan(sim) else sim,
        }

    def rows(self) -> list[dict[str, Any]]:
        return [self.row(i) for i in range(len(self.rank))]


def score_order(scores: Sequence[float | None]) -> np.ndarray:
    """Indices by score descending; None/NaN last; ties in input order (roost.algorithms.ranking)."""
    return priority_order(scores)


def select_diverse(
    embeddings: np.ndarray,
    scores: Sequence[float | None],
    budget: int | None,
    tau: float = 0.9,
    batch_size: int = 1024,
    *,
    normalize: bool = False,
) -> SelectionResult:
    """Keep rows best-first while cosine similarity to every kept row is <= tau.

    `embeddings`: (n, d), unit rows (pass normalize=True to L2-normalize here).
    `budget`: max rows kept; None keeps every row that passes.
    """
    import faiss

    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError("embeddings must be a 2-D array (n, d)")
    n, d = emb.shape
    if len(scores) != n:
        raise ValueError(f"{len(scores)} scores for {n} embeddings")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if budget is not None and budget < 0:
        raise ValueError("budget must be >= 0 or None")
    norms = np.linalg.norm(emb, axis=1)
    if normalize:
        if np.any(norms == 0):
            raise ValueError("zero embedding row(s) cannot be normalized")
        emb = emb / norms[:, None]
    elif n and not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError("embeddings must be unit vectors (or pass normalize=True)")
    emb = np.ascontiguousarray(emb, dtype=np.float32)

    order = score_order(scores)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    selected_mask = np.zeros(n, dtype=bool)
    considered = np.zeros(n, dtype=bool)
    nearest = np.full(n, np.nan, dtype=np.float64)
    selected: list[int] = []
    cap = n if budget is None else budget

    index = faiss.IndexFlatIP(d)
    kept64 = np.empty((0, d), dtype=np.float64)  # kept vectors, in index order

    for start in range(0, n, batch_size):
        if len(selected) >= cap:
            break
        rows = order[start:start + batch_size]
        batch = emb[rows]
        batch64 = batch.astype(np.float64)
        # Nearest kept row before this batch: FAISS proposes, float64 decides.
        prior = np.full(len(rows), -np.inf)
        if index.ntotal:
            k = min(_CANDIDATES, index.ntotal)
            _, ids = index.search(batch, k)
            cand = kept64[ids]  # (b, k, d)
            prior = np.einsum("bkd,bd->bk", cand, batch64).max(axis=1)
        within = batch64 @ batch64.T
        kept_here: list[int] = []  # positions in this batch
        for j, row in enumerate(rows):
            if len(selected) >= cap:
                break
            best = prior[j]
            if kept_here:
                best = max(best, within[j, kept_here].max())
            considered[row] = True
            if best != -np.inf:
                nearest[row] = best
            if best <= tau:
                selected_mask[row] = True
                selected.append(int(row))
                kept_here.append(j)
        if kept_here:
            index.add(batch[kept_here])
            kept64 = np.concatenate([kept64, batch64[kept_here]])

    return SelectionResult(
        selected=selected,
        selected_mask=selected_mask,
        rank=rank,
        considered=considered,
        nearest_kept_similarity=nearest,
        settings={
            "method": "deita-score-first-diverse",
            "similarity": "cosine (inner product of unit vectors)",
            "rule": "keep if max similarity to kept rows <= tau",
            "tau": float(tau),
            "budget": budget,
            "batch_size": batch_size,
            "normalize": normalize,
            "n": n,
            "n_selected": len(selected),
            "index": "faiss.IndexFlatIP (candidates) + float64 recheck",
        },
    )
