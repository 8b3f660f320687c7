"""Semantic (embedding) dedup: keep one row of each group of near-duplicates.

Semantics
---------
* Input: `embeddings` (n, d) float32 **unit** vectors (e.g. from `roost.embeddings.Embedder`),
  so similarity = inner product = cosine similarity. `ids` are unique row ids.
* Neighbours: every row searches its `k` nearest *other* rows. Self is excluded by row index,
  never by assuming the first hit is self: with exact duplicates the first hit may be a twin
  (distilabel's `FaissNearestNeighbour` drops hit 0 and gets this wrong). We search k+1 and drop
  the row's own index wherever it appears; if it does not appear, the first k hits are used.
* Duplicate pairs: (i, j) with similarity >= `threshold`, found from either side (the
  neighbour lists are made symmetric, so a pair found only from j's list still counts for i).
* Survivors, greedy in priority order (highest `score` first when scores are given, None/NaN
  lowest, ties by input order; without scores, input order): a row is **removed iff** it has a
  duplicate pair with a row that was already kept. Its `duplicate_of` is the most similar such
  kept row and `similarity` that similarity. Hence each kept row's group keeps exactly that
  one row, and two rows of a pair are never both removed (the later one is removed only
  because of a kept one). As in semhash / SemDeDup, this is not transitive closure: in a chain
  A~B~C with A, C dissimilar and A first, A is kept, B removed, C kept.
* Bit-identical vectors (e.g. the same text twice) are collapsed before the search: each such
  group is searched once through its best-priority member, and the others are removed as its
  duplicates (similarity 1.0). So a group of exact twins leaves one survivor whatever k is.
* Limit: only the k nearest neighbours are looked at; a row with more than k distinct rows
  above the threshold may miss some pairs (raise k for very repetitive data; run
  `exact_dedup` first).

Tags for every row (Magpie's diversity tags, `tags` of the result)
-------------------------------------------------------------------
* `nearest_id`, `nearest_similarity`: nearest other row and its cosine similarity.
* `min_neighbor_distance`: cosine distance 1 - nearest_similarity. Magpie (exp/gen_dis.py)
  stored the squared L2 distance of unit vectors, which is 2 * (1 - cos): multiply by 2 to
  compare with Magpie's published numbers.
* `repeat_count`: other rows with similarity >= threshold among the k searched (identical
  twins all count, plus the rows identical to each neighbour found).
  NaN / None / 0 for a dataset of one row.

Index
-----
`index="auto"`: exact `IndexFlatIP` up to `FLAT_MAX_ROWS` rows, else IVF-Flat (inner product,
spherical k-means, nlist = 4*sqrt(n)). For an approximate index (`"ivf"` or `"hnsw"`) the
search parameter (nprobe / efSearch) is *calibrated at build time*: a random sample of rows is
searched exactly, and the parameter is raised until the approximate index finds >=
`target_recall` (0.99) of the exact duplicate pairs (sim >= threshold within the exact top-k)
of that sample (one step further when the sample holds fewer than 500 pairs, since it cannot
resolve a 1% miss rate). Chosen parameter, measured recall and pair count go into `settings`.
GPU FAISS is used for flat and IVF when `faiss.get_num_gpus() > 0`. Search runs in batches of
`batch_size` queries; memory is the index (one copy of the embeddings) plus the pairs found.
`build_index` builds the index; `ReferenceIndex` searches one with outside queries (benchmark
decontamination: rows against benchmark items).
"""
from __future__ import annotations

import math
import time
from typing import Literal, Sequence

import numpy as np

from roost.filters.dedup_result import DedupResult
from roost.ranking import priority_order

# Exact all-pairs search costs ~2*n^2*d FLOP: measured 100-200 GFLOP/s on the 2-core dev
# machines, i.e. 50k rows ~15 s, 100k ~60 s, 1M ~2 h. IVF's calibration alone runs an exact search
# of up to 2e9 query*row comparisons (= flat all-pairs at ~45k rows), so below ~50k rows IVF
# cannot win; above it the gap grows as n (bench/bench_dedup.py).
FLAT_MAX_ROWS = 50_000

NPROBE_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
EF_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]


def _use_gpu(use_gpu: bool | None) -> bool:
    import faiss

    if use_gpu is not None:
        return use_gpu
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _neighbours(D: np.ndarray, I: np.ndarray, rows: np.ndarray, k: int):
    """Drop self (by index) and padding (-1) from a (b, k+1) result, keep at most k per row.

    Returns a mask over D/I of the kept entries (still in decreasing similarity order)."""
    valid = (I != rows[:, None]) & (I >= 0)
    valid &= np.cumsum(valid, axis=1) <= k
    return valid


