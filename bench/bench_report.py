"""`roost report` on a big output: time and peak memory vs loading the table whole.

Makes (once; cached under .cache/bench-report/) a synthetic curated SFT output of N rows:
10 data shards of conversations (a ~30-word instruction and a ~150-word answer) with deita,
reward and semantic-dedup columns, rejects from three stages, and a manifest shaped like
`roost curate`'s. Then, each in a fresh Python process so neither sees the other's memory,
runs (a) `roost.report.write_report` and (b) the baseline that loads the data whole with
`pyarrow.parquet.read_table`, and prints time and peak RSS (the child process's ru_maxrss,
which sees polars' and arrow's native allocations, unlike tracemalloc) of both and their ratios.

    python bench/bench_report.py [--rows 1000000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SHARD = 100_000
ROW_GROUP = 4096
FORMAT = 1  # bump when make_output changes: the cached output is then made again
STAGES = [("heuristics", "too_short", 0.01), ("exact_dedup", "exact_duplicate", 0.02),
          ("semantic_dedup", "semantic_duplicate", 0.03)]


def _texts(rng: np.random.Generator, words: np.ndarray, n: int, lo: int, hi: int) -> list[str]:
    lengths = rng.integers(lo, hi, n)
    picked = rng.choice(words, lengths.sum())
    ends = np.cumsum(lengths)
    return [" ".join(picked[e - k:e]) for e, k in zip(ends, lengths)]


def _shard(rng: np.random.Generator, words: np.ndarray, start: int, n: int) -> pa.Table:
    from roost.schemas import MESSAGES, SFT

    questions = _texts(rng, words, n, 5, 60)
    answers = _texts(rng, words, n, 20, 300)
    contents = pa.array([t for pair in zip(questions, answers) for t in pair])
    roles = pa.array(["user", "assistant"] * n)
    messages = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
                                        pa.StructArray.from_arrays([roles, contents], fields=list(MESSAGES.value_type)))
    deita = rng.gamma(4.0, 1.5, n)
    deita[rng.random(n) < 0.01] = np.nan  # a few rows the scorer could not score
    columns = {
        "id": pa.array([f"{start + i:024x}" for i in range(n)]),
        "messages": messages,
        "n_turns": pa.array(np.ones(n, np.int32)),
        "input_tokens": pa.array(np.array([len(q) for q in questions]) // 4),
        "output_tokens": pa.array(np.array([len(a) for a in answers]) // 4),
        "nearest_similarity": pa.array(rng.beta(6, 4, n) * 0.9),
        "deita_score": pa.array(deita),
        "reward": pa.array(rng.normal(0.5, 1.2, n)),
    }
    schema = pa.schema([SFT.field("id"), SFT.field("messages"), SFT.field("n_turns"), SFT.field("input_tokens"),
                        SFT.field("output_tokens"), pa.field("nearest_similarity", pa.float64()),
                        pa.field("deita_score", pa.float64()), pa.field("reward", pa.float64())])
    return pa.table(columns, schema=schema)


def _rejects(rng: np.random.Generator, n: int) -> tuple[pa.Table, dict[str, int]]:
    from roost.schemas import REJECT

    rows, counts = [], {}
    for stage, reason, share in STAGES:
        k = int(n * share)
        counts[reason] = k
        for i in range(k):
            detail = f"cosine {rng.uniform(0.9, 1.0):.4f} >= 0.9" if reason == "semantic_duplicate" else reason
            record = json.dumps({"messages": [{"role": "user", "content": "w1 w2"}]})
            rows.append({"id": f"rej-{stage}-{i}", "stage": stage, "reason": reason, "detail": detail,
                         "duplicate_of": None, "record": record})
    return pa.Table.from_pylist(rows, schema=REJECT), counts


def make_output(root: Path, rows: int) -> Path:
    """The synthetic output at root (reused when its manifest, written last, is there)."""
    if (root / "manifest.json").exists():
        return root
    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(5000)])
    shards = -(-rows // SHARD)
    removed: dict[str, int] = {}
    for s in range(shards):
        n = min(SHARD, rows - s * SHARD)
        name = f"train-{s:05d}-of-{shards:05d}.parquet"
        for sub, table in (("data", _shard(rng, words, s * SHARD, n)), ("rejects", None)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            if table is None:
                table, counts = _rejects(rng, n)
                for k, v in counts.items():
                    removed[k] = removed.get(k, 0) + v
            # row groups of 4096 rows, as roost's ShardedOutput writes them
            pq.write_table(table, root / sub / name, compression="zstd", row_group_size=ROW_GROUP)
        print(f"  shard {s + 1}/{shards} written", file=sys.stderr, flush=True)
    rejects = sum(removed.values())
    stages, rows_in = [], rows + rejects
    for stage, reason, _ in STAGES:
        settings = {"threshold": 0.9} if stage == "semantic_dedup" else {}
        stages.append({"name": stage, "rows_in": rows_in, "kept": rows_in - removed[reason],
                       "removed": {reason: removed[reason]}, "settings": settings})
        rows_in -= removed[reason]
    manifest = {"kind": "curated", "row_kind": "sft", "recipe": {"name": "bench-report"}, "input_rows": rows + rejects,
                "stages": stages, "rows": rows, "rejects": rejects, "rejects_by_reason": removed, "split": "train",
                "num_shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def _worker(mode: str, root: str, html: str) -> None:
    t = time.perf_counter()
    if mode == "report":
        from roost.report import write_report

        write_report(Path(root), Path(html))
    elif mode == "whole":
        pq.read_table(Path(root) / "data")
    elif mode == "make":
        make_output(Path(root), int(html))
    elif mode == "imports":
        import roost.report  # noqa: F401  (what the report process holds before reading anything)
    # ru_maxrss of this whole child process (KiB on Linux): native allocations included
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def _measure(mode: str, root: Path, html: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of `mode` run in a fresh child process. The child reports its
    own ru_maxrss: RUSAGE_CHILDREN in this process would keep only the largest child's peak."""
    done = subprocess.run([sys.executable, __file__, "--worker", mode, str(root), str(html)],
                          check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], result["maxrss_kb"] / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--worker", nargs=3, metavar=("MODE", "ROOT", "HTML"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker(*args.worker)
        return
    root = REPO / ".cache" / "bench-report" / f"rows-{args.rows}-v{FORMAT}"
    t = time.perf_counter()
    # Made in a child: a forked child starts with its parent's ru_maxrss, so this process stays small.
    subprocess.run([sys.executable, __file__, "--worker", "make", str(root), str(args.rows)], check=True,
                   stdout=subprocess.DEVNULL)
    size = sum(f.stat().st_size for f in (root / "data").glob("*.parquet")) / 2**20
    print(f"output: {root} ({args.rows:,} rows, {size:,.0f} MB of Parquet; ready in {time.perf_counter() - t:.1f}s)")
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "report.html"
        _, imports_mb = _measure("imports", root, html)
        report_s, report_mb = _measure("report", root, html)
        whole_s, whole_mb = _measure("whole", root, html)
        page_kb = html.stat().st_size / 1024
    print(f"roost report: {report_s:.1f}s, peak RSS {report_mb:,.0f} MB (of which {imports_mb:,.0f} MB is the "
          f"interpreter and imports), page {page_kb:,.0f} KB -> {'under' if report_s < 60 else 'OVER'} a minute")
    print(f"time:   report / whole-table load = {report_s / whole_s:.2f}  (baseline pq.read_table: {whole_s:.1f}s)")
    print(f"memory: report / whole-table load = {report_mb / whole_mb:.2f}  (baseline pq.read_table: "
          f"peak RSS {whole_mb:,.0f} MB)")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
