"""Benchmark decontamination: accuracy on planted contamination, then n-gram speed and memory.

1. Planted contamination. data/benchmark_word_problems.jsonl is a 20-item benchmark set
   (GSM8K-style word problems in English, Chinese and Japanese, HumanEval-style code tasks,
   MT-Bench-style prompts, one item shorter than 13 words, two problems of
   data/arithmetic_problems.jsonl). data/decontam_rows.jsonl holds, per item, an exact copy
   (verbatim, or inside a longer request), a copy with changed numbers and names, and a
   paraphrase, plus 34 clean rows on the same topics that share common phrases (twelve of them
   other problems of the same templates as the two arithmetic items). Printed: recall per kind
   of copy, clean rows removed and precision for the n-gram check alone, the embedding check
   alone (all-MiniLM-L6-v2) and both, at the stage defaults and a few other thresholds.
   tests/test_decontaminate.py asserts floors on the same table (`planted_table`).

2. Speed and memory of the n-gram check: --rows synthetic rows (default 100k, 20-200 words)
   against a --items-item benchmark set (default 10k, 30-120 words; 1% of rows hold a whole
   item, 1% half of one). roost's numpy index against the plain-Python implementation (a dict
   from n-gram tuples to items, what the harness does), in the same process, on the same rows;
   their decisions are checked to be identical. Then `roost curate` end to end (Parquet in,
   stage `decontaminate`, n-gram only) against the same curation with no stage, each in a
   fresh process: rows/s and peak RSS.

    python bench/bench_decontaminate.py [--rows 100000 --items 10000] [--skip-planted]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from roost.algorithms.decontaminate import NgramIndex, tokens

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "data" / "benchmark_word_problems.jsonl"
ROWS = REPO / "data" / "decontam_rows.jsonl"
KINDS = ("exact", "numbers", "paraphrase")


# -- 1. planted contamination -----------------------------------------------------------------

def planted_scores(embedder=None, n: int = 13, min_words: int = 8) -> dict:
    """n-gram overlap and nearest-item cosine of every planted row (the stage's two measures)."""
    from roost.algorithms.semantic_dedup import ReferenceIndex

    items = [json.loads(line) for line in BENCHMARK.read_text().splitlines()]
    rows = [json.loads(line) for line in ROWS.read_text().splitlines()]
    texts = [r["instruction"] for r in rows]
    share, item = NgramIndex([b["question"] for b in items], n=n, min_words=min_words).match(texts)
    if embedder is None:
        from roost.engines.embeddings import Embedder

        embedder = Embedder()
    sim, nearest = ReferenceIndex(embedder.encode([b["question"] for b in items])).nearest(embedder.encode(texts))
    ids = np.array([b["id"] for b in items] + [None], dtype=object)
    return {"kind": np.array([r["planted"] for r in rows]), "item": np.array([r["benchmark_item"] for r in rows], object),
            "share": share, "ngram_item": ids[item], "sim": sim, "embedding_item": ids[nearest]}


def planted_table(scores: dict) -> list[dict]:
    """Precision / recall of each check at the stage defaults (ngram 0.5, embedding 0.9) and others."""
    settings = [("n-gram", 0.5, None), ("n-gram", 0.3, None), ("n-gram", 0.1, None),
                ("embedding", None, 0.9), ("embedding", None, 0.85), ("embedding", None, 0.8),
                ("embedding", None, 0.75), ("embedding", None, 0.7), ("both", 0.5, 0.9), ("both", 0.3, 0.8)]
    kind = scores["kind"]
    dirty = kind != "clean"
    out = []
    for check, ng, emb in settings:
        by_ngram = scores["share"] >= ng if ng is not None else np.zeros(len(kind), bool)
        by_emb = scores["sim"] >= emb if emb is not None else np.zeros(len(kind), bool)
        removed = by_ngram | by_emb
        named = np.where(by_ngram, scores["ngram_item"], scores["embedding_item"])  # the item the reject names
        row = {"check": check, "min_overlap": ng, "threshold": emb}
        for k in KINDS:
            row[f"recall_{k}"] = float(removed[kind == k].mean())
        row["recall_all"] = float(removed[dirty].mean())
        row["clean_removed"] = int(removed[~dirty].sum())
        row["clean_rows"] = int((~dirty).sum())
        tp = int((removed & dirty).sum())
        row["precision"] = tp / max(1, int(removed.sum()))
        row["wrong_item"] = int((removed & dirty & (named != scores["item"])).sum())
        out.append(row)
    return out


def format_table(table: list[dict]) -> str:
    head = (f"{'check':10s} {'settings':22s} {'exact':>6s} {'numbers':>8s} {'paraph.':>8s} {'all':>6s} "
            f"{'clean removed':>14s} {'precision':>9s} {'wrong item':>10s}")
    lines = [head, "-" * len(head)]
    for r in table:
        s = ", ".join(p for p in (f"overlap>={r['min_overlap']}" if r["min_overlap"] is not None else "",
                                  f"cos>={r['threshold']}" if r["threshold"] is not None else "") if p)
        lines.append(f"{r['check']:10s} {s:22s} {r['recall_exact']:6.2f} {r['recall_numbers']:8.2f} "
                     f"{r['recall_paraphrase']:8.2f} {r['recall_all']:6.2f} "
                     f"{r['clean_removed']:>8d} of {r['clean_rows']:<3d} {r['precision']:9.2f} {r['wrong_item']:10d}")
    return "\n".join(lines)


# -- 2. speed and memory ----------------------------------------------------------------------

def baseline_index(items: list[str], n: int = 13, min_words: int = 8):
    """The rule of roost.algorithms.decontaminate written the obvious way: dicts of word tuples."""
    grams: dict[tuple, list] = defaultdict(list)
    whole: dict[tuple, int] = {}
    equal: dict[tuple, int] = {}
    lengths = []
    for i, text in enumerate(items):
        ws = tokens(text)
        lengths.append(len(ws))
        if len(ws) >= n:
            for p in range(len(ws) - n + 1):
                grams[tuple(ws[p:p + n])].append((i, p))
        elif len(ws) >= min(min_words, n):
            whole.setdefault(tuple(ws), i)
        elif ws:
            equal.setdefault(tuple(ws), i)
    return grams, whole, equal, lengths, n


def baseline_match(index, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    grams, whole, equal, lengths, n = index
    short_lengths = sorted({len(k) for k in whole})
    share = np.zeros(len(texts))
    best = np.full(len(texts), -1, np.int64)
    for j, text in enumerate(texts):
        ws = tokens(text)
        covered: dict[int, set] = defaultdict(set)
        for p in range(len(ws) - n + 1):
            for i, q in grams.get(tuple(ws[p:p + n]), ()):
                covered[i].update(range(q, q + n))
        cand = {i: len(c) / lengths[i] for i, c in covered.items()}
        for m in short_lengths:
            for p in range(len(ws) - m + 1):
                i = whole.get(tuple(ws[p:p + m]))
                if i is not None:
                    cand[i] = 1.0
        if tuple(ws) in equal:
            cand[equal[tuple(ws)]] = 1.0
        if cand:
            i = min(cand, key=lambda k: (-cand[k], k))
            share[j], best[j] = cand[i], i
    return share, best


def synthetic(n_rows: int, n_items: int, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    """Items and rows of Zipf-distributed made-up words; 1% of rows hold a whole item, 1% half."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, int(rng.integers(2, 10)))) for _ in range(30_000)]
    p = 1 / np.arange(1, len(vocab) + 1) ** 1.1
    p /= p.sum()

    def text(lo, hi):
        k = int(rng.integers(lo, hi))
        return [vocab[i] for i in rng.choice(len(vocab), k, p=p)]

    items = [text(30, 121) for _ in range(n_items)]
    rows, planted = [], np.zeros(n_rows, np.int8)
    for r in range(n_rows):
        ws = text(20, 201)
        u = rng.random()
        if u < 0.02:
            it = items[int(rng.integers(n_items))]
            part = it if u < 0.01 else it[: len(it) // 2]
            at = int(rng.integers(0, len(ws) + 1))
            ws = ws[:at] + part + ws[at:]
            planted[r] = 1 if u < 0.01 else 2
        rows.append(" ".join(ws) + ".")
    return [" ".join(w) + "?" for w in items], rows, planted


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss it does not carry a forking parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speed(n_rows: int, n_items: int, batch: int) -> tuple[list[str], list[str]]:
    from bench_curate_memory import PeakRSS

    t0 = time.perf_counter()
    items, rows, planted = synthetic(n_rows, n_items)
    words = sum(len(r.split()) for r in rows)
    print(f"\n== n-gram check: {n_rows:,} rows ({words / n_rows:.0f} words avg) against {n_items:,} items "
          f"(data {time.perf_counter() - t0:.1f}s; planted: {int((planted == 1).sum())} whole items, "
          f"{int((planted == 2).sum())} half items)")
    gc.collect()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        index = NgramIndex(items)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        parts = [index.match(rows[s:s + batch]) for s in range(0, n_rows, batch)]
        t_match = time.perf_counter() - t0
    share = np.concatenate([s for s, _ in parts])
    best = np.concatenate([b for _, b in parts])
    index_mb = index.nbytes / 2**20
    roost_mem = mem.delta_mb
    del index, parts
    gc.collect()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        ref = baseline_index(items)
        b_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        b_share, b_best = baseline_match(ref, rows)
        b_match = time.perf_counter() - t0
    del ref
    same = np.array_equal(best, b_best) and np.allclose(share, b_share)
    removed = share >= 0.5
    print(f"roost numpy index:  build {t_build:.2f}s, match {t_match:.1f}s = {n_rows / t_match:,.0f} rows/s; "
          f"peak RSS +{roost_mem:,.0f} MB (index arrays {index_mb:.1f} MB)")
    print(f"plain-Python dicts: build {b_build:.2f}s, match {b_match:.1f}s = {n_rows / b_match:,.0f} rows/s; "
          f"peak RSS +{mem.delta_mb:,.0f} MB")
    print(f"  roost/plain-Python: match speed {b_match / t_match:.1f}x (plain-Python {n_rows / b_match:,.0f} rows/s), "
          f"build {b_build / t_build:.1f}x (plain-Python {b_build:.2f}s), peak memory "
          f"{roost_mem / max(mem.delta_mb, 1e-9):.2f}x (plain-Python +{mem.delta_mb:,.0f} MB)")
    print(f"  same decisions and overlaps: {same}; removed at overlap >= 0.5: {int(removed.sum())} rows "
          f"(whole items planted {int((planted == 1).sum())}, all found: {bool(removed[planted == 1].all())}; "
          f"half items planted {int((planted == 2).sum())}, found {int(removed[planted == 2].sum())})")
    return items, rows


def _curate_child(src: str, out: str, stages: list, q) -> None:
    from roost.curation.runner import curate
    from roost.recipe import CurateRecipe

    recipe = CurateRecipe.model_validate({"input": {"path": src}, "stages": stages})
    t0 = time.perf_counter()
    manifest = curate(recipe, out, progress=False)
    q.put((time.perf_counter() - t0, peak_rss_mb(), manifest["rows"], manifest["rejects"]))


def _in_child(fn, *args):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    result = q.get()
    p.join()
    return result


def end_to_end(items: list[str], rows: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(rows)
    with tempfile.TemporaryDirectory() as tmp:
        src, bench = Path(tmp) / "rows.parquet", Path(tmp) / "bench.jsonl"
        pq.write_table(pa.table({"instruction": rows, "response": ["An answer of a few words."] * n}), src)
        bench.write_text("".join(json.dumps({"question": t}) + "\n" for t in items))
        stage = {"kind": "decontaminate", "embedding": {"enabled": False},
                 "benchmarks": [{"name": "synthetic", "path": str(bench), "text_column": "question"}]}
        t, rss, kept, rej = _in_child(_curate_child, str(src), str(Path(tmp) / "a"), [stage])
        t0, rss0, _, _ = _in_child(_curate_child, str(src), str(Path(tmp) / "b"), [])
    print(f"\n== roost curate end to end, {n:,} rows, fresh process each")
    print(f"stages [decontaminate (n-gram)]: {t:.1f}s = {n / t:,.0f} rows/s, peak RSS {rss:,.0f} MB, "
          f"kept {kept:,}, removed {rej:,}")
    print(f"stages [] (read, validate, write): {t0:.1f}s = {n / t0:,.0f} rows/s, peak RSS {rss0:,.0f} MB")
    print(f"  with/without decontaminate: time {t / t0:.2f}x (without {t0:.1f}s), peak RSS {rss / rss0:.2f}x "
          f"(without {rss0:,.0f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1024, help="rows per match call (the stage's batch_size)")
    ap.add_argument("--skip-planted", action="store_true")
    ap.add_argument("--skip-end-to-end", action="store_true")
    a = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, load avg {os.getloadavg()}")
    if not a.skip_planted:
        scores = planted_scores()
        print(f"\n== planted contamination: {len(scores['kind'])} rows against {BENCHMARK.name} "
              f"(recall by kind of copy; n-gram n=13 on the instruction; embedding all-MiniLM-L6-v2)")
        print(format_table(planted_table(scores)))
    items, rows = speed(a.rows, a.items, a.batch)
    if not a.skip_end_to_end:
        end_to_end(items, rows)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
