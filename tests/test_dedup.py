"""Exact and semantic dedup on real FAISS and the real all-MiniLM-L6-v2 embeddings."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from roost.algorithms.exact_dedup import exact_dedup, normalize_text
from roost.algorithms.semantic_dedup import FLAT_MAX_ROWS, semantic_dedup
from roost.dataset.rows import Columns, Shape, parse


def chat(user: str, assistant: str = "ok", id: str | None = None) -> dict:
    row = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}
    if id is not None:
        row["id"] = id
    return row


def keys(rows: list[dict], view: str) -> list[str]:
    out = []
    for r in rows:
        parsed, problem = parse(r, Shape("messages") if "messages" in r else Shape("pair", Columns(prompt="instruction", response="response")))
        assert problem is None
        out.append(parsed.view(view))
    return out


# ---------------------------------------------------------------- exact ---------------------

def test_normalize_text():
    assert normalize_text("  Héllo\u00a0 WORLD\n\t!  ") == "héllo world !"
    assert normalize_text("ＡＢＣ ﬁle") == "abc file"  # NFKC: fullwidth letters, ligature
    assert normalize_text("Straße") == "strasse"  # casefold, not lower
    assert normalize_text(None) == ""


def test_exact_groups_first_wins_without_scores():
    rows = [chat("What is X?", id="a"), chat("what  is x?", id="b"), chat("Other", id="c"),
            chat("WHAT IS X?\n", id="d"), chat("other", id="e")]
    r = exact_dedup(keys(rows, "first_instruction"), [row["id"] for row in rows])
    assert r.keep.tolist() == [True, False, True, False, False]
    assert r.duplicate_of == [None, "a", None, "a", "c"]
    assert r.duplicate_index.tolist() == [-1, 0, -1, 0, 2]  # the same links as positions
    assert r.similarity == [None, 1.0, None, 1.0, 1.0]
    assert r.tags["exact_group_size"].tolist() == [3, 3, 2, 3, 2]
    assert r.kept_ids() == ["a", "c"]
    assert r.duplicates_by_kept() == {"a": [("b", 1.0), ("d", 1.0)], "c": [("e", 1.0)]}
    rej = r.rejects(rows, stage="exact_dedup")
    assert [(x.id, x.reason, x.duplicate_of, x.stage) for x in rej] == [
        ("b", "exact_duplicate", "a", "exact_dedup"), ("d", "exact_duplicate", "a", "exact_dedup"),
        ("e", "exact_duplicate", "c", "exact_dedup")]
    assert rej[0].record is rows[1]
    assert r.summary()["removed"] == 3 and r.summary()["kept"] == 2


def test_exact_highest_score_wins_ties_by_order_none_lowest():
    keys = ["q"] * 4 + ["p"] * 2
    ids = ["0", "1", "2", "3", "4", "5"]
    r = exact_dedup(keys, ids, scores=[0.1, 0.9, None, 0.9, None, 0.2])
    assert r.keep.tolist() == [False, True, False, False, False, True]
    assert r.duplicate_of == ["1", None, "1", "1", "5", None]
    # all None: input order decides
    r = exact_dedup(["q", "q"], ["x", "y"], scores=[None, None])
    assert r.keep.tolist() == [True, False]


def test_exact_key_views():
    rows = [chat("Same question", "answer one"), chat("same question", "answer two"),
            {"instruction": "Same  question", "response": "answer one"}]
    assert [normalize_text(k) for k in keys(rows, "first_instruction")] == ["same question"] * 3
    conv = exact_dedup(keys(rows, "conversation"), ["0", "1", "2"])
    assert conv.keep.tolist() == [True, True, False]  # flat row == first chat row
    first = exact_dedup(keys(rows, "first_instruction"), ["0", "1", "2"])
    assert first.keep.tolist() == [True, False, False]
    with pytest.raises(ValueError):
        keys(rows, "nope")


# ---------------------------------------------------------------- semantic: real embeddings -

SENTENCES = [
    "How do I reverse a list in Python?",          # 0  group A (kept)
    "How can I reverse a list in Python?",         # 1  A
    "What's the way to reverse a Python list?",    # 2  A
    "What is the capital of France?",              # 3  group B (kept)
    "What's the capital city of France?",          # 4  B
    "Which city is the capital of France?",        # 5  B
    "Write a haiku about autumn leaves.",          # 6
    "Explain how photosynthesis works.",           # 7  group C (kept)
    "Give me a recipe for banana bread.",          # 8
    "How do I sort a dictionary by value in Python?",  # 9 (related to A, not a paraphrase)
    "What are the health benefits of green tea?",  # 10
    "Translate 'good morning' into Spanish.",      # 11
    "Explain how photosynthesis works in plants.",  # 12 C
    "Tell me how photosynthesis works.",           # 13 C
    "What is the capital of France?",              # 14 exact duplicate of 3
]
GROUP = {0: "A", 1: "A", 2: "A", 3: "B", 4: "B", 5: "B", 14: "B", 7: "C", 12: "C", 13: "C"}


@pytest.fixture(scope="module")
def embedder():
    from roost.engines.embeddings import Embedder

    return Embedder()


@pytest.fixture(scope="module")
def emb(embedder):
    return embedder.encode(SENTENCES)


def test_embedder_contract(embedder, emb):
    assert emb.dtype == np.float32 and emb.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    d = embedder.describe()
    assert d["dim"] == 384
    assert d["device"] in ("cpu", "cuda")
    assert "minilm" in d["model"].lower()
    streamed = np.concatenate(list(embedder.encode_batches([SENTENCES[:4], SENTENCES[4:]])))
    np.testing.assert_allclose(streamed, emb, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def check_invariants(r, x, threshold):
    """Keep-one rule checked against the full similarity matrix: a removed row names a kept row
    it duplicates (so two rows are never removed because of each other), and no two kept rows
    are duplicates (holds here because every group is smaller than k)."""
    sim = x @ x.T
    for i in r.removed_indices():
        j = r.ids.index(r.duplicate_of[i])
        assert r.keep[j], "duplicate_of must name a kept row"
        assert sim[i, j] >= threshold - 1e-5
        assert abs(r.similarity[i] - sim[i, j]) < 1e-4
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            if sim[i, j] >= threshold:
                assert not (r.keep[i] and r.keep[j]), f"both of pair {i},{j} kept"


def test_semantic_paraphrases_one_per_group(emb):
    ids = [f"r{i}" for i in range(len(SENTENCES))]
    r = semantic_dedup(emb, ids, threshold=0.9)
    assert r.settings["index"] == "flat"
    kept = set(r.kept_indices().tolist())
    assert kept == {0, 3, 6, 7, 8, 9, 10, 11}
    assert [r.duplicate_of[i] for i in (1, 2, 4, 5, 14, 12, 13)] == ["r0", "r0", "r3", "r3", "r3", "r7", "r7"]
    assert [ids[j] if j >= 0 else None for j in r.duplicate_index] == r.duplicate_of  # the same links as positions
    assert [ids[j] if j >= 0 else None for j in r.nearest_index] == r.tags["nearest_id"]
    for i in r.removed_indices():
        assert GROUP[i] == GROUP[int(r.duplicate_of[i][1:])]
    check_invariants(r, emb, 0.9)
    # the exact duplicate is found with similarity ~1, and does not break self-exclusion
    assert r.similarity[14] > 0.999
    assert r.tags["nearest_id"][3] == "r14" and r.tags["nearest_id"][14] == "r3"
    # tags for every row
    assert all(t is not None for t in r.tags["nearest_id"])
    assert all(r.tags["nearest_id"][i] != ids[i] for i in range(len(ids)))
    np.testing.assert_allclose(r.tags["min_neighbor_distance"], 1 - r.tags["nearest_similarity"], atol=1e-6)
    sim = emb @ emb.T - 2 * np.eye(len(emb))
    np.testing.assert_allclose(r.tags["nearest_similarity"], sim.max(axis=1), atol=1e-5)
    assert r.tags["repeat_count"].tolist() == [int((sim[i] >= 0.9).sum()) for i in range(len(emb))]
    assert r.tags["repeat_count"][3] == 3 and r.tags["repeat_count"][6] == 0
    rej = r.rejects([{"text": s} for s in SENTENCES], stage="semantic_dedup")
    assert len(rej) == 7 and all(x.reason == "semantic_duplicate" for x in rej)
    assert rej[0].id == "r1" and rej[0].duplicate_of == "r0" and "similarity=" in rej[0].detail
    assert r.row_tags(6)["repeat_count"] == 0


def test_semantic_scores_choose_survivor(emb):
    ids = [f"r{i}" for i in range(len(SENTENCES))]
    scores = [None] * len(SENTENCES)
    scores[2] = 5.0   # best of group A
    scores[13] = 1.0  # best of group C
    r = semantic_dedup(emb, ids, threshold=0.9, scores=scores)
    kept = set(r.kept_indices().tolist())
    assert {2, 13} <= kept and not ({0, 1, 7, 12} & kept)
    assert r.duplicate_of[0] == "r2" and r.duplicate_of[12] == "r13"
    check_invariants(r, emb, 0.9)


def test_self_excluded_by_index_not_by_rank():
    """distilabel's lesson: the first hit is not always self. Here it is second."""
    from roost.algorithms.semantic_dedup import _neighbours

    D = np.array([[1.0, 1.0, 0.5], [1.0, 0.9, 0.2]], np.float32)
    I = np.array([[7, 3, 9], [5, 2, 8]])
    m = _neighbours(D, I, np.array([3, 4]), k=2)
    assert m.tolist() == [[True, False, True], [True, True, False]]


