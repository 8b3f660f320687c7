"""Does training on roost's data make a model better? The seed papers' table in miniature.

The tiny math model (`roost tiny-model --kind math`: 1.1M parameters, trained on worked
solutions of made-up arithmetic problems) is the policy. Every arm makes data with roost from
training problems (rows 0.. of data/arithmetic_problems.jsonl), trains it with the project's
own `scripts/train_dpo.py` (TRL's DPOTrainer), and is measured by `roost eval` on held-out
problems (rows 2000..; no training problem is among them, checked), greedy and sampled:

    base        the model before any training (two evaluation seeds: the noise floor)
    step_dpo    (a) Step-DPO pairs (first wrong step located by rollouts, arithmetic step check)
    outcome     (b) outcome pairs: 4 samples per problem graded by the verifier, right vs wrong
    swapped     (c) the Step-DPO pairs with chosen and rejected exchanged (a control that must hurt)
    iterative   (d) 3 iterations of iterative DPO with the verifier (`roost iterate` with
                    `loop.eval`: it measures each iteration and stops at the first that gains nothing)
    spin        (e) 2 SPIN iterations: the gold worked solutions against the model's own
    no_lp       (f) (d) without the length tie-break: answer length per iteration, on vs off

Each trained arm runs with `--seeds` training seeds (data order and the training's own
randomness); the table prints each arm's mean, its spread (max - min over seeds), and the
difference from the base. The training command and its settings are the same for every arm
(`--train`); they are the user's in real use.

    python bench/bench_improves.py [--train-problems 400] [--eval-rows 2000:2300] [--seeds 2] [--arms ...]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
REPO = Path(__file__).resolve().parents[1]
PROBLEMS = REPO / "data" / "arithmetic_problems.jsonl"
TRAIN = (f"{sys.executable} {REPO / 'scripts' / 'train_dpo.py'} --data {{data}} --model {{model}} --output {{output}} "
         "{settings}")
ARMS = ("base", "step_dpo", "outcome", "swapped", "iterative", "spin", "no_lp")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-problems", type=int, default=400, help="training problems for (a)-(c)")
    ap.add_argument("--iteration-problems", type=int, default=150, help="new training problems per iteration, (d)-(f)")
    ap.add_argument("--eval-rows", default="2000:2300", help="held-out rows of the shipped problems")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--settings", default="--steps 60 --lr 1e-5 --beta 0.1 --loss-type sigmoid,sft --batch-size 8",
                    help="scripts/train_dpo.py settings, the same for every arm")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--out", default=str(REPO / "out" / "bench-improves"))
    args = ap.parse_args()
    arms = args.arms.split(",")
    out = Path(args.out)
    from roost.runtime import logs

    print(f"library logs: {logs.setup(out)}", flush=True)
    lo, hi = (int(x) for x in args.eval_rows.split(":"))
    bench = Bench(out, lo, hi, args)
    t0 = time.perf_counter()
    results: dict[str, list[dict]] = {"base": bench.base()}
    step_pairs = bench.build("step-dpo", step_dpo_recipe(bench.model, args.train_problems)) if {
        "step_dpo", "swapped"} & set(arms) else None
    if "step_dpo" in arms:
        results["step_dpo"] = bench.trained("step_dpo", step_pairs / "data")
    if "swapped" in arms:
        results["swapped"] = bench.trained("swapped", swap(step_pairs / "data", out / "swapped-data"))
    if "outcome" in arms:
        pairs = bench.build("outcome", verifier_recipe(bench.model, PROBLEMS, args.train_problems, "length"))
        results["outcome"] = bench.trained("outcome", pairs / "data")
    for arm, tie in (("iterative", "length"), ("no_lp", "none")):
        if arm in arms:
            results[arm] = bench.loop(arm, lambda t, tie=tie: verifier_recipe(
                bench.model, bench.slice_file(t, args.iteration_problems), args.iteration_problems, tie), 3)
    if "spin" in arms:
        results["spin"] = bench.loop("spin", lambda t: spin_recipe(bench.model, bench.gold_sft(args.iteration_problems)),
                                     2, mix_previous=False)
    report(results, bench, time.perf_counter() - t0, args)


class Bench:
    def __init__(self, out: Path, lo: int, hi: int, args):
        from roost.tiny.math_model import build_tiny_math_model

        self.out, self.lo, self.hi, self.args = out, lo, hi, args
        out.mkdir(parents=True, exist_ok=True)
        self.model = str(build_tiny_math_model(REPO / ".cache" / "models" / "tiny-math"))
        self.seconds: dict[str, float] = {}

    # -- evaluation -------------------------------------------------------------------------

    def eval_settings(self, seed: int = 0) -> dict:
        return {"problems": {"path": str(PROBLEMS), "start": self.lo, "stop": self.hi}, "samples": 4, "seed": seed,
                "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 256}}

    def evaluate(self, model: str, folder: Path, seed: int = 0) -> dict:
        from roost.engines import release_all
        from roost.evaluation.config import EvalRecipe
        from roost.evaluation.run import run_eval

        recipe = EvalRecipe(model={"model": model, "max_model_len": 1024, "seed": 0}, **self.eval_settings(seed))
        summary = run_eval(recipe, folder)
        release_all()
        return summary["metrics"]

    def base(self) -> list[dict]:
        t0 = time.perf_counter()
        runs = [self.evaluate(self.model, self.out / f"base-eval-{s}", seed=s) for s in range(self.args.seeds)]
        self.seconds["base"] = time.perf_counter() - t0
        return runs

    # -- data -------------------------------------------------------------------------------

    def build(self, name: str, raw: dict) -> Path:
        from roost.building.runner import build_here
        from roost.engines import release_all
        from roost.recipe import validate_recipe

        t0 = time.perf_counter()
        folder = self.out / name
        manifest = build_here(validate_recipe(raw, name), folder)
        release_all()
        self.seconds[f"build {name}"] = time.perf_counter() - t0
        print(f"{name}: {manifest['rows']} pairs, rejects {json.dumps(manifest['rejects_by_reason'])}", flush=True)
        return folder

    def slice_file(self, t: int, n: int) -> Path:
        """Training problems of iteration t: rows [t*n, (t+1)*n) of the shipped set."""
        lines = PROBLEMS.read_text().splitlines()[t * n:(t + 1) * n]
        path = self.out / "problems" / f"iteration-{t}.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return path

    def gold_sft(self, n: int) -> Path:
        """SFT rows for SPIN: the training problems with their gold worked solutions."""
        from roost.reasoning.prompting import INSTRUCTION, OPENER

        path = self.out / "problems" / "gold-sft.jsonl"
        path.parent.mkdir(exist_ok=True)
        rows = [json.loads(line) for line in PROBLEMS.read_text().splitlines()[:n]]
        path.write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": r["question"] + INSTRUCTION},
            {"role": "assistant", "content": OPENER + r["answer"].split("####")[0].strip()}]}) + "\n" for r in rows))
        return path

    # -- training ---------------------------------------------------------------------------

    def command(self, seed: int) -> str:
        return TRAIN.replace("{settings}", f"{self.args.settings} --seed {seed}")

    def trained(self, arm: str, data: Path) -> list[dict]:
        from roost.building.iterate import run_training

        t0 = time.perf_counter()
        runs = []
        for seed in range(self.args.seeds):
            model = self.out / arm / f"model-{seed}"
            shutil.rmtree(model, ignore_errors=True)
            command = self.command(seed).format(data=data, model=self.model, output=model)
            code = run_training(command, self.out / arm / f"train-{seed}.log")
            if code:
                raise SystemExit(f"{arm}: training failed ({code}); see {self.out / arm / f'train-{seed}.log'}")
            runs.append(self.evaluate(str(model), self.out / arm / f"eval-{seed}"))
            print(f"{arm} seed {seed}: {brief(runs[-1])}", flush=True)
        self.seconds[arm] = time.perf_counter() - t0
        return runs

    def loop(self, arm: str, recipe_of, iterations: int, mix_previous: bool = False) -> list[dict]:
        """`roost iterate` (its functions, no Prefect) with `loop.eval`: per seed, the metrics of
        every iteration's model ({"iterations": [...]} per run)."""
        from roost.building.iterate import check_held_out, run_iterations
        from roost.building.runner import build_here
        from roost.engines import release_all
        from roost.recipe import validate_recipe

        t0 = time.perf_counter()
        runs = []
        for seed in range(self.args.seeds):
            raw = recipe_of(0)
            raw["loop"] = {"iterations": iterations, "mix_previous": mix_previous, "train": self.command(seed),
                           "eval": {**self.eval_settings(), "metric": "sampled_accuracy", "min_gain": 0.0}}
            if "{iteration}" not in json.dumps(raw) and arm != "spin":
                raw["synthesizer"]["prompts"]["path"] = str(self.out / "problems" / "iteration-{iteration}.jsonl")
                for t in range(iterations):
                    recipe_of(t)  # writes the slice file of each iteration
            raw["model"]["seed"] = seed
            recipe = validate_recipe(raw, arm)
            check_held_out(recipe, recipe.loop)
            manifest = run_iterations(recipe, recipe.loop, self.out / arm / f"seed-{seed}", build=build_here,
                                      on_step=lambda s: print(f"  {arm}: {s}", flush=True))
            release_all()
            its = [s["eval"]["metrics"] for s in manifest["iterations"] if "eval" in s]
            runs.append({"iterations": its, "stopped": manifest.get("stopped"), "best": manifest.get("best")})
            print(f"{arm} seed {seed}: " + " -> ".join(brief(m) for m in [manifest["baseline"]["metrics"], *its]),
                  flush=True)
        self.seconds[arm] = time.perf_counter() - t0
        return runs


