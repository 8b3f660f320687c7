"""Step-DPO's first-wrong-step localization by rollouts: what it costs and how often it is right.

(a) cost, on the same wrong solutions of the tiny math model (same process, same engine):
    binary search over prefixes (OmegaPRM; roost's default) vs the linear scan of every
    prefix (Math-Shepherd's way). Engine requests, rollouts and generated tokens per located
    error; the ratio linear / binary; and whether both find the same step where p_k (from the
    linear scan's complete estimates) is monotone, where they must agree.
(b) agreement with known truth: planted errors. For shipped-style problems, a worked
    solution whose step j has a wrong intermediate result (later steps carry it on
    consistently, `roost.reasoning.arithmetic.solution(wrong_step=j)`); the share of them
    whose located first wrong step is exactly j (binary search), for each locate threshold
    (`--thresholds`) and rollout count (`--rollout-counts`), rollouts alone and with the
    arithmetic step check (which fails step j of every planted slip, so the search runs in
    [0, j]: only a prefix before j that rollouts wrongly call dead can still move it).
    The threshold also decides which problems can be searched at all (p_0 > threshold), so
    accuracy is given on every setting's own searchable set and on the set all share.

    python bench/bench_step_dpo.py [--problems 96] [--planted 96] [--samples 4] [--rollouts 8]
                                   [--thresholds 0,0.125,0.25] [--rollout-counts 8,16] [--skip-cost]
                                   [--planted-seed 0]
"""
from __future__ import annotations

import argparse
import os
import random
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=96)
    ap.add_argument("--planted", type=int, default=96)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--rollouts", type=int, default=8)
    ap.add_argument("--thresholds", default="0", help="(b): locate thresholds, comma-separated")
    ap.add_argument("--rollout-counts", default=None,
                    help="(b): rollouts per prefix, comma-separated (default --rollouts)")
    ap.add_argument("--skip-cost", action="store_true", help="only (b)")
    ap.add_argument("--planted-seed", type=int, default=0, help="(b): another draw of problems, slips and rollouts")
    ap.add_argument("--model", default=None, help="default: the tiny math model, built here")
    args = ap.parse_args()

    from roost.recipe import validate_recipe
    from roost.synthesizers.step_dpo import StepDpo
    from roost.tiny.math_model import build_tiny_math_model

    model = args.model or str(build_tiny_math_model(REPO / ".cache" / "test-models" / "tiny-math"))
    recipe = validate_recipe({
        "name": "bench-step-dpo", "model": {"model": model, "max_model_len": 1024, "seed": 0},
        "synthesizer": {"kind": "step_dpo", "problems": {"path": str(REPO / "data" / "arithmetic_problems.jsonl")},
                        "samples": args.samples, "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 256},
                        "locate": {"rollouts": args.rollouts, "max_errors_per_problem": 1}},
    })
    synth = StepDpo(recipe.synthesizer, recipe)
    if not args.skip_cost:
        cost(synth, args, model)
    planted(synth, args)


def cost(synth, args, model) -> None:
    from roost.reasoning.steps import Search
    from roost.synthesizers.base import Shard
    from roost.synthesizers.step_dpo import Solution

    shard = Shard(0, 1, 1234, start=0, stop=args.problems)
    problems = [p for p, _ in synth.problem_rows().problems(0, args.problems) if p]
    stats = Counter()
    solutions = synth._solve(problems, shard, stats)
    wrong = synth._searches(solutions, [], Counter())
    print(f"model={model} problems={len(problems)} solutions={len(solutions)} right={stats['correct']} "
          f"({stats['correct'] / max(1, len(solutions)):.0%}) wrong solutions searched={len(wrong)} "
          f"rollouts per prefix={args.rollouts}")

    # (a) binary vs linear, same solutions
    runs = {}
    for mode in ("binary", "linear"):
        copies = [Solution(s.problem, s.text, s.steps, s.correct, s.answer, s.truncated,
                           Search(len(s.steps), s.search.p0, s.search.threshold, mode)) for s in wrong]
        st = Counter()
        t0 = time.perf_counter()
        synth._locate(copies, shard, st)
        runs[mode] = (copies, st, time.perf_counter() - t0)
    print(f"\n(a) localization cost over {len(wrong)} wrong solutions "
          f"(steps: mean {sum(len(s.steps) for s in wrong) / max(1, len(wrong)):.2f})")
    print("  search  located  requests  rollouts  tokens  tokens/located  seconds")
    for mode, (copies, st, secs) in runs.items():
        n = sum(1 for s in copies if s.search.first_wrong)
        print(f"  {mode:6}  {n:7}  {st['rollout_requests']:8}  {st['rollouts']:8}  {st['rollout_tokens']:6}  "
              f"{st['rollout_tokens'] / max(1, n):14.1f}  {secs:7.2f}")
    b, lin = runs["binary"][1], runs["linear"][1]
    print(f"  ratio linear/binary: rollouts {lin['rollouts'] / max(1, b['rollouts']):.2f}x, tokens "
          f"{lin['rollout_tokens'] / max(1, b['rollout_tokens']):.2f}x, requests {lin['rollout_requests']} vs "
          f"{b['rollout_requests']} (every search of a shard advances together: one request per round)")
    # agreement: binary search replayed on the linear scan's own estimates (the same p_k), and
    # the two independent runs (each with its own rollouts: M=8 estimates are noisy)
    from roost.reasoning.steps import locate

    mono = replay_same = run_same = 0
    for sb, sl in zip(runs["binary"][0], runs["linear"][0]):
        est = sl.search.estimates
        p = [sl.search.p0] + [est[k].p for k in range(1, sl.search.n)] + [0.0]
        if not all(x >= y for x, y in zip(p, p[1:])):
            continue
        mono += 1
        replay = Search(sl.search.n, sl.search.p0, sl.search.threshold, "binary")
        locate([replay], lambda asks, est=est: [est[k] for _, k in asks])
        replay_same += replay.first_wrong == sl.search.first_wrong
        run_same += sb.search.first_wrong == sl.search.first_wrong
    print(f"  monotone p_k (linear scan): {mono} of {len(wrong)} solutions; binary search on the same estimates finds "
          f"the same step on {replay_same} of them{' (all)' if replay_same == mono else ''}; the two independent "
          f"runs agree on {run_same} (rollout noise)")