def build_index(x: np.ndarray, kind: str, *, gpu: bool = False, seed: int = 0, nlist: int | None = None,
                hnsw_m: int = 32):
    """A FAISS inner-product index of kind flat / ivf / hnsw holding the unit rows `x`, and the
    settings that describe it. Semantic dedup searches it with its own rows, decontamination
    (`ReferenceIndex`) with outside queries. (roost.selection keeps its own incremental flat
    index: it adds rows one by one as they are selected.)"""
    import faiss

    n, d = x.shape
    settings: dict = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = int(nlist or max(1, round(4 * math.sqrt(n))))
        nlist = max(1, min(nlist, n // 39 if n >= 39 else 1))  # faiss wants >= 39 points/centroid
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.spherical = True
        index.cp.niter = 10
        index.cp.seed = seed
        n_train = min(n, 40 * nlist)
        index.cp.max_points_per_centroid = 40
        rng = np.random.default_rng(seed)
        train = x if n_train == n else x[np.sort(rng.choice(n, n_train, replace=False))]
        settings.update(nlist=nlist, train_rows=int(n_train), kmeans_iters=10)
        if gpu:
            index = faiss.index_cpu_to_all_gpus(index)
        index.train(train)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * hnsw_m)
        settings.update(hnsw_m=hnsw_m, ef_construction=index.hnsw.efConstruction)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    if gpu and kind == "flat":
        index = faiss.index_cpu_to_all_gpus(index)
    for s in range(0, n, 262_144):
        index.add(x[s:s + 262_144])
    return index, settings


class ReferenceIndex:
    """Nearest reference rows (e.g. benchmark items) for outside queries: `nearest(q)` ->
    (similarity, index) of each query's best reference row (-1 / NaN when there is none).

    Exact search (`build_index(kind="flat")`, GPU when one is visible): a reference set is
    small next to the rows it is checked against (GSM8K test 1.3k items, MMLU 14k), and 1M
    queries against 50k unit 384-d rows is ~4e13 FLOP, 3-6 minutes on 2 cores, well under the
    time it takes to embed those queries. There is no self to exclude: queries are not in it.
    """

    def __init__(self, x: np.ndarray, *, use_gpu: bool | None = None, batch_size: int = 8192):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"reference embeddings must be 2-D, got shape {x.shape}")
        self.n, self.d = x.shape
        self.batch_size = batch_size
        gpu = _use_gpu(use_gpu)
        t0 = time.perf_counter()
        self.index, extra = build_index(x, "flat", gpu=gpu) if self.n else (None, {})
        self.settings = {"index": "flat", "device": "gpu" if gpu else "cpu", "rows": self.n, "dim": self.d,
                         "similarity": "cosine (inner product of unit vectors)", **extra,
                         "build_seconds": round(time.perf_counter() - t0, 3)}

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        sim = np.full(len(q), np.nan, np.float32)
        idx = np.full(len(q), -1, np.int64)
        if not self.n or not len(q):
            return sim, idx
        if q.shape[1] != self.d:
            raise ValueError(f"queries have dimension {q.shape[1]}, the reference index {self.d}")
        for s in range(0, len(q), self.batch_size):
            D, I = self.index.search(q[s:s + self.batch_size], 1)
            idx[s:s + len(D)] = I[:, 0]
            sim[s:s + len(D)] = D[:, 0]
        sim = np.where(idx >= 0, np.clip(sim, -1.0, 1.0), np.nan).astype(np.float32)
        return sim, idx


