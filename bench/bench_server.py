"""Benchmark: the vLLM-server engine (roost.engines.server_engine, a `vllm serve` process on this
machine) vs the in-process engine, on the same work:

- generate, greedy: N chat-templated prompts x up to T new tokens (greedy, float32 on both sides,
  so both do the same work: the share of identical outputs is printed);
- generate, seeded: N other prompts, temperature 1.0, one call seed (what Magpie does);
- deita: N conversations scored (complexity + quality prompts, one choice_logprobs call).

The in-process engine runs alone in a subprocess first (its engine exits before the server
starts: nothing idle competes for the cores); then the server starts (float32,
--no-enable-chunked-prefill, which a CPU server needs for seeded requests), gets one warm-up
call, and the same work runs through the server engine from this process, at each
--concurrency. Prefix caching is off on both sides (the rounds repeat prompts; the in-process
engine's seeded calls start from an empty cache anyway). Each ratio is server / in-process rows/s, printed beside the in-process absolute
rows/s (goal >= 0.9). Load averages are printed: the machine is shared.

    python bench/bench_server.py [--rows 256] [--max-tokens 64] [--concurrency 64,256]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = ROOT / ".cache" / "test-models" / "tiny-chatml"


def model_path() -> Path:
    from roost.tiny.models import TinyModelSpec, build_tiny_model

    return build_tiny_model(MODEL, TinyModelSpec(style="chatml"))


def conversations(start: int, n: int) -> list[list[dict]]:
    rows = [json.loads(line)["messages"] for line in (ROOT / "data" / "seed_conversations.jsonl").read_text().splitlines()
            if line.strip()]
    return [rows[(start + i) % len(rows)][:2] for i in range(n)]


def workload(engine, rows: int, max_tokens: int) -> dict:
    from roost.engines import Sampling
    from roost.engines.base import render_chat
    from roost.scorers.deita import DeitaScorer

    tok = engine.tokenizer

    def prompts(start: int) -> list[str]:
        return [render_chat(tok, c[:1], add_generation_prompt=True) for c in conversations(start, rows)]

    # warm-up: other prompts (no prefix-cache help for the timed ones)
    engine.generate(prompts(600)[:16], Sampling(max_tokens=8, temperature=0.0))
    scorer = DeitaScorer(engine)
    scorer.score_conversations(conversations(640, 16))

    out: dict = {}
    greedy = prompts(0)
    t = time.perf_counter()
    gens = engine.generate(greedy, Sampling(max_tokens=max_tokens, temperature=0.0))
    out["greedy"] = {"seconds": time.perf_counter() - t, "rows": len(gens),
                     "tokens": sum(g.completions[0].n_tokens for g in gens),
                     "ids": [g.completions[0].token_ids for g in gens]}
    seeded = prompts(rows)
    t = time.perf_counter()
    gens = engine.generate(seeded, Sampling(max_tokens=max_tokens, temperature=1.0), seed=1)
    out["seeded"] = {"seconds": time.perf_counter() - t, "rows": len(gens),
                     "tokens": sum(g.completions[0].n_tokens for g in gens)}
    convs = conversations(2 * rows, rows)
    t = time.perf_counter()
    scores = scorer.score_conversations(convs)
    out["deita"] = {"seconds": time.perf_counter() - t, "rows": len(scores),
                    "scores": [s["deita_score"] for s in scores]}
    return out


def local_worker(rows: int, max_tokens: int) -> None:
    from roost.engines import EngineConfig, get_engine

    engine = get_engine(EngineConfig(model=str(model_path()), dtype="float32", max_model_len=1024, seed=0,
                                     throughput={"enable_prefix_caching": False}))
    print("RESULT " + json.dumps(workload(engine, rows, max_tokens)), flush=True)


def run_local(rows: int, max_tokens: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", "--rows", str(rows), "--max-tokens", str(max_tokens)],
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"in-process worker failed:\n{proc.stderr[-3000:]}")


def start_server(path: Path, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--host", "127.0.0.1",
           "--port", str(port), "--max-model-len", "1024", "--dtype", "float32", "--seed", "0",
           "--no-enable-chunked-prefill", "--no-enable-prefix-caching"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.TransportError:
            pass
        time.sleep(1)
    stop_server(proc)
    raise RuntimeError("vllm serve did not become healthy in 600 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", default="64,256", help="server engine max_concurrency values to time")
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        local_worker(args.rows, args.max_tokens)
        return

    path = model_path()
    print(f"host: {os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.2f} (shared machine)")
    print(f"work: {args.rows} prompts x <= {args.max_tokens} tokens (greedy; seeded t=1.0), "
          f"deita on {args.rows} conversations; tiny ChatML model, float32", flush=True)
    load = os.getloadavg()[0]
    local = run_local(args.rows, args.max_tokens)
    print(f"in-process engine done (load average {load:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)

    from roost.engines import EngineConfig, get_engine

    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"roost-bench-server-{os.getpid()}.log"
    proc, url = start_server(path, log)
    try:
        for conc in [int(c) for c in args.concurrency.split(",")]:
            engine = get_engine(EngineConfig(model=str(path), dtype="float32", max_model_len=1024, seed=0,
                                             server={"url": url, "max_concurrency": conc}))
            load = os.getloadavg()[0]
            server = workload(engine, args.rows, args.max_tokens)
            same = sum(a == b for a, b in zip(server["greedy"]["ids"], local["greedy"]["ids"]))
            diff = max(abs(a - b) for a, b in zip(server["deita"]["scores"], local["deita"]["scores"])
                       if a is not None and b is not None)
            print(f"\n== server engine, max_concurrency {conc} (load average {load:.2f} -> {os.getloadavg()[0]:.2f}) ==")
            for phase in ("greedy", "seeded", "deita"):
                s, l_ = server[phase], local[phase]
                s_rate, l_rate = s["rows"] / s["seconds"], l_["rows"] / l_["seconds"]
                extra = ""
                if "tokens" in s:
                    extra = (f"; tokens/s {s['tokens'] / s['seconds']:.0f} vs {l_['tokens'] / l_['seconds']:.0f} "
                             f"({s['tokens']} vs {l_['tokens']} tokens)")
                print(f"{phase:7s} ratio {s_rate / l_rate:.2f}  (server {s_rate:.1f} rows/s, in-process "
                      f"{l_rate:.1f} rows/s){extra}")
            print(f"greedy outputs identical to in-process: {same}/{args.rows}; deita max |diff| {diff:.2e}")
            engine.close()
    finally:
        stop_server(proc)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}; server log {log}")


if __name__ == "__main__":
    main()