def test_exact_twins_more_than_k_leave_one_survivor():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((20, 32)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    x = np.concatenate([base[1:4], np.repeat(base[:1], 6, axis=0), base[4:]])  # rows 3..8 identical
    ids = [f"id{i}" for i in range(len(x))]
    scores = [0.0] * len(x)
    scores[6] = 1.0  # best twin is not the first one
    r = semantic_dedup(x, ids, threshold=0.95, k=3, scores=scores)
    assert r.keep[3:9].tolist() == [False, False, False, True, False, False]
    assert r.duplicate_of[3:9] == ["id6"] * 3 + [None] + ["id6"] * 2
    assert r.settings["identical_rows_collapsed"] == 5
    for i in range(3, 9):
        assert r.tags["nearest_id"][i] != ids[i] and r.tags["nearest_id"][i] in ids[3:9]
        assert r.tags["repeat_count"][i] == 5
        assert r.tags["nearest_similarity"][i] == 1.0
    assert r.keep[:3].all() and r.keep[9:].all()


def test_near_identical_rows_self_exclusion_end_to_end():
    """Vectors equal up to float noise (not collapsed): nearest is never the row itself."""
    rng = np.random.default_rng(2)
    base = rng.standard_normal((1, 48)).astype(np.float32)
    x = base + 1e-6 * rng.standard_normal((8, 48)).astype(np.float32)
    x = np.concatenate([x, rng.standard_normal((30, 48)).astype(np.float32)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"n{i}" for i in range(len(x))]
    r = semantic_dedup(x, ids, threshold=0.95, k=8)
    assert r.settings["identical_rows_collapsed"] == 0
    assert r.keep[:8].tolist() == [True] + [False] * 7
    assert all(r.tags["nearest_id"][i] != ids[i] for i in range(len(x)))
    assert r.tags["repeat_count"][:8].tolist() == [7] * 8


def reference_greedy(x, threshold, order):
    sim = x @ x.T
    n = len(x)
    keep, dup = np.zeros(n, bool), [None] * n
    done = []
    for i in order:
        cands = [j for j in done if keep[j] and sim[i, j] >= threshold]
        if cands:
            dup[i] = max(cands, key=lambda j: sim[i, j])
        else:
            keep[i] = True
        done.append(i)
    return keep, dup


def test_semantic_matches_bruteforce_reference_on_chains():
    """Clustered data with chains; with k = n-1 the result must equal a brute-force greedy."""
    rng = np.random.default_rng(1)
    c = rng.standard_normal((15, 24)).astype(np.float32)
    x = c[rng.integers(0, 15, 300)] + 0.25 * rng.standard_normal((300, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [str(i) for i in range(300)]
    scores = rng.random(300).tolist()
    for sc in (None, scores):
        order = np.arange(300) if sc is None else np.lexsort((np.arange(300), -np.array(sc)))
        r = semantic_dedup(x, ids, threshold=0.9, k=299, scores=sc)
        keep, dup = reference_greedy(x, 0.9, order)
        assert 20 < (~keep).sum() < 290  # the data has real duplicates and real survivors
        assert r.keep.tolist() == keep.tolist()
        assert r.duplicate_of == [None if d is None else str(d) for d in dup]


# ---------------------------------------------------------------- approximate index ---------

def planted(n: int, d: int = 64, dup_frac: float = 0.06, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors plus planted near-duplicate pairs (cosine ~0.88-0.99)."""
    rng = np.random.default_rng(seed)
    n_pairs = int(n * dup_frac / 2)
    n_base = n - n_pairs
    c = rng.standard_normal((max(10, n // 200), d), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, len(c), n_base)] + 1.2 * rng.standard_normal((n_base, d), dtype=np.float32) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = rng.uniform(0.88, 0.99, n_pairs).astype(np.float32)
    tau = np.sqrt(1 / s**2 - 1)
    y = x[rng.choice(n_base, n_pairs, replace=False)] + tau[:, None] * rng.standard_normal((n_pairs, d), dtype=np.float32) / np.sqrt(d)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return np.concatenate([x, y])[rng.permutation(n)].astype(np.float32)


def pair_recall_vs_flat(x, r, threshold, k, n_queries, seed=0):
    import faiss

    rng = np.random.default_rng(seed)
    q = rng.choice(len(x), n_queries, replace=False)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    D, I = flat.search(x[q], k + 1)
    truth = {(int(a), int(b)) for a, row_d, row_i in zip(q, D, I)
             for s, b in zip(row_d, row_i) if b != a and s >= threshold}
    src, dst, _ = r.pairs
    found = set(zip(src.tolist(), dst.tolist()))
    found |= {(b, a) for a, b in found}
    return len(truth & found) / len(truth), len(truth)


def test_ivf_auto_reaches_recall_of_flat():
    n = FLAT_MAX_ROWS + 10_000
    x = planted(n)
    ids = [str(i) for i in range(n)]
    r = semantic_dedup(x, ids, threshold=0.9, k=16)
    s = r.settings
    assert s["index"] == "ivf" and s["nprobe"] >= 1 and s["nlist"] >= 4 * int(np.sqrt(n))
    assert s["calibration_pairs"] >= 100 and s["measured_recall"] >= 0.99
    recall, n_pairs = pair_recall_vs_flat(x, r, 0.9, 16, 4000, seed=7)
    assert n_pairs > 50
    assert recall >= 0.99, (recall, s)
    # a kept row never has a found pair with another kept row; removed rows point at kept rows
    src, dst, _ = r.pairs
    assert not (r.keep[src] & r.keep[dst]).any()
    kept_idx = {v: i for i, v in enumerate(ids)}
    assert all(r.keep[kept_idx[d]] for d in r.duplicate_of if d is not None)


def test_nprobe_one_misses_pairs_so_calibration_matters():
    """The calibration is not vacuous: the cheapest setting loses pairs on this data."""
    x = planted(FLAT_MAX_ROWS + 10_000, seed=3)
    ids = [str(i) for i in range(len(x))]
    r = semantic_dedup(x, ids, threshold=0.9)
    tried = dict(r.settings["calibration_tried"])
    assert tried[1] < 0.99  # nprobe 1 really loses pairs here...
    assert r.settings["nprobe"] > 1 and r.settings["measured_recall"] >= 0.99  # ...so calibration raised it


def test_hnsw_calibrated():
    x = planted(6000, seed=5)
    ids = [str(i) for i in range(len(x))]
    r = semantic_dedup(x, ids, threshold=0.9, index="hnsw")
    assert r.settings["index"] == "hnsw" and r.settings["measured_recall"] >= 0.99
    recall, _ = pair_recall_vs_flat(x, r, 0.9, 16, 2000)
    assert recall >= 0.99


def test_ivf_self_join_100k_384d_recall_and_flat_semantics():
    """The CPU IVF path (k-means cells, every row joined with the members of its nprobe cells by
    BLAS) at 100k x 384: >= 0.99 of the exact pairs of 3,000 sampled rows, and every reported
    pair / nearest similarity is the true cosine of those two rows."""
    n = 100_000
    x = planted(n, d=384, dup_frac=0.05, seed=11)
    ids = [str(i) for i in range(n)]
    r = semantic_dedup(x, ids, threshold=0.9, k=16)
    s = r.settings
    assert s["index"] == "ivf" and s["nlist"] == round(4 * np.sqrt(n)) and "join_seconds" in s
    assert s["measured_recall"] >= 0.99
    recall, n_pairs = pair_recall_vs_flat(x, r, 0.9, 16, 3000, seed=5)
    assert n_pairs > 50 and recall >= 0.99, (recall, n_pairs, s)
    src, dst, sim = r.pairs
    np.testing.assert_allclose(sim, np.einsum("ij,ij->i", x[src], x[dst]), atol=1e-5)
    assert (sim >= 0.9).all() and not (src == dst).any()
    near = np.array([int(v) for v in r.tags["nearest_id"]])
    np.testing.assert_allclose(r.tags["nearest_similarity"], np.einsum("ij,ij->i", x, x[near]), atol=1e-5)
    assert (near != np.arange(n)).all()


def test_ivf_self_join_equals_a_bruteforce_join_of_the_same_cells():
    """ivf_self_join against the plain statement: row i is compared with every member of its
    probed cells; pairs >= threshold, the k most similar per row; nearest = best of those."""
    from roost.algorithms.semantic_dedup import ivf_self_join

    rng = np.random.default_rng(4)
    x = planted(3000, d=16, dup_frac=0.2, seed=4)
    nlist, p, k = 12, 3, 2
    cells = np.stack([rng.permutation(nlist)[:p] for _ in range(len(x))]).astype(np.int32)
    nearest, nearest_sim, src, dst, sim = ivf_self_join(x, cells, nlist, 0.8, k)
    own = cells[:, 0]
    want_pairs = set()
    for i in range(len(x)):
        cand = np.flatnonzero(np.isin(own, cells[i]) & (np.arange(len(x)) != i))
        s_ = x[cand] @ x[i]
        if len(cand):
            assert nearest[i] == cand[np.argmax(s_)] and abs(nearest_sim[i] - s_.max()) < 1e-5
        o = np.argsort(-s_, kind="stable")[:k]
        want_pairs |= {(i, int(cand[j])) for j in o if s_[j] >= 0.8}
    assert set(zip(src.tolist(), dst.tolist())) == want_pairs
