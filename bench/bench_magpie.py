"""Magpie generation stage vs raw `LLM.generate`, same engine, prompts and sampling, one process.

Both sides do the same two stages: N instructions from the pre-query template, then one
response per usable instruction through the chat template. Throughput is generated tokens
per second (rejected turns included on both sides); the ratio is roost / raw, goal >= 0.95.

    python bench/bench_magpie.py [--model PATH_OR_ID] [--rows 512] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="default: the tiny ChatML model, built if missing")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--instruction-max-tokens", type=int, default=64)
    ap.add_argument("--response-max-tokens", type=int, default=128)
    args = ap.parse_args()

    from vllm import SamplingParams

    from roost.config import SamplingConfig
    from roost.engines import EngineConfig, get_engine
    from roost.synthesizers.common.templates import first_turn_template
    from roost.synthesizers.magpie import Magpie, MagpieConfig
    from roost.tiny.models import TinyModelSpec, build_tiny_model

    model = args.model or str(build_tiny_model(REPO / ".cache" / "models" / "tiny-chatml", TinyModelSpec()))
    engine = get_engine(EngineConfig(model=model, max_model_len=1024))
    config = MagpieConfig(
        max_rounds=1,
        instruction=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=args.instruction_max_tokens),
        response=SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=args.response_max_tokens),
    )
    synth = Magpie(config, engine, model_id=model)
    llm, tok = engine._llm, engine.tokenizer
    pre = first_turn_template(tok, model, None)
    si, sr = synth.instruction_sampling, synth.response_sampling

    def params(s, n):
        return SamplingParams(n=n, max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p,
                              stop=list(s.stop), stop_token_ids=list(s.stop_token_ids))

    def raw() -> tuple[int, float]:
        t = time.perf_counter()
        out = llm.generate([pre], params(si, args.rows), use_tqdm=False)[0].outputs
        instructions = [c.text.strip() for c in out if c.finish_reason == "stop" and c.text.strip()]
        prompts = [tok.apply_chat_template([{"role": "user", "content": x}], tokenize=False,
                                           add_generation_prompt=True) for x in instructions]
        out2 = llm.generate(prompts, params(sr, 1), use_tqdm=False)
        tokens = sum(len(c.token_ids) for c in out) + sum(len(o.outputs[0].token_ids) for o in out2)
        return tokens, time.perf_counter() - t

    def roost(seed: int) -> tuple[int, float]:
        t = time.perf_counter()
        result = synth.generate(args.rows, seed)  # seeded engine calls, as roost builds run
        return result.stats["generated_tokens"], time.perf_counter() - t

    raw(), roost(0)  # warm-up
    ratios, raw_tps, roost_tps = [], [], []
    for r in range(args.repeats):
        a_tokens, a_s = raw()
        b_tokens, b_s = roost(r + 1)
        raw_tps.append(a_tokens / a_s)
        roost_tps.append(b_tokens / b_s)
        ratios.append(roost_tps[-1] / raw_tps[-1])
        print(f"repeat {r}: raw {a_tokens} tok in {a_s:.2f}s = {raw_tps[-1]:,.0f} tok/s | "
              f"roost {b_tokens} tok in {b_s:.2f}s = {roost_tps[-1]:,.0f} tok/s | ratio {ratios[-1]:.3f}")
    print(f"model={model} rows={args.rows} device={engine.describe()['device']}")
    print(f"median raw {statistics.median(raw_tps):,.0f} tok/s, roost {statistics.median(roost_tps):,.0f} tok/s, "
          f"roost/raw = {statistics.median(ratios):.3f} (goal >= 0.95)")


if __name__ == "__main__":
    main()
