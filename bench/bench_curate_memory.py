"""Curation memory: roost's streaming curate vs loading the input whole, same process.

Writes a synthetic Parquet input of N conversations (~1 KB each), then measures the peak
resident-memory increase (each in a fresh process, so one cannot reuse the other's freed
memory) of (a) `roost.curate` with validation, heuristics and exact dedup
(the text-handling passes; embeddings are a fixed 1.5 KB/row on top, by design) and (b) the
baseline that loads the input as Python rows at once. Prints both and their ratio.

`--static` runs the default stages with semantic dedup on static (model2vec) embeddings
(`embedding: {model: static}`, 256-d): the embeddings are then held for every row
(rows x 1 KB of float32, by design) and the dedup runs on them (IVF above 50k rows). The
words of the synthetic rows are then real English words (the 5,000 most common of
bench/static_corpus.py), drawn at random.

    python bench/bench_curate_memory.py [--rows 300000]
    python bench/bench_curate_memory.py --rows 1000000 --static
"""
from __future__ import annotations

import argparse
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq


class PeakRSS:
    def __init__(self):
        self.proc = psutil.Process()
        self.peak = self.base = self.proc.memory_info().rss
        self._stop = threading.Event()

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def real_words(n: int = 5000) -> list[str]:
    """The n most common words of the real texts of bench/static_corpus.py."""
    import collections
    import re
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from static_corpus import real_texts

    counts = collections.Counter(w for t in real_texts() for w in re.findall(r"[a-z]+", t.lower()))
    return [w for w, _ in counts.most_common(n)]


def make_input(path: Path, rows: int, words: list[str] | None = None) -> int:
    rng = random.Random(0)
    words = words or [f"w{i}" for i in range(5000)]
    schema = pa.schema([("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))])
    text_bytes = 0
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 10_000):
            batch = []
            for i in range(start, min(rows, start + 10_000)):
                q = f"Question {i % (rows // 20 or 1)}: " + " ".join(rng.choices(words, k=30)) + "?"
                a = " ".join(rng.choices(words, k=150))
                text_bytes += len(q) + len(a)
                batch.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return text_bytes


def _run_curate(src: str, out: str, static: bool, q) -> None:
    from roost.curation.runner import curate
    from roost.recipe import CurateRecipe

    if static:
        from roost.engines.embeddings import StaticEmbedder

        StaticEmbedder()  # distil now if the cache lacks it: not part of the measured run
        raw = {"input": {"path": src, "batch_size": 4096}, "embedding": {"model": "static"},
               "stages": [{"kind": "heuristics", "max_repeated_ngram_fraction": 1.0}, {"kind": "exact_dedup"},
                          {"kind": "semantic_dedup"}]}
    else:
        raw = {"input": {"path": src, "batch_size": 4096}, "semantic_dedup": {"enabled": False},
               "heuristics": {"max_repeated_ngram_fraction": 1.0}}
    recipe = CurateRecipe.model_validate(raw)
    t = time.perf_counter()
    with PeakRSS() as mem:
        manifest = curate(recipe, out, progress=False)
    dedup = next((st.get("settings", {}) for st in manifest.get("stages", []) if st.get("name") == "semantic_dedup"), {})
    q.put((mem.delta_mb, time.perf_counter() - t, manifest["rows"], manifest["rejects"], dedup))


def _run_whole(src: str, q) -> None:
    with PeakRSS() as mem:
        rows = pq.read_table(src).to_pylist()
    q.put((mem.delta_mb, len(rows)))


def _in_child(fn, *args):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    result = q.get()
    p.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--static", action="store_true", help="semantic dedup on static embeddings too")
    args = ap.parse_args()
    print(f"load avg at start {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "input.parquet"
        # static embeddings of "w123"-style tokens are all alike (mean cosine 0.98: every row a
        # duplicate of every other); with --static the words are real English ones (mean 0.55)
        text_mb = make_input(src, args.rows, real_words() if args.static else None) / 2**20
        roost_mb, roost_s, kept, rejects, dedup = _in_child(_run_curate, str(src), str(Path(tmp) / "out"), args.static)
        whole_mb, _ = _in_child(_run_whole, str(src))
    print(f"rows={args.rows} text={text_mb:,.0f} MB  kept={kept} rejects={rejects} "
          f"in {roost_s:.1f}s ({args.rows / roost_s:,.0f} rows/s)")
    if args.static:
        emb_mb = args.rows * dedup.get("dim", 256) * 4 / 2**20
        print(f"semantic dedup on static embeddings: index {dedup.get('index')}, nlist {dedup.get('nlist')}, "
              f"nprobe {dedup.get('nprobe')}, build {dedup.get('build_seconds')}s, calibrate "
              f"{dedup.get('calibrate_seconds')}s, search {dedup.get('search_seconds')}s; "
              f"the embeddings alone are {emb_mb:,.0f} MB")
    print(f"peak RSS increase: roost curate {roost_mb:,.0f} MB vs whole input loaded "
          f"{whole_mb:,.0f} MB -> ratio {roost_mb / whole_mb:.2f}")
    print(f"load avg at end {os.getloadavg()}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