# -- recipes -------------------------------------------------------------------------------------


def step_dpo_recipe(model: str, n: int) -> dict:
    import yaml

    raw = yaml.safe_load((REPO / "recipes" / "step-dpo.yaml").read_text())
    raw["model"]["model"] = model
    raw["output"] = {"num_rows": n, "shard_size": 100}
    raw["synthesizer"]["problems"]["path"] = str(PROBLEMS)
    return raw


def verifier_recipe(model: str, problems: Path, n: int, tie_break: str) -> dict:
    import yaml

    raw = yaml.safe_load((REPO / "recipes" / "reward-pairs-verifier.yaml").read_text())
    raw["model"]["model"] = model
    raw["output"] = {"num_rows": n, "shard_size": 100}
    raw["synthesizer"]["prompts"]["path"] = str(problems)
    raw["synthesizer"]["scorer"]["tie_break"] = tie_break
    return raw


def spin_recipe(model: str, sft: Path) -> dict:
    return {"name": "spin-gold", "model": {"model": model, "max_model_len": 1024, "seed": 0},
            "output": {"shard_size": 100},
            "synthesizer": {"kind": "spin", "input": {"path": str(sft)}, "turn": "last",
                            "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 256}}}


def swap(data: Path, out: Path) -> Path:
    import pyarrow.parquet as pq

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in sorted(data.glob("*.parquet")):
        table = pq.read_table(path, columns=["prompt", "chosen", "rejected"])
        pq.write_table(table.rename_columns(["prompt", "rejected", "chosen"]).select(["prompt", "chosen", "rejected"]),
                       out / path.name)
    return out


# -- the table -----------------------------------------------------------------------------------


def brief(m: dict) -> str:
    return f"greedy {m['greedy_accuracy']:.3f} sampled {m['sampled_accuracy']:.3f} tokens {m['sampled_tokens']:.1f}"


def report(results: dict, bench: Bench, seconds: float, args) -> None:
    base = results["base"]
    ref = {k: statistics.mean(m[k] for m in base) for k in ("greedy_accuracy", "sampled_accuracy", "sampled_tokens")}
    print(f"\nheld-out rows {bench.lo}:{bench.hi} of {PROBLEMS.name} ({bench.hi - bench.lo} problems), "
          f"{args.seeds} seed(s) per arm; training: scripts/train_dpo.py {args.settings}")
    print(f"{'arm':<22}{'greedy':>16}{'sampled':>16}{'tokens':>9}{'d greedy':>10}{'d sampled':>11}")
    rows = [("base", base)]
    for arm in ("step_dpo", "outcome", "swapped"):
        if arm in results:
            rows.append((arm, results[arm]))
    for arm in ("iterative", "no_lp", "spin"):
        for t in range(max((len(r["iterations"]) for r in results.get(arm, [])), default=0)):
            rows.append((f"{arm} iter {t}", [r["iterations"][t] for r in results[arm] if len(r["iterations"]) > t]))
    for name, runs in rows:
        g, s = [m["greedy_accuracy"] for m in runs], [m["sampled_accuracy"] for m in runs]
        tok = statistics.mean(m["sampled_tokens"] for m in runs)
        print(f"{name:<22}{_ms(g):>16}{_ms(s):>16}{tok:>9.1f}{statistics.mean(g) - ref['greedy_accuracy']:>+10.3f}"
              f"{statistics.mean(s) - ref['sampled_accuracy']:>+11.3f}")
    for arm in ("iterative", "no_lp", "spin"):
        for seed, r in enumerate(results.get(arm, [])):
            if r["stopped"]:
                print(f"{arm} seed {seed}: stopped after iteration {r['stopped']['iteration']} ({r['stopped']['reason']})")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in bench.seconds.items()) + f"; total {seconds:.0f}")
    (bench.out / "results.json").write_text(json.dumps({"results": results, "seconds": bench.seconds,
                                                        "settings": vars(args)}, indent=2))


def _ms(values: list[float]) -> str:
    spread = max(values) - min(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ±{spread / 2:.3f}"


if __name__ == "__main__":
    main()