class _Searcher:
    """Builds the index, calibrates its search parameter, searches in batches."""

    def __init__(self, x: np.ndarray, kind: str, k: int, threshold: float, target_recall: float,
                 use_gpu: bool, seed: int, nlist: int | None, hnsw_m: int,
                 calibration_queries: int | None, batch_size: int, min_pairs: int = 500):
        import faiss

        self.min_pairs = min_pairs
        self.faiss = faiss
        self.x = x
        self.n, self.d = x.shape
        self.kind = kind
        self.k = k
        self.kk = min(k + 1, self.n)
        self.threshold = threshold
        self.target_recall = target_recall
        self.gpu = use_gpu and kind != "hnsw"  # faiss has no GPU HNSW
        self.seed = seed
        self.batch_size = batch_size
        self.settings: dict = {"index": kind, "device": "gpu" if self.gpu else "cpu"}
        t0 = time.perf_counter()
        self.index = self._build(nlist, hnsw_m)
        self.settings["build_seconds"] = round(time.perf_counter() - t0, 3)
        if kind in ("ivf", "hnsw"):
            t0 = time.perf_counter()
            self._calibrate(calibration_queries)
            self.settings["calibrate_seconds"] = round(time.perf_counter() - t0, 3)

    # -- build -------------------------------------------------------------------------------
    def _build(self, nlist: int | None, hnsw_m: int):
        index, settings = build_index(self.x, self.kind, gpu=self.gpu, seed=self.seed, nlist=nlist, hnsw_m=hnsw_m)
        self.settings.update(settings)
        return index

    def _set_param(self, value: int) -> None:
        faiss = self.faiss
        ps = faiss.GpuParameterSpace() if self.gpu else faiss.ParameterSpace()
        name = "nprobe" if self.kind == "ivf" else "efSearch"
        ps.set_index_parameter(self.index, name, int(value))
        self.settings[name] = int(value)

    # -- calibrate ---------------------------------------------------------------------------
    def _calibrate(self, calibration_queries: int | None) -> None:
        """Raise nprobe/efSearch until the index finds target_recall of the exact pairs."""
        faiss, x, n = self.faiss, self.x, self.n
        # Exact search of q queries costs q*n*d: sample rows in chunks until the sample holds
        # `min_pairs` exact pairs or the cost reaches ~2e9 comparisons (~15 s on 2 cores).
        max_q = calibration_queries or int(min(n, 20_000, max(1_000, 2e9 // n)))
        max_q = min(n, max_q)
        rng = np.random.default_rng(self.seed + 1)
        perm = rng.permutation(n)[:max_q]
        exact = faiss.IndexFlatIP(self.d)
        if self.gpu:
            exact = faiss.index_cpu_to_all_gpus(exact)
        for s in range(0, n, 262_144):
            exact.add(x[s:s + 262_144])
        truth: set[tuple[int, int]] = set()
        q = 0
        while q < max_q and (calibration_queries or len(truth) < self.min_pairs):
            chunk = perm[q:q + 1_000]
            truth |= self._pairs(exact, chunk)
            q += len(chunk)
        qi = np.sort(perm[:q])
        del exact
        n_pairs = len(truth)
        if self.kind == "ivf":
            nlist = self.settings["nlist"]
            steps = [p for p in NPROBE_STEPS if p < nlist] + [nlist]
            # probe at least a few cells even when the sample has no pairs to measure
            fallback = min(nlist, 16)
        else:
            steps = [e for e in EF_STEPS if e >= self.kk] or [self.kk]
            fallback = max(64, self.kk)
        chosen, recall, tried = None, None, []
        if n_pairs == 0:
            chosen = fallback
        else:
            for p in steps:
                self._set_param(p)
                found = self._pairs(self.index, qi)
                recall = len(truth & found) / n_pairs
                tried.append((p, round(recall, 5)))
                if recall >= self.target_recall:
                    chosen = p
                    break
            if chosen is None:
                chosen = steps[-1]
            elif n_pairs < self.min_pairs and chosen != steps[-1]:
                # a small sample cannot resolve 1% misses: take one step more (cheap: the
                # coarse search, not the probed cells, dominates at small nprobe)
                chosen = steps[steps.index(chosen) + 1]
                self._set_param(chosen)
                recall = len(truth & self._pairs(self.index, qi)) / n_pairs
                tried.append((chosen, round(recall, 5)))
        self._set_param(chosen)
        self.settings.update(
            calibration_queries=int(q),
            calibration_pairs=int(n_pairs),
            measured_recall=None if recall is None else round(recall, 5),
            target_recall=self.target_recall,
            calibration_tried=tried,
        )

    def _pairs(self, index, qi: np.ndarray) -> set[tuple[int, int]]:
        out: set[tuple[int, int]] = set()
        for s in range(0, len(qi), self.batch_size):
            rows = qi[s:s + self.batch_size]
            D, I = index.search(self.x[rows], self.kk)
            m = _neighbours(D, I, rows, self.k) & (D >= self.threshold)
            r, c = np.nonzero(m)
            out.update(zip(rows[r].tolist(), I[r, c].tolist()))
        return out

    # -- search ------------------------------------------------------------------------------
    def search_all(self):
        """Nearest other row + sim, repeat count, and all pairs >= threshold, for every row."""
        n = self.n
        nearest = np.full(n, -1, dtype=np.int64)
        nearest_sim = np.full(n, np.nan, dtype=np.float32)
        repeat = np.zeros(n, dtype=np.int32)
        src, dst, sim = [], [], []
        t0 = time.perf_counter()
        for s in range(0, n, self.batch_size):
            rows = np.arange(s, min(n, s + self.batch_size))
            D, I = self.index.search(self.x[rows], self.kk)
            valid = _neighbours(D, I, rows, self.k)
            has = valid.any(axis=1)
            first = valid.argmax(axis=1)
            b = np.arange(len(rows))
            nearest[rows[has]] = I[b, first][has]
            nearest_sim[rows[has]] = D[b, first][has]
            dup = valid & (D >= self.threshold)
            repeat[rows] = dup.sum(axis=1)
            r, c = np.nonzero(dup)
            src.append(rows[r])
            dst.append(I[r, c])
            sim.append(D[r, c])
        self.settings["search_seconds"] = round(time.perf_counter() - t0, 3)
        cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
        return (nearest, np.clip(nearest_sim, -1.0, 1.0), repeat,
                cat(src, np.int64), cat(dst, np.int64), np.clip(cat(sim, np.float32), -1.0, 1.0))


def _greedy_keep(n: int, order: np.ndarray, src: np.ndarray, dst: np.ndarray, sim: np.ndarray):
    """Walk rows in priority order; remove a row iff a pair links it to an already-kept row."""
    # symmetric adjacency (CSR): a pair found from either side links both rows
    a = np.concatenate([src, dst])
    b = np.concatenate([dst, src])
    w = np.concatenate([sim, sim])
    perm = np.argsort(a, kind="stable")
    b, w = b[perm], w[perm]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(a, minlength=n), out=indptr[1:])

    keep = np.ones(n, dtype=bool)
    dup_of = np.full(n, -1, dtype=np.int64)
    dup_sim = np.full(n, np.nan, dtype=np.float32)
    state = np.zeros(n, dtype=np.int8)  # 0 not yet seen, 1 kept, 2 removed
    has_pairs = indptr[1:] > indptr[:-1]
    for i in order[has_pairs[order]].tolist():
        lo, hi = indptr[i], indptr[i + 1]
        nb = b[lo:hi]
        kept = state[nb] == 1
        if kept.any():
            ws = np.where(kept, w[lo:hi], -np.inf)
            j = int(np.argmax(ws))
            keep[i] = False
            dup_of[i] = nb[j]
            dup_sim[i] = ws[j]
            state[i] = 2
        else:
            state[i] = 1
    return keep, dup_of, dup_sim


def _identical_groups(x: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Group id per row; rows with bit-identical vectors share one (ids are 0..u-1)."""
    n, d = x.shape
    mult = np.random.default_rng(12345).integers(1, 2**63, d, dtype=np.uint64) | np.uint64(1)
    h = np.empty(n, np.uint64)
    for s in range(0, n, chunk):  # wrapping multiply-add hash of the float bits, by row chunks
        h[s:s + chunk] = (x[s:s + chunk].view(np.uint32).astype(np.uint64) * mult).sum(axis=1, dtype=np.uint64)
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.ravel().astype(np.int64)
    # a 64-bit collision between different vectors would merge them: check, split if so
    bad = np.concatenate([s + np.flatnonzero(~np.all(x[s:s + chunk] == x[first[inv[s:s + chunk]]], axis=1))
                          for s in range(0, n, chunk)])
    if len(bad):
        inv[bad] = inv.max() + 1 + np.arange(len(bad))
    # number groups by first occurrence, so that with no twins group id == row index
    _, first, inv = np.unique(inv, return_index=True, return_inverse=True)
    relabel = np.empty(len(first), np.int64)
    relabel[np.argsort(first, kind="stable")] = np.arange(len(first))
    return relabel[inv.ravel()]


def choose_index(n: int, index: IndexKind = "auto", flat_max_rows: int = FLAT_MAX_ROWS) -> str:
    if index != "auto":
        return index
    return "flat" if n <= flat_max_rows else "ivf"


def semantic_dedup(
    embeddings: np.ndarray,
    ids: Sequence[str],
    threshold: float = 0.9,
    scores: Sequence[float | None] | None = None,
    k: int = 16,
    index: IndexKind = "auto",
    *,
    target_recall: float = 0.99,
    flat_max_rows: int = FLAT_MAX_ROWS,
    nlist: int | None = None,
    hnsw_m: int = 32,
    calibration_queries: int | None = None,
    batch_size: int = 8192,
    use_gpu: bool | None = None,
    seed: int = 0,
) -> DedupResult:
    """Near-duplicate removal over unit `embeddings` (cosine >= `threshold`). See module doc."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {x.shape}")
    n, d = x.shape
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} embeddings")
    if len(set(ids)) != n:
        raise ValueError("ids must be unique")
    if k < 1:
        raise ValueError("k must be >= 1")
    if n:
        norms = np.linalg.norm(x[: min(n, 10_000)], axis=1)
        if np.abs(norms - 1).max() > 1e-3:
            raise ValueError("embeddings must be L2-normalised (unit rows); see roost.embeddings")
    order = priority_order(scores, n)
    settings = {"threshold": threshold, "k": k, "rows": n, "dim": d,
                "similarity": "cosine (inner product of unit vectors)",
                "priority": "score desc, then input order" if scores is not None else "input order"}
    empty = np.zeros(0, np.int64)
    if n <= 1:
        settings.update(index="none")
        return DedupResult(ids, np.ones(n, bool), [None] * n, [None] * n, "semantic_duplicate",
                           tags={"nearest_id": [None] * n,
                                 "nearest_similarity": np.full(n, np.nan, np.float32),
                                 "min_neighbor_distance": np.full(n, np.nan, np.float32),
                                 "repeat_count": np.zeros(n, np.int32)},
                           settings=settings, pairs=(empty, empty, np.zeros(0, np.float32)))

    # Identical vectors are collapsed first: each group is searched once, through its
    # best-priority member, so a group of twins larger than k cannot leave several survivors.
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    inv = _identical_groups(x)
    o = np.lexsort((rank, inv))  # rows grouped by vector, best first within a group
    starts = np.r_[0, np.flatnonzero(np.diff(inv[o])) + 1]
    best = o[starts]  # unique vector u -> its best row
    size = np.bincount(inv)
    second = np.where(size > 1, o[np.minimum(starts + 1, n - 1)], -1)
    u_n = len(best)
    settings["identical_rows_collapsed"] = int(n - u_n)
    xu = x[best] if u_n < n else x  # no twins: u == row, best == arange(n)

    kind = choose_index(u_n, index, flat_max_rows)
    if u_n == 1:
        nearest_u = np.full(1, -1, np.int64)
        nearest_sim_u = np.full(1, np.nan, np.float32)
        src, dst, sim = empty, empty, np.zeros(0, np.float32)
        settings.update(index="none")
    else:
        searcher = _Searcher(xu, kind, k, threshold, target_recall, _use_gpu(use_gpu), seed, nlist,
                             hnsw_m, calibration_queries, batch_size)
        nearest_u, nearest_sim_u, _, src, dst, sim = searcher.search_all()
        settings.update(searcher.settings)
    t0 = time.perf_counter()
    keep_u, dup_u, dup_sim_u = _greedy_keep(u_n, np.argsort(rank[best], kind="stable"), src, dst, sim)

    # back from unique vectors to rows
    is_best = np.zeros(n, bool)
    is_best[best] = True
    ku = keep_u[inv]
    keep = ku & is_best
    dup_row = np.where(ku, best[inv], best[np.maximum(dup_u, 0)][inv])  # kept row each row duplicates
    dup_sim = np.where(ku, np.float32(1.0), dup_sim_u[inv])
    twin = size[inv] > 1
    near_row = np.where(is_best, second[inv], best[inv])
    near_row = np.where(twin, near_row, np.where(nearest_u[inv] >= 0, best[np.maximum(nearest_u, 0)][inv], -1))
    near_sim = np.where(twin, np.float32(1.0), nearest_sim_u[inv]).astype(np.float32)
    # rows with sim >= threshold among the k searched (a unique neighbour counts with its twins)
    repeat_u = np.bincount(src, weights=size[dst], minlength=u_n).astype(np.int64)
    repeat = (repeat_u[inv] + size[inv] - 1).astype(np.int32)
    settings["select_seconds"] = round(time.perf_counter() - t0, 3)
    settings["index"] = settings.get("index", kind)
    settings["pairs_found"] = int(len(src))

    duplicate_of = [None if kp else ids[j] for kp, j in zip(keep.tolist(), dup_row.tolist())]
    similarity = [None if kp else float(v) for kp, v in zip(keep.tolist(), dup_sim.tolist())]
    tags = {
        "nearest_id": [None if j < 0 else ids[j] for j in near_row.tolist()],
        "nearest_similarity": near_sim,
        "min_neighbor_distance": (1.0 - near_sim).astype(np.float32),
        "repeat_count": repeat,
    }
    src, dst = best[src], best[dst]
    return DedupResult(ids, keep, duplicate_of, similarity, "semantic_duplicate", tags=tags,
                       settings=settings, pairs=(src, dst, sim))
