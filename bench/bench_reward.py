"""Benchmark: reward-model scoring, roost's two backends vs a per-row transformers forward.

The baseline is what peers' reward scripts do (Magpie's ArmoRM script: batch size 1, "no
batching ... pad"): one conversation at a time through `AutoModelForSequenceClassification`,
float32, on the same conversations, rendered and tokenized the same way. Every roost figure is
printed as a ratio to that baseline *and* beside the baseline's absolute rows/s, with its share
of a float32 (or bfloat16) 2048^2 matmul measured in the same run, and the largest |difference|
of its rewards from the baseline's.

- roost transformers: `get_reward_scorer(RewardModelConfig(backend="transformers"))`, padded
  batches sorted by length (at most `max_batch_tokens` padded tokens each: the default for the
  model first, then the others asked for), float32 Linear layers on oneDNN, in this process;
- roost vLLM: `backend="vllm"` (LLM(runner="pooling").classify, raw logits), in a subprocess
  started after the transformers timings, so no idle engine competes for the two cores (vLLM's
  engine core spins on a core while it waits). Prefix caching off for the timed runs (every
  token computed, honest FLOP/s); "as shipped" (caching on) is printed too.

Conversations: `--turns` consecutive seed pairs joined into one multi-turn conversation.
Models: "tiny" (the test RM, 2 x 128) and "bench" (12 layers x 768, random init, chatml).

Run:  python bench/bench_reward.py [--rows 96] [--turns 3] [--models tiny,bench]
      [--budgets default,2048] [--vllm-dtypes float32,bfloat16] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = {
    "tiny": (ROOT / ".cache" / "test-models" / "tiny-rm-chatml", dict()),
    "bench": (
        ROOT / ".cache" / "bench-models" / "rm-chatml-12x768",
        dict(hidden_size=768, num_heads=12, num_kv_heads=12, intermediate_size=3072, num_layers=12,
             train_steps=0),
    ),
}


def build(name: str) -> Path:
    from roost.tiny.models import TinyRewardSpec, build_tiny_reward_model

    path, spec = MODELS[name]
    return build_tiny_reward_model(path, TinyRewardSpec(**spec))


def conversations(n: int, turns: int, skip: int = 0) -> list[list[dict]]:
    from roost.tiny.models import load_seed_conversations

    rows = load_seed_conversations()
    out = []
    at = skip * turns
    for _ in range(n):
        conv = []
        for _ in range(turns):
            conv += rows[at % len(rows)]
            at += 1
        out.append(conv)
    return out


def model_flops(path: Path, token_counts: list[int]) -> float:
    """2 x (non-embedding params) per token + causal attention + the head on every position."""
    cfg = json.loads((path / "config.json").read_text())
    d, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * (d // cfg["num_attention_heads"])
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * inter
    labels = len(cfg.get("id2label") or {0: 0})
    total = 0.0
    for t in token_counts:
        total += 2 * per_layer * layers * t + layers * 2 * t * t * d + 2 * d * labels * t
    return total


def reference(path: Path, convs, repeats: int) -> dict:
    """One conversation per forward, float32, as the peers' scripts do."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).eval()
    encoded = [tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False)["input_ids"] for c in convs]
    runs = []
    with torch.inference_mode():
        model(torch.tensor([encoded[0]]))  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            scores = [float(model(torch.tensor([ids])).logits[0, 0]) for ids in encoded]
            runs.append(time.perf_counter() - start)
    return {"scores": scores, "seconds": min(runs), "runs": runs, "tokens": [len(e) for e in encoded]}


def roost_transformers(path: Path, convs, warm, max_batch_tokens: int | None, repeats: int, dtype: str = "auto") -> dict:
    from roost.engines import RewardModelConfig
    from roost.scorers.reward import get_reward_scorer

    scorer = get_reward_scorer(RewardModelConfig(model=str(path), backend="transformers", batch_size=64,
                                                 max_batch_tokens=max_batch_tokens, dtype=dtype))
    scorer.score(warm)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        rewards = scorer.score(convs)
        runs.append(time.perf_counter() - start)
    info = scorer.describe()
    return {"scores": [r.value for r in rewards], "seconds": min(runs), "runs": runs,
            "dtype": info["dtype"], "onednn": info["onednn_linear_layers"], "budget": info["max_batch_tokens"]}


def worker(path: str, dtype: str, rows: int, turns: int, prefix_caching: bool) -> None:
    from roost.engines import RewardModelConfig
    from roost.scorers.reward import get_reward_scorer

    t0 = time.perf_counter()
    scorer = get_reward_scorer(RewardModelConfig(
        model=path, backend="vllm", dtype=dtype, throughput={"enable_prefix_caching": prefix_caching}))
    startup = time.perf_counter() - t0
    scorer.score(conversations(16, turns, skip=rows))  # warm-up on other rows
    convs = conversations(rows, turns)
    runs = []
    for _ in range(1 if prefix_caching else 2):  # with caching a second run would be served from it
        start = time.perf_counter()
        rewards = scorer.score(convs)
        runs.append(time.perf_counter() - start)
    print("RESULT " + json.dumps({"scores": [r.value for r in rewards], "seconds": min(runs), "runs": runs,
                                  "startup": startup, "dtype": scorer.describe()["dtype"]}), flush=True)


