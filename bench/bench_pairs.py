"""Reward-ranked pair building vs the raw calls it is made of, same models, one process.

roost: `RewardPairs.generate(shard)` over N prompts: K responses per prompt in one seeded
engine call (`n=K`), every finished response scored by the reward model (roost's `auto`
backend), pairs built. Baseline, on the same engine and prompts: one raw `LLM.generate` with
`SamplingParams(n=K)` on the chat-templated prompts, then a raw batched reward forward of
the same backend over every finished response (sorted by length, padded batches of the
same size). Timed alternately; the ratio is baseline time / roost time (goal >= 0.95).
roost's seeded call on CPU pauses the scheduler, clears the prefix cache and reseeds the
worker (the price of reproducible shards); the baseline pays none of it.

    python bench/bench_pairs.py [--prompts 256] [--k 4] [--max-tokens 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from vllm import SamplingParams

    from roost.recipe import validate_recipe
    from roost.schemas import MESSAGES
    from roost.synthesizers.reward_pairs import RewardPairs
    from roost.tiny.models import TinyModelSpec, TinyRewardSpec, build_tiny_model, build_tiny_reward_model

    policy = str(build_tiny_model(REPO / ".cache" / "test-models" / "tiny-chatml", TinyModelSpec()))
    rm = str(build_tiny_reward_model(REPO / ".cache" / "test-models" / "tiny-rm-chatml", TinyRewardSpec()))
    seeds = [json.loads(line)["messages"] for line in (REPO / "data" / "seed_conversations.jsonl").read_text().splitlines()]
    prompts = [[m[0]] for m in seeds[: args.prompts]]
    data = REPO / ".cache" / "bench-pairs-prompts.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": p} for p in prompts],
                                        schema=pa.schema([pa.field("messages", MESSAGES)])), data)
    recipe = validate_recipe({
        "name": "bench-pairs", "model": {"model": policy, "max_model_len": 1024, "seed": 0},
        "output": {"shard_size": args.prompts},
        "synthesizer": {"kind": "reward_pairs", "prompts": {"path": str(data)}, "k": args.k,
                        "sampling": {"temperature": 1.0, "top_p": 0.95, "max_tokens": args.max_tokens},
                        "reward_model": {"model": rm, "max_model_len": 1024}},
    })
    synth = RewardPairs(recipe.synthesizer, recipe)
    shard = synth.plan()[0]
    engine, scorer = synth._policy(), synth._reward()
    llm, tok = engine._llm, engine.tokenizer
    backend = scorer.describe()
    print(f"reward backend: {backend.get('backend')} ({backend.get('backend_choice', '')})")

    def raw_reward_forward(convs: list[list[dict]]) -> int:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not hasattr(raw_reward_forward, "model"):
            raw_reward_forward.model = AutoModelForSequenceClassification.from_pretrained(rm, torch_dtype=torch.float32).eval()
            raw_reward_forward.tok = AutoTokenizer.from_pretrained(rm)
        model, rtok = raw_reward_forward.model, raw_reward_forward.tok
        ids = [rtok.apply_chat_template(c, tokenize=True, return_dict=False) for c in convs]
        ids = [list(x["input_ids"]) if isinstance(x, dict) else list(x) for x in ids]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        bs = recipe.synthesizer.reward_model.batch_size
        with torch.inference_mode():
            for s in range(0, len(order), bs):
                batch = [ids[i] for i in order[s:s + bs]]
                width = max(map(len, batch))
                x = torch.full((len(batch), width), model.config.pad_token_id)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for j, row in enumerate(batch):
                    x[j, : len(row)] = torch.tensor(row)
                    mask[j, : len(row)] = 1
                model(input_ids=x, attention_mask=mask).logits.float()
        return len(ids)

    def raw() -> tuple[int, float]:
        t = time.perf_counter()
        token_prompts = [{"prompt_token_ids": tok.apply_chat_template(p, tokenize=True, add_generation_prompt=True,
                                                                      return_dict=False)} for p in prompts]
        token_prompts = [{"prompt_token_ids": list(x["prompt_token_ids"]["input_ids"])}
                         if isinstance(x["prompt_token_ids"], dict) else x for x in token_prompts]
        params = SamplingParams(n=args.k, temperature=1.0, top_p=0.95, max_tokens=args.max_tokens)
        outs = llm.generate(token_prompts, params, use_tqdm=False)
        convs = [p + [{"role": "assistant", "content": c.text.strip()}] for p, o in zip(prompts, outs)
                 for c in o.outputs if c.finish_reason == "stop" and c.text.strip()]
        raw_reward_forward(convs)
        return sum(len(c.token_ids) for o in outs for c in o.outputs), time.perf_counter() - t

    def ours() -> tuple[int, float]:
        t = time.perf_counter()
        result = synth.generate(shard)
        return result.stats["responses"], time.perf_counter() - t

    raw(), ours()  # warm-up: engines, kernels, the transformers model
    raw_s, ours_s, raw_tps = [], [], []
    for r in range(args.repeats):
        tokens, a = raw()
        _, b = ours()
        raw_s.append(a)
        ours_s.append(b)
        raw_tps.append(tokens / a)
        print(f"repeat {r}: baseline {a:.2f}s ({tokens / a:,.0f} generated tok/s) | roost {b:.2f}s | ratio {a / b:.3f}")
    ratio = statistics.median(a / b for a, b in zip(raw_s, ours_s))  # paired: each pair ran back to back
    print(f"policy={policy} reward_model={rm} prompts={args.prompts} k={args.k} max_tokens={args.max_tokens} "
          f"device={engine.describe()['device']}")
    print(f"baseline (raw generate n={args.k} + raw batched reward forward): median {statistics.median(raw_s):.2f}s, "
          f"{args.prompts / statistics.median(raw_s):.1f} prompts/s, {statistics.median(raw_tps):,.0f} tok/s")
    print(f"roost pair building: median {statistics.median(ours_s):.2f}s, "
          f"{args.prompts / statistics.median(ours_s):.1f} prompts/s")
    print(f"ratio (baseline time / roost time, median of the paired repeats): {ratio:.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
