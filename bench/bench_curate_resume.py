"""Resumable curation: a `roost curate` killed right after its embeddings are cached, re-run,
against the same curation run fresh.

For each row count: writes a synthetic SFT input (questions of 15-35 words from a vocabulary
of stdlib docstring words, answers of 60-120; 6% exact duplicates with other case and
spacing, 6% near duplicates with one word changed, 2% not requests), then runs, each through
the CLI in its own process (`roost curate`, heuristics + exact_dedup + semantic_dedup with
the recipe's embedding model, default all-MiniLM-L6-v2):

  fresh    uninterrupted, into its own OUT: the baseline;
  killed   into another OUT, SIGKILLed as soon as OUT/.cache/embedding-*/ appears (polled
           every 10 ms);
  resumed  the killed run's command again: pass 1 and the embeddings are read back;
  noop     the same command once more: "already curated", i.e. the CLI's fixed cost
           (Python, imports, Prefect), which is in every figure above too.

Prints absolute times, resumed / fresh, the load average beside each figure, and checks the
resumed output equals the fresh one (ids, columns, values). Then extrapolates each run to 1M
rows per part, not by a fit across runs (the load of a shared machine swings between runs):
the CLI's fixed cost stays, semantic dedup takes --dedup-1m-seconds (IVF at 1M rows,
bench_dedup.py's figure on these machines), everything else scales with rows at the rate
this run measured.

    python bench/bench_curate_resume.py --rows 20000 50000
    python bench/bench_curate_resume.py --rows 200000 1000000 --model static
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOST = str(Path(sys.executable).with_name("roost"))


def vocabulary() -> list[str]:
    import pydoc

    import argparse as a
    import collections
    import json as j
    import logging
    import pathlib
    import subprocess as sp
    import typing
    import unittest

    text = " ".join(pydoc.getdoc(obj) for mod in (a, collections, j, logging, pathlib, sp, typing, unittest)
                    for obj in [mod, *vars(mod).values()] if callable(obj) or obj is mod)
    return sorted({w.lower() for w in re.findall(r"[A-Za-z]{3,12}", text)})


def make_input(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = vocabulary()
    starts = ["Explain", "How do I", "Why does", "Write a short note on", "Summarize", "What is the difference between",
              "Give an example of", "Describe"]
    schema = pa.schema([("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))])
    questions: list[str] = []
    with pq.ParquetWriter(path, schema) as writer:
        for lo in range(0, rows, 10_000):
            batch = []
            for _ in range(lo, min(rows, lo + 10_000)):
                r = rng.random()
                if questions and r < 0.06:
                    q = rng.choice(questions).upper().replace(" ", "  ")
                elif questions and r < 0.12:
                    w = rng.choice(questions).split()
                    w[rng.randrange(1, len(w))] = rng.choice(words)
                    q = " ".join(w)
                elif r < 0.14:
                    q = "Here is my text:"
                else:
                    q = f"{rng.choice(starts)} {' '.join(rng.choices(words, k=rng.randint(15, 35)))}?"
                    questions.append(q)
                a = " ".join(rng.choices(words, k=rng.randint(60, 120))) + "."
                batch.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def run(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - t, load()


def kill_after_embedding(cmd: list[str], out: Path, env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:
        if any(p.parent.suffix != ".parts" for p in (out / ".cache").glob("embedding-*/meta.json")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    if proc.wait() != -signal.SIGKILL:
        raise SystemExit("the curation finished before it could be killed")
    return time.perf_counter() - t


def rows_of(out: Path) -> list[dict]:
    return [r for kind in ("data", "rejects") for f in sorted((out / kind).glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()]


def bench(rows: int, model: str | None, tmp: Path) -> dict:
    src = tmp / f"input-{rows}.parquet"
    make_input(src, rows)
    recipe = tmp / "curate.yaml"
    recipe.write_text(json.dumps({"embedding": {"model": model} if model else {}, "stages": [
        {"kind": "heuristics"}, {"kind": "exact_dedup"}, {"kind": "semantic_dedup"}]}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def cmd(out):
        return [ROOST, "curate", str(src), "--out", str(out), "--recipe", str(recipe)]

    fresh_s, fresh_load = run(cmd(tmp / f"fresh-{rows}"), env)
    fresh = json.loads((tmp / f"fresh-{rows}" / "manifest.json").read_text())
    killed_s = kill_after_embedding(cmd(tmp / f"out-{rows}"), tmp / f"out-{rows}", env)
    killed_load = load()
    resumed_s, resumed_load = run(cmd(tmp / f"out-{rows}"), env)
    noop_s, noop_load = run(cmd(tmp / f"out-{rows}"), env)
    m = json.loads((tmp / f"out-{rows}" / "manifest.json").read_text())
    dedup = [x["cache"]["entries"]["02-semantic_dedup"] for x in (fresh, m)]
    emb = m["cache"]["entries"]["embedding-first_instruction"]
    assert emb["status"] == "hit" and emb["embedded"] == 0, emb
    same = rows_of(tmp / f"out-{rows}") == rows_of(tmp / f"fresh-{rows}")
    return {"rows": rows, "fresh": fresh_s, "fresh_load": fresh_load, "killed_at": killed_s, "killed_load": killed_load,
            "resumed": resumed_s, "resumed_load": resumed_load, "noop": noop_s, "noop_load": noop_load,
            "embed": fresh["cache"]["entries"]["embedding-first_instruction"]["seconds"], "same": same,
            "dedup_fresh": dedup[0].get("seconds") or 0.0, "dedup_resumed": dedup[1].get("seconds") or 0.0,
            "kept": m["rows"], "statuses": {n: e["status"] for n, e in m["cache"]["entries"].items()}}


def at_1m(r: dict, dedup_1m: float) -> tuple[float, float]:
    """fresh and resumed seconds at 1M rows: fixed cost + per-row rest x 1M + dedup at 1M."""
    n = 1_000_000
    fresh = r["noop"] + (r["fresh"] - r["noop"] - r["dedup_fresh"]) / r["rows"] * n + dedup_1m
    resumed = r["noop"] + (r["resumed"] - r["noop"] - r["dedup_resumed"]) / r["rows"] * n + dedup_1m
    return fresh, resumed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 50_000])
    ap.add_argument("--model", default=None, help="embedding model (default: all-MiniLM-L6-v2; 'static': model2vec)")
    ap.add_argument("--dedup-1m-seconds", type=float, default=70.0, help="semantic dedup of 1M rows (IVF; 69.6 s for static embeddings of this text, 2026-11-26), for the 1M estimate")
    args = ap.parse_args()
    print(f"cpus={os.cpu_count()}  model={args.model or 'all-MiniLM-L6-v2'}  load average 1/5/15 min shown beside each figure")
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            r = bench(rows, args.model, Path(tmp))
            print(f"rows={rows:>8,}  fresh {r['fresh']:7.1f} s (load {r['fresh_load']}; embedding {r['embed']:.1f} s)  "
                  f"killed at {r['killed_at']:6.1f} s  resumed {r['resumed']:6.1f} s (load {r['resumed_load']})  "
                  f"ratio {r['resumed'] / r['fresh']:.3f}  [CLI fixed cost {r['noop']:.1f} s]  "
                  f"same output: {'yes' if r['same'] else 'NO'}  kept {r['kept']:,}", flush=True)
            print(f"    semantic dedup {r['dedup_fresh']:.1f} s fresh, {r['dedup_resumed']:.1f} s resumed; "
                  f"resumed run's cache: {r['statuses']}", flush=True)
            f1m, r1m = at_1m(r, args.dedup_1m_seconds)
            print(f"    at 1M rows, from this run's rates: fresh ~ {f1m:,.0f} s, resumed ~ {r1m:,.0f} s, "
                  f"ratio ~ {r1m / f1m:.3f}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
