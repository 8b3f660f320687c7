"""roost Embedder.encode vs raw SentenceTransformer.encode on the same texts (goal >= 0.95).

Texts: first user message and responses of data/seed_conversations.jsonl, cycled with a
suffix to reach --n distinct texts. Both run in this process, alternating order, --repeats times;
the ratio uses the median time of each.

    python bench/bench_embed.py --n 3000 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from sentence_transformers import SentenceTransformer

from roost.engines.embeddings import Embedder, default_embedding_model


def load_texts(n: int) -> list[str]:
    path = Path(__file__).resolve().parents[1] / "data" / "seed_conversations.jsonl"
    base = []
    for line in path.read_text().splitlines():
        for m in json.loads(line)["messages"]:
            base.append(m["content"])
    return [base[i % len(base)] + ("" if i < len(base) else f" (variant {i // len(base)})") for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    texts = load_texts(a.n)
    emb = Embedder(batch_size=a.batch_size)
    raw = SentenceTransformer(default_embedding_model(), device=emb.device)
    raw_default = lambda: raw.encode(texts, show_progress_bar=False)  # ST defaults (batch 32)
    raw_same = lambda: raw.encode(texts, batch_size=a.batch_size, show_progress_bar=False)
    ours = lambda: emb.encode(texts)
    ours(); raw_same()  # warm-up
    times = {"roost": [], "raw_same_batch": [], "raw_default_batch": []}
    for rep in range(a.repeats):
        runs = [("roost", ours), ("raw_same_batch", raw_same), ("raw_default_batch", raw_default)]
        if rep % 2:
            runs.reverse()
        for name, fn in runs:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ref = raw_same()
    diff = float(np.abs(emb.encode(texts[:200]) - ref[:200]).max())
    print(f"{len(texts)} texts, batch {a.batch_size}, device {emb.device}, load avg {os.getloadavg()}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"  {k:18s} median {med[k]:.2f}s ({len(texts) / med[k]:.0f} texts/s) runs {[round(t, 2) for t in v]}")
    print(f"speed ratio roost / raw (same batch size) = {med['raw_same_batch'] / med['roost']:.3f}")
    print(f"speed ratio roost / raw (ST default batch 32) = {med['raw_default_batch'] / med['roost']:.3f}")
    print(f"max |roost - raw| embedding difference = {diff:.2e}")


if __name__ == "__main__":
    main()
