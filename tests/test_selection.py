"""deita score-first diversity selection: real FAISS, no mocks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from roost.algorithms.selection import score_order, select_diverse


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n: int, d: int, n_centers: int, noise: float, seed: int) -> np.ndarray:
    """Rows near a few centers, so that many pairs are above tau and many below."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_centers, d))
    x = centers[rng.integers(0, n_centers, n)] + noise * rng.normal(size=(n, d))
    return _unit(x)


def _reference_greedy(emb, scores, budget, tau):
    """The paper's Algorithm 1, written the plain way: O(n * |S|), float64."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i))
    kept: list[int] = []
    for i in order:
        if budget is not None and len(kept) >= budget:
            break
        if all(float(np.dot(emb[i].astype(np.float64), emb[k].astype(np.float64))) <= tau for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_equals_sequential_greedy(seed):
    emb = _clustered(1500, 32, 40, 0.45, seed)
    rng = np.random.default_rng(seed)
    scores = list(rng.integers(0, 50, len(emb)).astype(float))  # many ties on purpose
    for i in rng.choice(len(emb), 60, replace=False):
        scores[i] = None
    sequential = select_diverse(emb, scores, budget=None, tau=0.9, batch_size=1)
    reference = _reference_greedy(emb, scores, None, 0.9)
    assert sequential.selected == reference
    assert 50 < len(reference) < len(emb) - 50  # the threshold really bites
    for bs in (7, 64, 333, 1024, 5000):
        batched = select_diverse(emb, scores, budget=None, tau=0.9, batch_size=bs)
        assert batched.selected == sequential.selected, bs
        np.testing.assert_array_equal(batched.selected_mask, sequential.selected_mask)
        np.testing.assert_allclose(
            batched.nearest_kept_similarity, sequential.nearest_kept_similarity, atol=1e-12, equal_nan=True
        )


def test_rejected_row_in_batch_does_not_block_later_rows():
    """deita's batch bug: a row rejected earlier in the same batch blocked later rows."""
    a = np.array([1.0, 0.0, 0.0])
    b = _unit(np.array([[1.0, 0.3, 0.0]]))[0]  # close to a: rejected
    # c is close to b (rejected) but not to a (kept): c must be kept.
    c = _unit(np.array([[1.0, 0.9, 0.0]]))[0]
    emb = np.stack([a, b, c]).astype(np.float32)
    assert np.dot(a, b) > 0.9 and np.dot(b, c) > 0.9 and np.dot(a, c) <= 0.9
    for bs in (1, 3):
        result = select_diverse(emb, [3.0, 2.0, 1.0], budget=None, tau=0.9, batch_size=bs)
        assert result.selected == [0, 2]


def test_tau_is_a_similarity_threshold():
    base = np.array([1.0, 0.0])

    def at(sim):
        return np.array([sim, math.sqrt(1 - sim * sim)])

    emb = np.stack([base, at(0.95), at(0.85)]).astype(np.float32)
    result = select_diverse(emb, [3.0, 2.0, 1.0], budget=None, tau=0.9)
    assert result.selected == [0, 2]  # 0.95 > tau is dropped, 0.85 <= tau is kept
    assert math.isnan(result.nearest_kept_similarity[0])  # nothing kept before the first
    assert result.nearest_kept_similarity[1] == pytest.approx(0.95, abs=1e-6)
    assert result.nearest_kept_similarity[2] == pytest.approx(0.85, abs=1e-6)
    assert result.row(0)["nearest_kept_similarity"] is None
    # rows 1 and 2 are at similarity ~0.972 from each other
    assert select_diverse(emb, [3.0, 2.0, 1.0], budget=None, tau=0.96).selected == [0, 1]
    assert select_diverse(emb, [3.0, 2.0, 1.0], budget=None, tau=0.98).selected == [0, 1, 2]
    assert select_diverse(emb, [3.0, 2.0, 1.0], budget=None, tau=0.8).selected == [0]


def test_budget_stops_and_marks_unconsidered_rows():
    emb = _unit(np.eye(10, dtype=np.float32))  # all orthogonal: everything passes
    scores = [float(i) for i in range(10)]
    result = select_diverse(emb, scores, budget=3, batch_size=2)
    assert result.selected == [9, 8, 7]
    assert result.considered.sum() == 3
    assert not result.considered[6] and result.row(6)["nearest_kept_similarity"] is None
    assert select_diverse(emb, scores, budget=0).selected == []
    assert len(select_diverse(emb, scores, budget=None).selected) == 10
    assert result.settings["budget"] == 3 and result.settings["tau"] == 0.9


def test_nulls_last_and_stable_ties():
    emb = _unit(np.eye(6, dtype=np.float32))
    scores = [None, 2.0, float("nan"), 2.0, 5.0, 2.0]
    result = select_diverse(emb, scores, budget=None)
    assert result.selected == [4, 1, 3, 5, 0, 2]
    assert list(score_order(scores)) == [4, 1, 3, 5, 0, 2]
    assert list(result.rank) == [4, 1, 5, 2, 0, 3]


def test_rejects_non_unit_embeddings_unless_normalize():
    emb = np.array([[3.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    with pytest.raises(ValueError, match="unit"):
        select_diverse(emb, [1.0, 2.0], budget=None)
    assert select_diverse(emb, [1.0, 2.0], budget=None, normalize=True).selected == [1, 0]
