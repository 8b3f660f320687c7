"""Benchmark: roost's batched deita scorer, on both backends (vLLM, and batched transformers
from roost.engines.hf_scoring), vs a per-sample transformers reference.

The reference does what deita's own code does: one prompt at a time through a transformers
causal LM (deita calls generate(max_new_tokens=2); we do a single forward with
logits_to_keep=1, which is cheaper, so the reference is if anything flattered). Same model,
same rows (the quality prompt over seed conversations), same formula.

Each vLLM engine runs in its own subprocess, one at a time, so no idle engine competes for
the two cores while something else is being timed (vLLM's engine core spins on a core while
it waits). The transformers backend runs in this process, before any vLLM subprocess.
Every ratio is printed beside the reference's absolute rows/s. Prefix caching is turned off in the
benchmark engines so that every prompt token is really computed (the FLOP/s figure is then
honest; with caching on, the shared template prefix is computed once).

Run:  python bench/bench_deita.py [--rows 200] [--models tiny,bench] [--dtypes float32,bfloat16]
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

MODELS = {
    "tiny": (ROOT / ".cache" / "test-models" / "tiny-chatml", dict(style="chatml")),
    "bench": (
        ROOT / ".cache" / "bench-models" / "chatml-12x768",
        dict(style="chatml", hidden_size=768, num_heads=12, num_kv_heads=12,
             intermediate_size=3072, num_layers=12, train_steps=0),
    ),
}


def build(name: str) -> Path:
    from roost.tiny.models import TinyModelSpec, build_tiny_model

    path, spec = MODELS[name]
    return build_tiny_model(path, TinyModelSpec(**spec))


def seed_rows(n: int, skip: int = 0) -> tuple[list[str], list[str]]:
    rows = [json.loads(l)["messages"] for l in (ROOT / "data" / "seed_conversations.jsonl").read_text().splitlines() if l.strip()]
    rows = rows[skip:skip + n]
    return [r[0]["content"] for r in rows], [r[1]["content"] for r in rows]


def model_flops(path: Path, token_counts: list[int]) -> float:
    """2 * (non-embedding params) per token + lm_head on the last position + causal attention."""
    cfg = json.loads((path / "config.json").read_text())
    d, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * (d // cfg["num_attention_heads"])
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * inter
    total = 0.0
    for t in token_counts:
        total += 2 * per_layer * layers * t  # linear layers
        total += layers * 2 * t * t * d  # QK^T and AV, causal half: 2 * (2 * t^2 * d) / 2
        total += 2 * d * cfg["vocab_size"]  # lm_head, last position only
    return total


def matmul_flops(dtype_name: str, n: int = 2048, windows: int = 6, window: float = 0.5) -> float:
    """Best of several short windows: the practical limit, as little disturbed by other jobs as we can.

    The faster of torch's own matmul and oneDNN's: for float32 torch calls MKL, which on these
    AMD CPUs runs at less than half of oneDNN's rate (110 vs 235 GFLOP/s per core), so a
    "share of peak" against MKL alone would flatter anything that uses oneDNN (vLLM-cpu does;
    roost's transformers backend does, see roost.engines.hf_scoring.use_onednn_linear)."""
    return max(matmul_rates(dtype_name, n, windows, window).values())


def matmul_rates(dtype_name: str, n: int = 2048, windows: int = 6, window: float = 0.5) -> dict[str, float]:
    """FLOP/s of an n x n matmul: torch.mm, and (if available) oneDNN's linear on packed weights."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    kernels = {"torch.mm": lambda: a @ b}
    if torch.backends.mkldnn.is_available():
        a_dnn, b_dnn = a.to_mkldnn(), b.to_mkldnn()
        kernels["onednn"] = lambda: torch._C._nn.mkldnn_linear(a_dnn, b_dnn, None)
    rates = {}
    for name, fn in kernels.items():
        try:
            for _ in range(2):
                fn()
        except RuntimeError:  # pragma: no cover - a dtype oneDNN does not take here
            continue
        best = 0.0
        for _ in range(windows):
            reps, start = 0, time.perf_counter()
            while time.perf_counter() - start < window:
                fn()
                reps += 1
            best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - start))
        rates[name] = best
    return rates


def reference(path: Path, dtype_name: str, instructions, responses, repeats: int = 2) -> dict:
    """Per-sample transformers forward, as deita does (one prompt per call)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from roost.scorers.deita import QUALITY_TEMPLATE

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype_name)).eval()
    digit_ids = tok.convert_tokens_to_ids(list("123456"))
    weights = torch.arange(1, 7, dtype=torch.float64)
    encoded = []
    for i, r in zip(instructions, responses):
        ids = tok(QUALITY_TEMPLATE.format(instruction=i, output=r), add_special_tokens=False)["input_ids"]
        encoded.append(([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids)
    runs = []
    with torch.inference_mode():
        model(torch.tensor([encoded[0]]), logits_to_keep=1)  # warm-up
        for _ in range(repeats):
            scores = []
            start = time.perf_counter()
            for ids in encoded:
                logits = model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1].double()
                scores.append(float((torch.softmax(logits[digit_ids], 0) * weights).sum()))
            runs.append(time.perf_counter() - start)
    return {"scores": scores, "seconds": min(runs), "runs": runs, "tokens": [len(e) for e in encoded]}


def roost_transformers(path: Path, dtype: str, rows: int, repeats: int = 2) -> dict:
    """roost's batched transformers backend (get_scoring_engine(..., backend="transformers"))."""
    from roost.engines import EngineConfig
    from roost.engines.hf_scoring import get_scoring_engine
    from roost.scorers.deita import DeitaScorer

    t0 = time.perf_counter()
    engine = get_scoring_engine(EngineConfig(model=str(path), dtype=dtype, max_model_len=2048, seed=0),
                                backend="transformers")
    startup = time.perf_counter() - t0
    scorer = DeitaScorer(engine)
    wi, wr = seed_rows(32, skip=rows)
    scorer.quality(wi, wr)
    instructions, responses = seed_rows(rows)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = scorer.quality(instructions, responses)
        runs.append(time.perf_counter() - start)
    return {"scores": [s.value for s in scores], "seconds": min(runs), "runs": runs, "startup": startup,
            "dtype": engine.describe()["dtype"], "max_batch_tokens": engine.max_batch_tokens,
            "onednn": engine.onednn_layers}


def worker(path: str, dtype: str, rows: int, prefix_caching: bool = False) -> None:
    """One vLLM engine: warm up on other rows, then time the batched scorer on the rows.

    With prefix caching (vLLM's default, how roost runs) only the first timed run counts: a
    second run of the same rows would be served from the cache."""
    from roost.engines import EngineConfig, get_engine
    from roost.scorers.deita import DeitaScorer

    t0 = time.perf_counter()
    engine = get_engine(EngineConfig(model=path, dtype=dtype, max_model_len=2048, seed=0,
                                     throughput={"enable_prefix_caching": prefix_caching}))
    startup = time.perf_counter() - t0
    scorer = DeitaScorer(engine)
    wi, wr = seed_rows(32, skip=rows)  # different prompts: no cache effects either way
    scorer.quality(wi, wr)
    instructions, responses = seed_rows(rows)
    runs = []
    for _ in range(1 if prefix_caching else 2):  # without caching the second run recomputes everything
        start = time.perf_counter()
        scores = scorer.quality(instructions, responses)
        runs.append(time.perf_counter() - start)
    elapsed = min(runs)
    tokens = [len(engine.encode(scorer.quality_prompt(i, r).text)) for i, r in zip(instructions, responses)]
    print("RESULT " + json.dumps({
        "scores": [s.value for s in scores], "seconds": elapsed, "runs": runs, "startup": startup,
        "tokens": tokens, "dtype": engine.describe()["dtype"],
    }), flush=True)


def run_worker(path: Path, dtype: str, rows: int, prefix_caching: bool = False) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", str(path), "--dtype", dtype, "--rows", str(rows),
         *(["--prefix-caching"] if prefix_caching else [])],
        capture_output=True, text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--models", default="tiny,bench")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--worker")
    ap.add_argument("--dtype")
    ap.add_argument("--prefix-caching", action="store_true")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.dtype, args.rows, args.prefix_caching)
        return

    import torch

    torch.set_num_threads(os.cpu_count() or 2)
    print(f"host: {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}; "
          f"load average at start {os.getloadavg()[0]:.2f} (shared machine: other jobs may run)")
    instructions, responses = seed_rows(args.rows)
    dtypes = args.dtypes.split(",")
    for name in args.models.split(","):
        path = build(name)
        print(f"\n== model {name} ({path.name}), {args.rows} rows, quality prompt ==", flush=True)
        ref32 = None
        for dt in dtypes:
            peak = matmul_flops(dt)
            load0 = os.getloadavg()[0]
            ref = reference(path, dt, instructions, responses)
            if dt == "float32":
                ref32 = ref
            hf = roost_transformers(path, dt, args.rows)
            ours = run_worker(path, dt, args.rows)
            peak = max(peak, matmul_flops(dt))
            n_tok = sum(ours["tokens"])
            flops = model_flops(path, ours["tokens"])
            ref_rate = args.rows / ref["seconds"]
            base = f"reference {ref_rate:.1f} rows/s"

            def share(seconds: float) -> str:
                return f"{flops / seconds / 1e9:.1f} GFLOP/s = {100 * flops / seconds / peak:.0f}% of peak"

            def diffs(scores) -> str:
                text = f"max |diff| vs transformers {dt} {max(abs(a - b) for a, b in zip(scores, ref['scores'])):.2e}"
                if ref32 is not None and dt != "float32":
                    text += f", vs float32 {max(abs(a - b) for a, b in zip(scores, ref32['scores'])):.2e}"
                return text

            hf_rate = args.rows / hf["seconds"]
            ours_rate = args.rows / ours["seconds"]
            line = (
                f"[{dt}] {n_tok / args.rows:.0f} tok/row; {dt} 2048^2 matmul peak {peak / 1e9:.1f} GFLOP/s "
                f"(faster of torch.mm and oneDNN)\n"
                f"    reference, per-sample transformers {dt}: {ref_rate:.1f} rows/s "
                f"(runs {', '.join(f'{r:.1f}' for r in ref['runs'])} s) | {share(ref['seconds'])}\n"
                f"    roost transformers (batched, {hf['dtype']}, max_batch_tokens {hf['max_batch_tokens']}, "
                f"oneDNN Linear layers {hf['onednn']}): {hf_rate:.1f} rows/s = "
                f"{hf_rate / ref_rate:.2f}x ({base}) | {share(hf['seconds'])} | {diffs(hf['scores'])} "
                f"| runs {', '.join(f'{r:.2f}' for r in hf['runs'])} s, load {hf['startup']:.0f} s\n"
                f"    roost vLLM ({ours['dtype']}, prefix caching off): {ours_rate:.1f} rows/s = "
                f"{ours_rate / ref_rate:.2f}x ({base}) | {share(ours['seconds'])} | {diffs(ours['scores'])} "
                f"| runs {', '.join(f'{r:.2f}' for r in ours['runs'])} s, startup {ours['startup']:.0f} s"
            )
            cached = run_worker(path, dt, args.rows, prefix_caching=True)
            cached_rate = args.rows / cached["seconds"]
            line += (f"\n    roost vLLM as shipped (prefix caching on: the shared template prefix is computed once): "
                     f"{cached_rate:.1f} rows/s = {cached_rate / ref_rate:.2f}x ({base}) | {diffs(cached['scores'])}")
            line += f"\n    load average before/after: {load0:.1f}/{os.getloadavg()[0]:.1f}"
            print(line, flush=True)
            if ours["tokens"] != ref["tokens"]:
                print("    note: prompt token counts differ between roost and the reference")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
