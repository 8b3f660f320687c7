"""The one priority order of roost: which row comes first when rows compete (dedup survivors,
selection). Highest score first; None and NaN count lowest; ties keep input order."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def priority_order(scores: Sequence[float | None] | np.ndarray | None, n: int | None = None) -> np.ndarray:
    """Row indices, best first. `scores=None` (no scores at all): input order of `n` rows."""
    if scores is None:
        return np.arange(n or 0, dtype=np.int64)
    values = np.array([np.nan if v is None else float(v) for v in scores], dtype=np.float64)
    if n is not None and len(values) != n:
        raise ValueError(f"{len(values)} scores for {n} rows")
    values[np.isnan(values)] = -np.inf
    return np.lexsort((np.arange(len(values)), -values)).astype(np.int64)


def priority_keys(priority: np.ndarray | None, n: int) -> np.ndarray:
    """The sort key that puts rows in `priority_order` (for sorts with other keys before it)."""
    if priority is None:
        return np.zeros(n)
    return -np.where(np.isnan(priority), -np.inf, priority)
