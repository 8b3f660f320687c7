"""Static (model2vec) embeddings for semantic dedup vs all-MiniLM-L6-v2, and vs semhash.

Texts: real, offline (bench/static_corpus.py): stdlib docstrings, installed packages' README
paragraphs, the repo's seed prompts/answers and 1,000 templated word problems, exact
duplicates dropped, plus edited near-duplicate copies of 12% of them (synonyms, word swaps,
dropped/added words, typos, sentence order, case, a polite prefix).

Ground truth: the pairs whose MiniLM cosine is >= 0.9 (exact, all pairs), as roost's
default dedup sees them. The static model is distilled from that same MiniLM (roost.engines.embeddings,
cached). Printed:
  * embedding speed: MiniLM rows/s (absolute baseline), static rows/s and the ratio, same texts,
    same process (median of --repeats for static; MiniLM once, it is slow);
  * threshold sweep: pair recall / precision / F1 of static cosine >= t against the MiniLM
    pairs (exact all-pairs on the static vectors); the threshold that maps to MiniLM's 0.9 is the
    one with the best F1;
  * roost dedup with static embeddings at that threshold (roost.algorithms.semantic_dedup, the
    index it would pick; `--index` to force one) and semhash's `self_deduplicate` with the same
    distilled model at the same threshold: wall time from texts to decisions, pair recall and
    precision against MiniLM's pairs, and agreement of the removed rows with MiniLM dedup's.

    python bench/bench_static_dedup.py [--max-texts 20000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from static_corpus import plant_near_duplicates, real_texts


def all_pairs(x: np.ndarray, threshold: float, block: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j with x_i . x_j >= threshold (exact, blocked GEMM)."""
    a_all, b_all, s_all = [], [], []
    for s in range(0, len(x), block):
        sim = x[s:s + block] @ x.T
        r, c = np.nonzero(sim >= threshold)
        keep = c > s + r
        a_all.append(s + r[keep]); b_all.append(c[keep]); s_all.append(sim[r[keep], c[keep]])
    return np.concatenate(a_all), np.concatenate(b_all), np.concatenate(s_all)


def pair_keys(a, b, n: int) -> np.ndarray:
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return np.unique(np.minimum(a, b) * n + np.maximum(a, b))


