"""Semantic dedup: chosen index (build + calibrate + search) vs exact flat search.

IVF on CPU is roost's self-join by cell (see roost.algorithms.semantic_dedup), timed by phase.

Data: synthetic 384-d unit vectors, clustered (like sentence embeddings: same-topic rows at
cosine ~0.4), with planted near-duplicate pairs (cosine 0.88-0.99, so some fall just under the
0.9 threshold) on 5% of rows. Recall = duplicate pairs (sim >= threshold within exact top-k)
of sampled query rows that the chosen index's run also found (from either side).

Exact flat all-pairs at 1M rows is ~2 h on 2 cores, so above --full-flat-max rows it is run
on a random sample of queries and its time extrapolated linearly to all rows (printed as such).

    python bench/bench_dedup.py --sizes 100000 1000000
"""
from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np

from roost.algorithms.semantic_dedup import semantic_dedup


def planted(n: int, d: int = 384, dup_frac: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_pairs = int(n * dup_frac / 2)
    n_base = n - n_pairs
    c = rng.standard_normal((max(10, n // 200), d), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.empty((n, d), np.float32)
    for s in range(0, n_base, 100_000):
        e = min(n_base, s + 100_000)
        blk = c[rng.integers(0, len(c), e - s)] + 1.2 * rng.standard_normal((e - s, d), dtype=np.float32) / np.sqrt(d)
        x[s:e] = blk / np.linalg.norm(blk, axis=1, keepdims=True)
    sim = rng.uniform(0.88, 0.99, n_pairs).astype(np.float32)
    tau = np.sqrt(1 / sim**2 - 1)
    y = x[rng.choice(n_base, n_pairs, replace=False)] + tau[:, None] * rng.standard_normal((n_pairs, d), dtype=np.float32) / np.sqrt(d)
    x[n_base:] = y / np.linalg.norm(y, axis=1, keepdims=True)
    return x[rng.permutation(n)]


def exact_pairs(x, queries, k, threshold, batch=4096):
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    t0 = time.perf_counter()
    truth = set()
    for s in range(0, len(queries), batch):
        q = queries[s:s + batch]
        D, I = flat.search(x[q], k + 1)
        for a, dr, ir in zip(q.tolist(), D, I):
            truth.update((a, int(b)) for sv, b in zip(dr, ir) if b != a and sv >= threshold)
    return truth, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--full-flat-max", type=int, default=100_000, help="above this, flat runs on a sample")
    ap.add_argument("--sample-queries", type=int, default=20_000)
    a = ap.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, load avg {os.getloadavg()}")
    for n in a.sizes:
        t0 = time.perf_counter()
        x = planted(n)
        print(f"\n== n={n:,} (data {time.perf_counter() - t0:.1f}s)")
        ids = [str(i) for i in range(n)]
        t0 = time.perf_counter()
        r = semantic_dedup(x, ids, threshold=a.threshold, k=a.k)
        t_auto = time.perf_counter() - t0
        s = r.settings
        print(f"auto -> {s['index']}: total {t_auto:.1f}s (build = k-means {s.get('build_seconds')}s, "
              f"calibrate {s.get('calibrate_seconds')}s, search {s.get('search_seconds')}s "
              f"[assign {s.get('assign_seconds')}s + self-join {s.get('join_seconds')}s], "
              f"select {s.get('select_seconds')}s; load avg {os.getloadavg()[0]:.1f})")
        print(f"  params: nlist={s.get('nlist')} (k-means on {s.get('train_rows')} rows, {s.get('kmeans_iters')} "
              f"iterations) nprobe={s.get('nprobe')} calibration: "
              f"{s.get('calibration_queries')} queries, {s.get('calibration_pairs')} pairs, "
              f"recall {s.get('measured_recall')} tried {s.get('calibration_tried')}")
        print(f"  removed {int((~r.keep).sum()):,} of {n:,}")
        src, dst, _ = r.pairs
        found = set(zip(src.tolist(), dst.tolist()))
        found |= {(b, c) for c, b in found}
        if n <= a.full_flat_max:
            q = np.arange(n)
            truth, t_flat = exact_pairs(x, q, a.k, a.threshold)
            note = "measured, all rows"
        else:
            q = np.sort(np.random.default_rng(99).choice(n, a.sample_queries, replace=False))
            truth, t_q = exact_pairs(x, q, a.k, a.threshold)
            t_flat = t_q * n / len(q)
            note = f"EXTRAPOLATED linearly from {len(q):,} sampled queries ({t_q:.1f}s)"
        recall = len(truth & found) / max(1, len(truth))
        print(f"exact flat search: {t_flat:.1f}s ({note})")
        print(f"  speedup flat/auto = {t_flat / t_auto:.1f}x; recall of exact duplicate pairs = "
              f"{recall:.4f} ({len(truth & found)}/{len(truth)} pairs of {len(q):,} query rows); "
              f"load avg {os.getloadavg()}")
        del x, r


if __name__ == "__main__":
    main()
