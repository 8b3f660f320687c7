"""Semantic (embedding) dedup: keep one row of each group of near-duplicates.

Semantics
---------
* Input: `embeddings` (n, d) float32 **unit** vectors (e.g. from `roost.engines.embeddings.Embedder`),
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
`index="auto"`: exact `IndexFlatIP` up to `FLAT_MAX_ROWS` rows, else IVF (inner product,
spherical k-means, nlist = 4*sqrt(n)). For an approximate index (`"ivf"` or `"hnsw"`) the
search parameter (nprobe / efSearch) is *calibrated at build time*: a random sample of rows is
searched exactly, and the parameter is raised until the approximate index finds >=
`target_recall` (0.99) of the exact duplicate pairs (sim >= threshold within the exact top-k)
of that sample (one step further when the sample holds fewer than 500 pairs, since it cannot
resolve a 1% miss rate). Chosen parameter, measured recall and pair count go into `settings`.

IVF on CPU is a *self-join by cell*, not a FAISS `IndexIVFFlat.search`: the queries are the
rows themselves, so every row's top-nprobe cells are computed once (its own cell = the first),
and each cell's members are compared with all rows probing that cell in one BLAS matrix product
(FAISS' `big_batch_search` idea: a per-query IVF scan streams nprobe cells from memory for
every query at a few GFLOP/s; a GEMM per cell runs at the machine's matmul rate). Candidates are
exactly those of an IVF search with the same centroids and nprobe: a row sees the members of
its nprobe nearest cells. The calibration needs no trial searches: an exact pair (q, j) is
found at nprobe p iff j's cell ranks < p among q's centroids or q's cell among j's (every row
is a query, and a pair found from either side links both rows), so one exact search of the
sample gives the recall of every p. When the sample holds fewer than 500 pairs and doubling it
costs under half the join at the nprobe it chose, the sample is doubled and nprobe
chosen again (a few hard pairs of a small sample would otherwise set it). Nothing is copied
into an index (memory: the embeddings, an (n, nprobe) cell table and the pairs). Rows with more than k hits >= threshold keep their k
most similar, as a top-k search would.

GPU FAISS is used for flat and IVF when `faiss.get_num_gpus() > 0` (IVF: the same centroids and
nprobe in a GPU `IndexIVFFlat`; not exercised here, the project's machines have no GPU).
Search runs in batches of `batch_size` queries.
`build_index` builds a FAISS index; `ReferenceIndex` searches one with outside queries
(benchmark decontamination: rows against benchmark items).
"""
from __future__ import annotations

import math
import os
import time
from typing import Literal, Sequence

import numpy as np

from roost.algorithms.dedup_result import DedupResult
from roost.algorithms.ranking import priority_order

# Exact all-pairs search costs ~2*n^2*d FLOP: measured 100-200 GFLOP/s on the 2-core dev
# machines, i.e. 50k rows ~15 s, 100k ~60 s, 1M ~2 h. IVF's calibration alone runs an exact search
# of up to 1e9 query*row comparisons (= flat all-pairs at ~32k rows), plus k-means and the
# assignment, so below ~50k rows IVF cannot win by much; above it the gap grows as n
# (bench/bench_dedup.py).
FLAT_MAX_ROWS = 50_000

NPROBE_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
EF_STEPS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)

# IVF. The self-join costs ~n*d*(nlist + nprobe*n/nlist) multiply-adds (assignment + cell
# products) and k-means IVF_TRAIN_PER_CENTROID*nlist*nlist*d per iteration. With the products
# done by BLAS the scan is cheap, so what decides is how few cells a pair straddles: on
# bench_dedup's 1M clustered rows (5,000 clusters) nlist = sqrt(n) needed nprobe 24 for 0.99
# recall, 2*sqrt(n) nprobe 8-12, 4*sqrt(n) nprobe 2-3. A well-trained k-means matters as much:
# at 4*sqrt(n), 40 points per centroid and 10 iterations gave 0.996 recall at nprobe 1, 5
# iterations 0.98, 16 points x 8 iterations 0.977 (and 0.992 only at nprobe 6).
IVF_NLIST_PER_SQRT_N = 4.0
IVF_TRAIN_PER_CENTROID = 40  # faiss wants >= 39
IVF_KMEANS_ITERS = 6
IVF_NO_PAIRS_NPROBE = 8  # when the calibration sample holds no duplicate pair to measure
_BLOCK_ELEMENTS = 1 << 22  # similarity block of a cell product: 16 MB of float32

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]