def planted(synth, args) -> None:
    """(b) planted errors: known first wrong step, per threshold and rollout count."""
    from roost.reasoning.answers import read_gold
    from roost.reasoning.arithmetic import make_problems, solution
    from roost.reasoning.step_check import checker
    from roost.reasoning.steps import Search, split_steps
    from roost.synthesizers.base import Shard
    from roost.synthesizers.step_dpo import Problem, Solution

    rng = random.Random(7 + args.planted_seed)
    planted_problems = make_problems(args.planted, seed=424242 + args.planted_seed)
    gold_problems = [Problem(f"planted-{i}", p.question, read_gold(str(p.answer), "plain")[0], solution(p))
                     for i, p in enumerate(planted_problems)]
    st = Counter()
    seed = 99 + args.planted_seed
    sampled = synth._solve(gold_problems, Shard(0, 1, seed, start=0, stop=len(gold_problems)), st)
    rate = Counter()
    for s in sampled:
        rate[s.problem.id] += s.correct / args.samples
    arithmetic = checker("arithmetic")
    cases, found = [], 0
    for p, gp in zip(planted_problems, gold_problems):
        j = rng.randint(1, len(p.steps))
        text = solution(p, wrong_step=j, error=rng.choice([-2, -1, 1, 2, 3]))
        steps = split_steps(text)
        failing = arithmetic.first_failing(gp.question, steps)
        found += failing is not None and failing[0] == j
        cases.append((j, gp, text, steps, failing[0] if failing else None))
    thresholds = [float(t) for t in args.thresholds.split(",")]
    counts = [int(m) for m in (args.rollout_counts or str(args.rollouts)).split(",")]
    shared = {gp.id for _, gp, *_ in cases if rate[gp.id] > max(thresholds)}
    print(f"\n(b) planted wrong steps: {len(cases)} solutions (solve rate from {args.samples} samples per problem); "
          f"the arithmetic check fails exactly the planted step in {found} of {len(cases)}")
    print(f"  {len(shared)} searchable at every threshold (p_0 > {max(thresholds)})")
    print("  check       threshold  rollouts  searchable  exact   share  shared-set share  rollouts run  "
          "misses (located - true)")
    for check in (False, True):
        for threshold in thresholds:
            for m in counts:
                runs = []
                for j, gp, text, steps, bound in cases:
                    search = Search(len(steps), rate[gp.id], threshold, "binary", bound=bound if check else None)
                    runs.append((j, Solution(gp, text, steps, False, None, False, search)))
                solvable = [(j, s) for j, s in runs if s.search.solvable]
                synth.config.locate.rollouts = m
                stl = Counter()
                synth._locate([s for _, s in solvable], Shard(0, 1, seed, start=0, stop=1), stl)
                exact = sum(s.search.first_wrong == j for j, s in solvable)
                common = [(j, s) for j, s in solvable if s.problem.id in shared]
                exact_common = sum(s.search.first_wrong == j for j, s in common)
                off = Counter((s.search.first_wrong or 0) - j for j, s in solvable if s.search.first_wrong != j)
                print(f"  {'arithmetic' if check else 'none':10}  {threshold:9.3f}  {m:8}  {len(solvable):10}  "
                      f"{exact:5}  {exact / max(1, len(solvable)):6.1%}  {exact_common / max(1, len(common)):16.1%}  "
                      f"{stl['rollouts']:12}  {dict(sorted(off.items()))}")


if __name__ == "__main__":
    main()