def run_worker(path: Path, dtype: str, rows: int, turns: int, prefix_caching: bool = False) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", str(path), "--dtype", dtype, "--rows", str(rows),
         "--turns", str(turns), *(["--prefix-caching"] if prefix_caching else [])],
        capture_output=True, text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--models", default="tiny,bench")
    ap.add_argument("--budgets", default="default,2048", help="max_batch_tokens values (transformers)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs in this process (best counts)")
    ap.add_argument("--vllm-dtypes", default="float32,bfloat16")
    ap.add_argument("--worker")
    ap.add_argument("--dtype")
    ap.add_argument("--prefix-caching", action="store_true")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.dtype, args.rows, args.turns, args.prefix_caching)
        return

    import torch
    from bench_deita import matmul_rates

    torch.set_num_threads(os.cpu_count() or 2)
    print(f"host: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"load average at start {os.getloadavg()[0]:.2f} (shared machine: other jobs may run)")
    convs = conversations(args.rows, args.turns)
    warm = conversations(16, args.turns, skip=args.rows)
    for name in args.models.split(","):
        path = build(name)
        print(f"\n== reward model {name} ({path.name}), {args.rows} conversations of {args.turns} turns ==", flush=True)
        rates = matmul_rates("float32")
        peaks = {"float32": max(rates.values())}
        print("float32 2048^2 matmul: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items())
              + " (peak = the faster, re-measured before each figure, best kept)", flush=True)
        load0 = os.getloadavg()[0]
        ref = reference(path, convs, args.repeats)
        n_tok = sum(ref["tokens"])
        flops = model_flops(path, ref["tokens"])
        ref_rate = args.rows / ref["seconds"]

        def pct(seconds: float, dtype: str) -> str:
            # Re-measured before every figure and the best kept: a burst of load from other jobs
            # during one measurement must not lower the peak (and inflate the shares).
            peaks[dtype] = max(peaks.get(dtype, 0.0), *matmul_rates(dtype, windows=3).values())
            return f"{100 * flops / seconds / peaks[dtype]:.0f}% of {dtype} matmul peak {peaks[dtype] / 1e9:.0f} GFLOP/s"

        base = f"baseline {ref_rate:.1f} rows/s"
        print(f"baseline, per-row transformers float32: {ref_rate:.1f} rows/s ({n_tok / ref['seconds']:.0f} tok/s, "
              f"{n_tok / args.rows:.0f} tok/row, runs {', '.join(f'{r:.2f}' for r in ref['runs'])} s), "
              f"{pct(ref['seconds'], 'float32')}", flush=True)
        budgets = [None if b == "default" else int(b) for b in args.budgets.split(",")]
        for budget in budgets:
            ours = roost_transformers(path, convs, warm, budget, args.repeats)
            rate = args.rows / ours["seconds"]
            diff = max(abs(a - b) for a, b in zip(ours["scores"], ref["scores"]))
            label = f"{ours['budget']}{' (default)' if budget is None else ''}"
            print(f"roost transformers {ours['dtype']}, max_batch_tokens {label} (oneDNN Linear layers: "
                  f"{ours['onednn']}): {rate:.1f} rows/s = {rate / ref_rate:.2f}x "
                  f"({base}) | {pct(ours['seconds'], 'float32')} | max |diff| {diff:.1e} "
                  f"| runs {', '.join(f'{r:.2f}' for r in ours['runs'])} s", flush=True)
        for dt in args.vllm_dtypes.split(","):
            if dt != "float32":  # the transformers backend in the same dtype, first budget
                ours = roost_transformers(path, convs, warm, budgets[0], args.repeats, dtype=dt)
                rate = args.rows / ours["seconds"]
                diff = max(abs(a - b) for a, b in zip(ours["scores"], ref["scores"]))
                print(f"roost transformers {ours['dtype']}, max_batch_tokens {ours['budget']}: "
                      f"{rate:.1f} rows/s = {rate / ref_rate:.2f}x ({base}) | {pct(ours['seconds'], dt)} | "
                      f"max |diff| {diff:.1e} | runs {', '.join(f'{r:.2f}' for r in ours['runs'])} s", flush=True)
            for caching in (False, True):
                ours = run_worker(path, dt, args.rows, args.turns, prefix_caching=caching)
                rate = args.rows / ours["seconds"]
                diff = max(abs(a - b) for a, b in zip(ours["scores"], ref["scores"]))
                label = "as shipped (prefix caching on)" if caching else "prefix caching off"
                print(f"roost vLLM {ours['dtype']}, {label}: {rate:.1f} rows/s = {rate / ref_rate:.2f}x ({base}) | "
                      f"{pct(ours['seconds'], dt)} | max |diff| {diff:.1e} | runs "
                      f"{', '.join(f'{r:.2f}' for r in ours['runs'])} s, startup {ours['startup']:.0f} s", flush=True)
        print(f"load average before/after: {load0:.1f}/{os.getloadavg()[0]:.1f}")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