def pr(found: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    hit = len(np.intersect1d(found, truth, assume_unique=True))
    r = hit / max(1, len(truth))
    p = hit / max(1, len(found))
    return r, p, (2 * r * p / (r + p) if r + p else 0.0)


def removed_agreement(removed: np.ndarray, ref_removed: np.ndarray) -> tuple[float, float]:
    """(recall, precision) of a removed-row set against the reference's."""
    hit = len(np.intersect1d(removed, ref_removed))
    return hit / max(1, len(ref_removed)), hit / max(1, len(removed))


def run_semhash(texts: list[str], model_path: str, threshold: float):
    from model2vec import StaticModel
    from semhash import SemHash

    t0 = time.perf_counter()
    model = StaticModel.from_pretrained(model_path, force_download=False)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    sh = SemHash.from_records(texts, model=model)
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = sh.self_deduplicate(threshold=threshold)
    t_dedup = time.perf_counter() - t0
    index = {t: i for i, t in enumerate(texts)}
    removed = np.array(sorted(index[d.record] for d in res.filtered), np.int64)
    groups, neighbors, _ = res._selection_inputs  # one group per unique text (texts are unique)
    a, b = [], []
    for i, (idx, _scores) in enumerate(neighbors):
        idx = np.asarray(idx, np.int64)
        idx = idx[idx != i]
        a.append(np.full(len(idx), i)); b.append(idx)
    pairs = pair_keys(np.concatenate(a), np.concatenate(b), len(texts))
    return {"load": t_load, "embed+index": t_index, "dedup": t_dedup, "total": t_index + t_dedup,
            "removed": removed, "pairs": pairs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-texts", type=int, default=20_000)
    ap.add_argument("--plant-frac", type=float, default=0.12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--minilm-threshold", type=float, default=0.9)
    ap.add_argument("--index", default="auto", help="roost's index for the static dedup run")
    a = ap.parse_args()
    print(f"load avg at start {os.getloadavg()}")

    from roost.algorithms.semantic_dedup import semantic_dedup
    from roost.engines.embeddings import Embedder, StaticEmbedder, distill_static

    base = real_texts()
    texts, planted = plant_near_duplicates(base, a.plant_frac, seed=0)
    texts = texts[:a.max_texts]
    planted = [(i, j) for i, j in planted if i < len(texts) and j < len(texts)]
    n = len(texts)
    ids = [str(i) for i in range(n)]
    print(f"texts: {n:,} ({len(base):,} unique real texts + planted near-duplicates; {len(planted):,} planted "
          f"pairs in this subset), mean {np.mean([len(t) for t in texts]):.0f} chars")

    t0 = time.perf_counter()
    path = distill_static()
    print(f"static model: {path} (distill or cache lookup {time.perf_counter() - t0:.1f}s)")

    mini = Embedder()
    static = StaticEmbedder(str(path))
    static.encode(texts[:1000]); mini.encode(texts[:64])  # warm-up
    t0 = time.perf_counter()
    xm = mini.encode(texts)
    t_m = time.perf_counter() - t0
    ts = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        xs = static.encode(texts)
        ts.append(time.perf_counter() - t0)
    t_s = statistics.median(ts)
    print(f"\nembedding ({n:,} texts, load avg {os.getloadavg()[0]:.1f}):")
    print(f"  MiniLM (sentence-transformers, batch 32): {t_m:.1f}s = {n / t_m:,.0f} rows/s  [baseline]")
    print(f"  static (model2vec, {static.dim}-d):          {t_s:.2f}s = {n / t_s:,.0f} rows/s  "
          f"(runs {[round(t, 2) for t in ts]})  ratio {t_m / t_s:.0f}x")

    # ground truth: MiniLM pairs >= 0.9
    ma, mb, _ = all_pairs(xm, a.minilm_threshold)
    truth = pair_keys(ma, mb, n)
    planted_keys = pair_keys([i for i, _ in planted], [j for _, j in planted], n)
    print(f"\nMiniLM pairs >= {a.minilm_threshold}: {len(truth):,} (planted pairs among them: "
          f"{len(np.intersect1d(planted_keys, truth)):,} of {len(planted_keys):,})")

    sa, sb, ss = all_pairs(xs, 0.6)
    sweep = []
    print("static threshold sweep (exact all-pairs): t, pairs, recall, precision, F1 vs MiniLM pairs")
    for t in np.round(np.arange(0.70, 0.985, 0.01), 2):
        m = ss >= t
        found = pair_keys(sa[m], sb[m], n)
        r, p, f = pr(found, truth)
        sweep.append((f, t, r, p, len(found)))
        print(f"  {t:.2f} {len(found):7,} recall {r:.3f} precision {p:.3f} F1 {f:.3f}")
    f_best, t_best, r_best, p_best, _ = max(sweep)
    print(f"-> MiniLM {a.minilm_threshold} maps to static {t_best:.2f} (best F1 {f_best:.3f}: recall {r_best:.3f}, "
          f"precision {p_best:.3f})")
    for target in (0.9, 0.95):
        ok = [s for s in sweep if s[2] >= target]
        if ok:
            f, t, r, p, _ = max(ok, key=lambda s: s[1])
            print(f"   highest t with recall >= {target}: {t:.2f} (precision {p:.3f})")

    # reference decisions: MiniLM dedup at 0.9 (exact)
    ref = semantic_dedup(xm, ids, threshold=a.minilm_threshold, index="flat")
    ref_removed = np.flatnonzero(~ref.keep)

    t0 = time.perf_counter()
    xs2 = static.encode(texts)
    r = semantic_dedup(xs2, ids, threshold=float(t_best), index=a.index)
    t_roost = time.perf_counter() - t0
    src, dst, _ = r.pairs
    roost_pairs = pair_keys(src, dst, n)
    rr, rp, rf = pr(roost_pairs, truth)
    rem = np.flatnonzero(~r.keep)
    dr, dp = removed_agreement(rem, ref_removed)

    sh = run_semhash(texts, str(path), float(t_best))
    hr, hp, hf = pr(sh["pairs"], truth)
    hdr, hdp = removed_agreement(sh["removed"], ref_removed)
    print(f"\ndedup at static threshold {t_best:.2f}, from texts to decisions (load avg {os.getloadavg()[0]:.1f}):")
    print(f"  MiniLM reference: {len(ref_removed):,} rows removed")
    print(f"  roost static  : {t_roost:.2f}s ({r.settings['index']}), removed {len(rem):,}; pairs recall {rr:.3f} "
          f"precision {rp:.3f} F1 {rf:.3f}; removed rows vs MiniLM's: recall {dr:.3f} precision {dp:.3f}")
    print(f"  semhash 0.5   : {sh['total']:.2f}s (embed+usearch index {sh['embed+index']:.2f}s, dedup {sh['dedup']:.2f}s; "
          f"model load {sh['load']:.2f}s not counted), removed {len(sh['removed']):,}; pairs recall {hr:.3f} "
          f"precision {hp:.3f} F1 {hf:.3f}; removed rows vs MiniLM's: recall {hdr:.3f} precision {hdp:.3f}")
    print(f"  speed roost/semhash = {sh['total'] / t_roost:.2f}x")
    print(f"load avg at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
