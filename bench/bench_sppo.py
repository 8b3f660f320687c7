"""SPPO ranking: the pairwise judge's win matrices vs the raw engine calls they are made of.

(a) roost: `PairwiseJudge.win_matrices` over N prompts x K samples (the K(K-1) ordered pairs
    of every prompt, both orders, in one engine call). Baseline, on the same engine and the
    same questions: fill the template by hand, `apply_chat_template(tokenize=True)`, one raw
    `LLM.generate` with `SamplingParams(max_tokens=1, temperature=0, allowed_token_ids=[A, B],
    logprobs=2)`, read P("A") and average both orders. Timed alternately, paired repeats; the
    ratio is baseline time / roost time (goal >= 0.9). Both build the same matrices (checked).
(b) the K^2 cost: roost's pairs/s (unordered pairs, two questions each) for K = 2, 5, 8 over
    the same N prompts, and prompts (matrices) per second.

The samples judged are the tiny policy's own (K_max per prompt, generated once, untimed).

    python bench/bench_sppo.py [--prompts 128] [--k 5] [--ks 2,5,8] [--max-tokens 64] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--k", type=int, default=5, help="K for the comparison with the raw calls (a)")
    ap.add_argument("--ks", default="2,5,8", help="K values for the scaling run (b)")
    ap.add_argument("--max-tokens", type=int, default=64, help="of the judged samples")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]

    from vllm import SamplingParams

    from roost.engines import EngineConfig, Sampling, get_engine
    from roost.judges.pairwise import PairwiseJudge
    from roost.tiny.models import TinyModelSpec, build_tiny_model

    policy = str(build_tiny_model(REPO / ".cache" / "test-models" / "tiny-chatml", TinyModelSpec()))
    engine = get_engine(EngineConfig(model=policy, max_model_len=1024, seed=0))
    judge = PairwiseJudge(engine)
    llm, tok = engine._llm, engine.tokenizer
    seeds = [json.loads(line)["messages"] for line in (REPO / "data" / "seed_conversations.jsonl").read_text().splitlines()]
    prompts = [[m[0]] for m in seeds[: args.prompts]]
    k_max = max([args.k, *ks])
    gens = engine.chat(prompts, Sampling(max_tokens=args.max_tokens, temperature=0.7, top_p=0.9, n=k_max), seed=1)
    samples = [[c.text.strip() for c in g.completions] for g in gens]

    def groups(k: int):
        return [(p, s[:k]) for p, s in zip(prompts, samples)]

    template, (id_a, id_b) = judge.template, judge.token_ids

    def raw_prompts(k: int) -> list[list[int]]:
        out = []
        for conv, responses in groups(k):
            plain = f"User: {conv[0]['content']}"
            for i in range(k):
                for j in range(k):
                    if i != j:
                        text = (template.replace("{conversation}", plain).replace("{response_a}", responses[i])
                                .replace("{response_b}", responses[j]))
                        ids = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                      add_generation_prompt=True, return_dict=False)
                        out.append(list(ids["input_ids"]) if isinstance(ids, dict) else list(ids))
        return out

    def raw(k: int) -> tuple[float, list]:
        t = time.perf_counter()
        params = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=[id_a, id_b], logprobs=2)
        outs = llm.generate([{"prompt_token_ids": ids} for ids in raw_prompts(k)], params, use_tqdm=False)
        p_a = []
        for o in outs:
            lp = o.outputs[0].logprobs[0]
            a, b = lp[id_a].logprob, lp[id_b].logprob
            p_a.append(1 / (1 + math.exp(b - a)))
        matrices, n = [], 0
        for _ in prompts:
            first = [[None] * k for _ in range(k)]
            for i in range(k):
                for j in range(k):
                    if i != j:
                        first[i][j] = p_a[n]
                        n += 1
            matrices.append([[0.5 if i == j else 0.5 * (first[i][j] + 1 - first[j][i]) for j in range(k)]
                             for i in range(k)])
        return time.perf_counter() - t, matrices

    def ours(k: int) -> tuple[float, list]:
        t = time.perf_counter()
        matrices = judge.win_matrices(groups(k))
        return time.perf_counter() - t, [m.probs for m in matrices]

    # the same questions, token for token
    sample = groups(args.k)[0]
    assert raw_prompts(args.k)[0] == engine.encode(judge.prompt(sample[0], sample[1][0], sample[1][1]))

    k = args.k
    questions = len(prompts) * k * (k - 1)
    raw(k), ours(k)  # warm-up
    raw_s, ours_s = [], []
    for r in range(args.repeats):
        a, base = raw(k)
        b, mine = ours(k)
        raw_s.append(a)
        ours_s.append(b)
        diff = max(abs(x - y) for m1, m2 in zip(base, mine) for r1, r2 in zip(m1, m2) for x, y in zip(r1, r2))
        print(f"repeat {r}: baseline {a:.2f}s ({questions / a:,.0f} questions/s) | roost {b:.2f}s | "
              f"ratio {a / b:.3f} | max |P_raw - P_roost| {diff:.1e}")
    ratio = statistics.median(a / b for a, b in zip(raw_s, ours_s))
    pairs = len(prompts) * k * (k - 1) // 2
    print(f"judge={policy} prompts={len(prompts)} k={k} questions={questions} (K(K-1) per prompt) "
          f"device={engine.describe()['device']}")
    print(f"baseline (template + apply_chat_template + raw LLM.generate, max_tokens=1, allowed A/B): median "
          f"{statistics.median(raw_s):.2f}s, {pairs / statistics.median(raw_s):.1f} pairs/s, "
          f"{questions / statistics.median(raw_s):.1f} questions/s")
    print(f"roost win_matrices: median {statistics.median(ours_s):.2f}s, {pairs / statistics.median(ours_s):.1f} pairs/s")
    print(f"ratio (baseline time / roost time, median of the paired repeats): {ratio:.3f}  (goal >= 0.9)")

    print(f"\nscaling over K ({len(prompts)} prompts; a pair = two questions, one per order):")
    print(f"{'K':>3} {'questions':>9} {'seconds':>8} {'pairs/s':>8} {'questions/s':>11} {'prompts/s':>9}")
    for k in ks:
        ours(k)  # warm-up for this batch shape
        times = [ours(k)[0] for _ in range(args.repeats)]
        t = statistics.median(times)
        n_pairs = len(prompts) * k * (k - 1) // 2
        print(f"{k:>3} {2 * n_pairs:>9} {t:>8.2f} {n_pairs / t:>8.1f} {2 * n_pairs / t:>11.1f} {len(prompts) / t:>9.2f}")


if __name__ == "__main__":
    main()
