"""Where did training move the model? Log-probabilities of held-out gold solutions, by token kind.

    python scripts/logprob_shift.py .cache/models/tiny-math out/bench-improves/step_dpo/model-0 [--rows 2000:2100]

Scores the gold worked solutions of held-out arithmetic problems (rows of
data/arithmetic_problems.jsonl, prompted exactly as `roost eval` prompts them) under the base
model and a trained one, and prints, per kind of token, the mean log-probability under each and
the total change. An accuracy drop says that a model got worse; this says where: a training
that lowers the log-probability of the digits of a step's result (`result digit`) has damaged
the arithmetic itself, one that lowers `<|im_end|>` or the step headers has changed how answers
are laid out.
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kind_of(tokens: list[str], i: int) -> str:
    """A token's kind: the digits of a step's result (after '='), other digits, or the token itself."""
    token = tokens[i]
    if not token.isdigit():
        return token.replace("\u0120", " ").replace("\u010a", "\\n")
    j = i - 1
    while j >= 0 and tokens[j].isdigit():
        j -= 1
    before = tokens[max(0, j - 1): j + 1]
    return "result digit" if any("=" in t for t in before) else "other digit"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("trained")
    ap.add_argument("--rows", default="2000:2100", help="held-out rows of data/arithmetic_problems.jsonl")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(REPO))
    from roost.reasoning.arithmetic import make_problems, solution
    from roost.reasoning.prompting import HEADER, OPENER, user_turn
    from roost.tiny.math_model import SHIPPED_SEED

    lo, hi = (int(x) for x in args.rows.split(":"))
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    models = [AutoModelForCausalLM.from_pretrained(m, dtype=torch.float32).eval() for m in (args.base, args.trained)]
    first = HEADER.format(k=1)
    by_kind: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for problem in make_problems(hi, seed=SHIPPED_SEED)[lo:hi]:
        prompt = tokenizer.apply_chat_template([user_turn(problem.question)], tokenize=False,
                                               add_generation_prompt=True) + OPENER + first
        text = prompt + solution(problem)[len(first):] + tokenizer.eos_token
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        with torch.no_grad():
            logps = [torch.log_softmax(m(ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0] for m in models]
        tokens = tokenizer.convert_ids_to_tokens(ids[0])
        for i in range(start, len(tokens)):
            by_kind[kind_of(tokens, i)].append((logps[0][i - 1].item(), logps[1][i - 1].item()))
    total = [sum(v[k] for vs in by_kind.values() for v in vs) for k in (0, 1)]
    print(f"gold solutions of rows {lo}:{hi}: total log-probability base {total[0]:.1f}, trained {total[1]:.1f}")
    print(f"{'token':>16}{'n':>7}{'base':>10}{'trained':>10}{'change':>10}")
    ranked = sorted(by_kind.items(), key=lambda kv: abs(sum(t - b for b, t in kv[1])), reverse=True)
    for kind, values in ranked[: args.top]:
        base = sum(b for b, _ in values) / len(values)
        trained = sum(t for _, t in values) / len(values)
        print(f"{kind!r:>16}{len(values):>7}{base:>10.4f}{trained:>10.4f}{sum(t - b for b, t in values):>+10.2f}")


if __name__ == "__main__":
    main()