def _use_gpu(use_gpu: bool | None) -> bool:
    import faiss

    if use_gpu is not None:
        return use_gpu
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _n_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _parallel(fn, items, threads: int | None = None) -> list:
    """`[fn(i) for i in items]` on a thread pool with single-threaded BLAS in each thread: many
    mid-sized matrix products run faster side by side than one after another on all cores."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    threads = threads or _n_threads()
    if threads == 1:
        return [fn(i) for i in items]
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as ex:
        return list(ex.map(fn, items))


def _neighbours(D: np.ndarray, I: np.ndarray, rows: np.ndarray, k: int):
    """Drop self (by index) and padding (-1) from a (b, k+1) result, keep at most k per row.

    Returns a mask over D/I of the kept entries (still in decreasing similarity order)."""
    valid = (I != rows[:, None]) & (I >= 0)
    valid &= np.cumsum(valid, axis=1) <= k
    return valid


def ivf_nlist(n: int, nlist: int | None = None) -> int:
    """Number of IVF cells for n rows (default 4*sqrt(n)), capped at n/39 (faiss' k-means floor)."""
    nlist = int(nlist or max(1, round(IVF_NLIST_PER_SQRT_N * math.sqrt(n))))
    return max(1, min(nlist, n // 39 if n >= 39 else 1))


def train_centroids(x: np.ndarray, nlist: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Spherical k-means (faiss) on a sample of IVF_TRAIN_PER_CENTROID rows per centroid:
    (nlist, d) unit centroids and the settings that describe the training."""
    import faiss

    n, d = x.shape
    n_train = min(n, IVF_TRAIN_PER_CENTROID * nlist)
    rng = np.random.default_rng(seed)
    train = x if n_train == n else x[np.sort(rng.choice(n, n_train, replace=False))]
    cp = faiss.ClusteringParameters()
    cp.spherical = True
    cp.niter = IVF_KMEANS_ITERS
    cp.seed = seed
    cp.max_points_per_centroid = max(IVF_TRAIN_PER_CENTROID, -(-n_train // nlist))  # no second subsample
    clus = faiss.Clustering(d, nlist, cp)
    clus.train(np.ascontiguousarray(train), faiss.IndexFlatIP(d))
    c = faiss.vector_to_array(clus.centroids).reshape(nlist, d).astype(np.float32)
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return c, {"nlist": nlist, "train_rows": int(n_train), "kmeans_iters": IVF_KMEANS_ITERS}


def top_cells(x: np.ndarray, centroids: np.ndarray, p: int, chunk: int = 65_536) -> np.ndarray:
    """(n, p) int32: each row's p most similar centroids, most similar first (a FAISS flat search
    over the centroids: BLAS plus its own top-k, faster than numpy's argpartition here)."""
    import faiss

    n, nlist = len(x), len(centroids)
    p = min(p, nlist)
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    out = np.empty((n, p), np.int32)
    for s in range(0, n, chunk):
        out[s:s + chunk] = index.search(x[s:s + chunk], p)[1]
    return out


def _cell_rank(q: np.ndarray, j: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Rank of each j's own cell among its q's centroids, most similar first (0 = q's own)."""
    cell_j = top_cells(j, centroids, 1)[:, 0]
    sim = q @ centroids.T
    return (sim > sim[np.arange(len(q)), cell_j][:, None]).sum(axis=1)


def ivf_self_join(x: np.ndarray, cells: np.ndarray, nlist: int, threshold: float, k: int):
    """Every row against the members of its probed cells (`cells[:, 0]` = the row's own cell).

    Returns nearest (n,) row or -1, nearest_sim (n,) (NaN when none), and the pairs (src, dst,
    sim) with sim >= threshold, at most the k most similar per src, sorted by src then
    decreasing sim. Exactly the candidates of an IVF search with these cells."""
    n, p = cells.shape
    flat = cells.ravel()
    # entries sorted by (cell, probe rank, row): in each cell the members (rank 0) come first,
    # in row order, so a cell's member list is the head of its query list
    o = np.argsort(flat.astype(np.int64) * p + np.tile(np.arange(p), n), kind="stable")
    q_rows = o // p
    q_lims = np.zeros(nlist + 1, np.int64)
    np.cumsum(np.bincount(flat, minlength=nlist), out=q_lims[1:])
    m_cnt = np.bincount(cells[:, 0], minlength=nlist)
    del flat, o
    near = np.full(n * p, -1, np.int64)  # per entry of q_rows: best member of that cell
    near_sim = np.full(n * p, -np.inf, np.float32)
    pairs: list = []

    def work(c: int) -> None:
        lo, hi, m = int(q_lims[c]), int(q_lims[c + 1]), int(m_cnt[c])
        if m == 0 or hi == lo:
            return
        mem = q_rows[lo:lo + m]
        xb = x[mem]
        step = max(1, _BLOCK_ELEMENTS // m)
        for s in range(lo, hi, step):
            e = min(hi, s + step)
            qs = q_rows[s:e]
            sim = x[qs] @ xb.T
            n_self = max(0, min(lo + m, e) - s)  # queries that are members: self at column s-lo+r
            if n_self:
                r = np.arange(n_self)
                sim[r, s - lo + r] = -np.inf
            b = sim.argmax(axis=1)
            best = sim[np.arange(len(qs)), b]
            near[s:e] = mem[b]
            near_sim[s:e] = best
            # only rows whose best member reaches the threshold have hits: the rest of the
            # block is never scanned again (most rows of a large set have none)
            cand = np.flatnonzero(best >= threshold)
            if not len(cand):
                continue
            sc = sim[cand]
            hit = sc >= threshold
            over = np.flatnonzero(hit.sum(axis=1) > k)
            if len(over):  # rows with more than k hits keep their k most similar
                top = np.argpartition(sc[over], m - k, axis=1)[:, m - k:]
                hit[over] = False
                hit[over[:, None], top] = True
            r, j = np.nonzero(hit)
            pairs.append((qs[cand[r]], mem[j], sc[r, j]))

    _parallel(work, range(nlist))
    # nearest: the best over a row's cells
    o = np.lexsort((-near_sim, q_rows))
    first = o[np.r_[0, np.flatnonzero(np.diff(q_rows[o])) + 1]] if len(o) else o
    nearest = np.full(n, -1, np.int64)
    nearest_sim = np.full(n, np.nan, np.float32)
    ok = np.isfinite(near_sim[first])
    nearest[q_rows[first[ok]]] = near[first[ok]]
    nearest_sim[q_rows[first[ok]]] = near_sim[first[ok]]
    del near, near_sim, q_rows, o
    cat = lambda i, dt: np.concatenate([t[i] for t in pairs]).astype(dt) if pairs else np.zeros(0, dt)
    src, dst, sim = cat(0, np.int64), cat(1, np.int64), cat(2, np.float32)
    o = np.lexsort((-sim, src))
    src, dst, sim = src[o], dst[o], sim[o]
    if len(src):  # a row's hits over all its cells: keep the k most similar
        starts = np.r_[0, np.flatnonzero(np.diff(src)) + 1]
        rank = np.arange(len(src)) - np.repeat(starts, np.diff(np.r_[starts, len(src)]))
        keep = rank < k
        src, dst, sim = src[keep], dst[keep], sim[keep]
    return nearest, nearest_sim, src, dst, sim


def exact_pairs(x: np.ndarray, rows: np.ndarray, threshold: float, k: int, block: int = 8192):
    """Exact duplicate pairs of the sorted query `rows` against all rows: (a, b) with sim >=
    threshold, b != a, at most the k most similar per a (what a flat top-k search keeps).
    Blocked GEMM on a thread pool; reads `x` in place (a flat FAISS index would copy it)."""
    n = len(x)
    xq = x[rows]

    def work(s: int):
        sim = xq @ x[s:s + block].T
        self_ = rows[(rows >= s) & (rows < s + block)]
        sim[np.searchsorted(rows, self_), self_ - s] = -np.inf  # rows is sorted
        hit = sim >= threshold
        over = np.flatnonzero(hit.sum(axis=1) > k)
        if len(over):  # bounded memory on degenerate data: k per query row per block
            w = sim.shape[1]
            top = np.argpartition(sim[over], w - k, axis=1)[:, w - k:]
            hit[over] = False
            hit[over[:, None], top] = True
        r, c = np.nonzero(hit)
        return r, s + c, sim[r, c]

    parts = _parallel(work, range(0, n, block))
    r = np.concatenate([p[0] for p in parts])
    c = np.concatenate([p[1] for p in parts])
    v = np.concatenate([p[2] for p in parts])
    o = np.lexsort((-v, r))
    r, c = r[o], c[o]
    if len(r):
        starts = np.r_[0, np.flatnonzero(np.diff(r)) + 1]
        rank = np.arange(len(r)) - np.repeat(starts, np.diff(np.r_[starts, len(r)]))
        r, c = r[rank < k], c[rank < k]
    return rows[r], c


def build_index(x: np.ndarray, kind: str, *, gpu: bool = False, seed: int = 0, nlist: int | None = None,
                hnsw_m: int = 32, centroids: np.ndarray | None = None):
    """A FAISS inner-product index of kind flat / ivf / hnsw holding the unit rows `x`, and the
    settings that describe it. Decontamination (`ReferenceIndex`) searches it with outside
    queries; semantic dedup uses it for flat, HNSW and GPU IVF (on CPU its IVF is a self-join
    by cell, `ivf_self_join`). IVF: `centroids` (from `train_centroids`) or trained here.
    (roost.algorithms.selection keeps its own incremental flat index: it adds rows one by one.)"""
    import faiss

    n, d = x.shape
    settings: dict = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        if centroids is None:
            centroids, settings = train_centroids(x, ivf_nlist(n, nlist), seed)
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
        index = faiss.IndexIVFFlat(quantizer, d, len(centroids), faiss.METRIC_INNER_PRODUCT)
        index.is_trained = True  # the quantizer holds the trained centroids (faiss keeps a reference)
        settings["nlist"] = len(centroids)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * hnsw_m)
        settings.update(hnsw_m=hnsw_m, ef_construction=index.hnsw.efConstruction)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    if gpu and kind in ("flat", "ivf"):
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
    """Builds the index (IVF: trains the centroids), calibrates its search parameter, searches."""

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
        self.index = None
        self.settings: dict = {"index": kind, "device": "gpu" if self.gpu else "cpu"}
        t0 = time.perf_counter()
        if kind == "ivf":
            self.centroids, extra = train_centroids(x, ivf_nlist(self.n, nlist), seed)
            self.settings.update(extra)
        else:
            self.index, extra = build_index(x, kind, gpu=self.gpu, seed=seed, hnsw_m=hnsw_m)
            self.settings.update(extra)
        self.settings["build_seconds"] = round(time.perf_counter() - t0, 3)
        if kind in ("ivf", "hnsw"):
            t0 = time.perf_counter()
            self._calibrate(calibration_queries)
            self.settings["calibrate_seconds"] = round(time.perf_counter() - t0, 3)

    def _set_param(self, value: int) -> None:
        faiss = self.faiss
        if self.kind == "ivf":
            self.nprobe = int(value)
            if self.index is not None:
                ps = faiss.GpuParameterSpace() if self.gpu else faiss.ParameterSpace()
                ps.set_index_parameter(self.index, "nprobe", int(value))
            self.settings["nprobe"] = int(value)
            return
        faiss.ParameterSpace().set_index_parameter(self.index, "efSearch", int(value))
        self.settings["efSearch"] = int(value)

    # -- calibrate ---------------------------------------------------------------------------
    def _start_sample(self, calibration_queries: int | None) -> None:
        """Start the calibration sample: exact duplicate pairs (`self._truth`) of random query
        rows (`self._sample_rows()`), sampled in chunks of 1,000 until the sample holds
        `min_pairs` pairs or the cost reaches ~1e9 comparisons (~5 s on 2 idle cores)."""
        n = self.n
        # Past that budget a sample too small to resolve 1% takes one nprobe step more, which is
        # the cheaper side while the steps are small: at 1M rows and 4,000 cells one more probe
        # adds n*n/nlist = 2.5e8 row comparisons to the join, 1,000 more sample rows add 1e9
        # (IVF widens the sample when its chosen nprobe costs far more: `_worth_more_pairs`).
        max_q = calibration_queries or int(min(n, 20_000, max(1_000, 1e9 // n)))
        self._perm = np.random.default_rng(self.seed + 1).permutation(n)
        self._truth: list[tuple[int, int]] = []
        self._q = 0
        if self.gpu:
            exact, _ = build_index(self.x, "flat", gpu=True)

            def search(rows):
                D, I = exact.search(self.x[rows], self.kk)
                r, c = np.nonzero(_neighbours(D, I, rows, self.k) & (D >= self.threshold))
                return rows[r], I[r, c]
        else:
            search = lambda rows: exact_pairs(self.x, rows, self.threshold, self.k)
        self._search_exact = search
        self._extend_sample(min(n, max_q), stop_at_pairs=None if calibration_queries else self.min_pairs)

    def _extend_sample(self, upto: int, stop_at_pairs: int | None = None) -> None:
        while self._q < upto and (stop_at_pairs is None or len(self._truth) < stop_at_pairs):
            rows = np.sort(self._perm[self._q:min(upto, self._q + 1_000)])
            a, b = self._search_exact(rows)
            self._truth += zip(a.tolist(), b.tolist())
            self._q += len(rows)

    def _sample_rows(self) -> np.ndarray:
        return np.sort(self._perm[:self._q])

    def _worth_more_pairs(self, nprobe: int, calibration_queries: int | None) -> bool:
        """IVF: widen the sample (double it) while it holds too few pairs to resolve a 1% miss
        rate and doubling it costs under half the join at the nprobe it chose: on
        embeddings without tight clusters (static embeddings of ordinary text) a few hard pairs
        of a small sample can push nprobe from ~24 to 512, a join 20x longer than needed."""
        if calibration_queries or self._q >= self.n or len(self._truth) >= self.min_pairs:
            return False
        join = nprobe * self.n * self.n / self.settings["nlist"]
        return self._q * self.n <= join / 2

    def _calibrate(self, calibration_queries: int | None) -> None:
        """Raise nprobe/efSearch until the index finds target_recall of the exact pairs."""
        self._start_sample(calibration_queries)
        while True:
            chosen, recall, tried = self._choose()
            if self.kind != "ivf" or not self._worth_more_pairs(chosen, calibration_queries):
                break
            self._extend_sample(min(self.n, 2 * self._q))
        self._set_param(chosen)
        self.settings.update(
            calibration_queries=int(self._q),
            calibration_pairs=int(len(self._truth)),
            measured_recall=None if recall is None else round(recall, 5),
            target_recall=self.target_recall,
            calibration_tried=tried,
        )

    def _choose(self) -> tuple[int, float | None, list]:
        """The smallest step meeting target_recall on the sample, its recall, the steps tried."""
        truth, qi = self._truth, self._sample_rows()
        n_pairs = len(truth)
        if self.kind == "ivf":
            nlist = self.settings["nlist"]
            steps = [p for p in NPROBE_STEPS if p < nlist] + [nlist]
            fallback = min(nlist, IVF_NO_PAIRS_NPROBE)
            if n_pairs:
                # every row is a query and a pair found from either side links both rows, so
                # pair (q, j) is found at nprobe p iff j's cell is among q's p nearest centroids
                # or q's cell among j's
                a = np.array([t[0] for t in truth])
                b = np.array([t[1] for t in truth])
                rank = np.minimum(_cell_rank(self.x[a], self.x[b], self.centroids),
                                  _cell_rank(self.x[b], self.x[a], self.centroids))
                measure = lambda p: float((rank < p).mean())
        else:
            steps = [e for e in EF_STEPS if e >= self.kk] or [self.kk]
            fallback = max(64, self.kk)
            truth_set = set(truth)

            def measure(ef: int) -> float:
                self._set_param(ef)
                return len(truth_set & self._pairs(qi)) / n_pairs
        chosen, recall, tried = None, None, []
        if n_pairs == 0:
            return fallback, None, tried
        for p in steps:
            recall = measure(p)
            tried.append((p, round(recall, 5)))
            if recall >= self.target_recall:
                chosen = p
                break
        if chosen is None:
            chosen = steps[-1]
        elif n_pairs < self.min_pairs and chosen != steps[-1]:
            # a small sample cannot resolve 1% misses: take one step more
            chosen = steps[steps.index(chosen) + 1]
            recall = measure(chosen)
            tried.append((chosen, round(recall, 5)))
        return chosen, recall, tried

    def _pairs(self, qi: np.ndarray) -> set[tuple[int, int]]:
        out: set[tuple[int, int]] = set()
        for s in range(0, len(qi), self.batch_size):
            rows = qi[s:s + self.batch_size]
            D, I = self.index.search(self.x[rows], self.kk)
            m = _neighbours(D, I, rows, self.k) & (D >= self.threshold)
            r, c = np.nonzero(m)
            out.update(zip(rows[r].tolist(), I[r, c].tolist()))
        return out

    # -- search ------------------------------------------------------------------------------
    def search_all(self):
        """Nearest other row + sim, repeat count, and all pairs >= threshold, for every row."""
        t0 = time.perf_counter()
        if self.kind == "ivf" and not self.gpu:
            cells = top_cells(self.x, self.centroids, self.nprobe)
            self.settings["assign_seconds"] = round(time.perf_counter() - t0, 3)
            t1 = time.perf_counter()
            nearest, nearest_sim, src, dst, sim = ivf_self_join(
                self.x, cells, len(self.centroids), self.threshold, self.k)
            self.settings["join_seconds"] = round(time.perf_counter() - t1, 3)
            self.settings["search_seconds"] = round(time.perf_counter() - t0, 3)
            repeat = np.bincount(src, minlength=self.n).astype(np.int32)
            return nearest, np.clip(nearest_sim, -1.0, 1.0), repeat, src, dst, np.clip(sim, -1.0, 1.0)
        if self.kind == "ivf":  # GPU: a faiss IVF index with the same centroids and nprobe
            self.index, _ = build_index(self.x, "ivf", gpu=True, centroids=self.centroids)
            self._set_param(self.nprobe)
        n = self.n
        nearest = np.full(n, -1, dtype=np.int64)
        nearest_sim = np.full(n, np.nan, dtype=np.float32)
        repeat = np.zeros(n, dtype=np.int32)
        src, dst, sim = [], [], []
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
            raise ValueError("embeddings must be L2-normalised (unit rows); see roost.engines.embeddings")
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
                           settings=settings, pairs=(empty, empty, np.zeros(0, np.float32)),
                           duplicate_index=np.full(n, -1, np.int64), nearest_index=np.full(n, -1, np.int64))

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
                       settings=settings, pairs=(src, dst, sim),
                       duplicate_index=np.where(keep, -1, dup_row).astype(np.int64),
                       nearest_index=np.asarray(near_row, dtype=np.int64))
