"""The iteration loop of self-play and iterative preference methods (SPIN, SPPO, iterative DPO):
build iteration t's data with model t, train model t+1 on it with the user's command, repeat.

roost does not train. It runs the user's training command (a shell template) between builds:

    loop:
      iterations: 3
      train: accelerate launch train.py --data {data} --model {model} --output {output}
      mix_previous: true     # {data} = iteration t-1's rows + iteration t's (SPIN's configs)
      subset: data           # which part of a build is trained on: data (default), sppo, easy...

Placeholders: `{data}` a directory of Parquet files holding exactly the training rows
(`datasets.load_dataset("parquet", data_dir=...)` reads it), `{model}` the model that made
them, `{output}` where the command must save the next model (weights, config and tokenizer),
`{iteration}` t. Values are shell-quoted; the command runs with roost's Python first on PATH. String fields of the recipe may hold `{iteration}`
too (SPPO uses a new prompt set each iteration).

Layout of OUT: `iterations.json` (the loop's manifest), and per iteration `iter-<t>/data`
(a roost build, with its own manifest), `iter-<t>/train-data` (only when mixing: hard links
to both iterations' shard files), `iter-<t>/model`, `iter-<t>/train.log`.

Re-running resumes: an iteration whose model was saved and still loads is skipped; the build
of an unfinished one resumes shard by shard; its training starts over (a partial model
directory is removed first). A command that exits non-zero, or exits 0 without leaving a
loadable model at `{output}`, stops the loop; the manifest records the exit code and log.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from roost.engines.config import local_model_problem as model_problem
from roost.errors import ConfigError, UserError
from roost.recipe import LoopConfig, Recipe, validate_recipe
from roost.runtime import stopping

MANIFEST = "iterations.json"


class TrainingFailed(UserError):
    """A training step failed at run time: recorded in the loop's manifest with its log."""

    exit_code = 1


def iteration_recipe(recipe: Recipe, t: int, model: str) -> Recipe:
    """The recipe of iteration t: generating with `model`, rows marked `iteration: t`, and
    `{iteration}` in its strings filled in."""
    raw = _fill(recipe.model_dump(mode="json", exclude_unset=False), t)
    if t > 0:  # the trained model is a local directory: its revision is its content
        raw["model"].update(model=model, revision=None, tokenizer=None)
    raw["iteration"] = recipe.iteration + t
    raw["loop"] = None
    return validate_recipe(raw, f"{recipe.name} (iteration {t})")


def _fill(value: Any, t: int) -> Any:
    if isinstance(value, str):
        return value.replace("{iteration}", str(t))
    if isinstance(value, dict):
        return {k: _fill(v, t) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, t) for v in value]
    return value


def training_data(out: Path, t: int, recipe: Recipe, loop: LoopConfig) -> Path:
    """The directory given as {data}: this iteration's rows (its `subset`), or, mixing, hard
    links to the previous iteration's shard files and this one's, renumbered as one split."""
    own = _subset_files(out, t, recipe, loop)
    if not loop.mix_previous or t == 0:
        return own[0].parent
    files = _subset_files(out, t - 1, recipe, loop) + own
    mix = out / f"iter-{t}" / "train-data"
    if mix.exists():
        shutil.rmtree(mix)
    tmp = out / f"iter-{t}" / ".train-data.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    split = recipe.output.split
    for i, src in enumerate(files):
        dest = tmp / f"{split}-{i:05d}-of-{len(files):05d}.parquet"
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy2(src, dest)
    tmp.rename(mix)
    return mix


def _subset_files(out: Path, t: int, recipe: Recipe, loop: LoopConfig) -> list[Path]:
    folder = out / f"iter-{t}" / "data" / loop.subset
    files = sorted(folder.glob(f"{recipe.output.split}-*.parquet"))
    if not files:
        raise ConfigError(f"field 'loop.subset': iteration {t}'s build has no {loop.subset}/"
                          f"{recipe.output.split}-*.parquet files (subsets are data, or one its synthesizer writes)")
    return files


def render_command(loop: LoopConfig, *, data: Path, model: str, output: Path, t: int) -> str:
    return loop.train.format(data=shlex.quote(str(data)), model=shlex.quote(str(model)),
                             output=shlex.quote(str(output)), iteration=t)


def run_training(command: str, log: Path) -> int:
    """Run the command through the shell, its output to `log`; returns the exit code. The
    directory of roost's own Python comes first on PATH, so `python`, `accelerate` or `trl`
    are the ones installed beside roost (as if its virtualenv were active)."""
    import sys

    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    with open(log, "wb") as f:
        f.write(f"$ {command}\n".encode())
        f.flush()
        # its own process group, so a stopped loop ends the whole command (the shell and what it started)
        proc = subprocess.Popen(command, shell=True, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        try:
            return proc.wait()
        except BaseException:
            _end_group(proc)
            raise


def _end_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM to the command's process group, SIGKILL after `grace` seconds."""
    import signal

    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    from roost.dataset.writer import atomic_write_bytes

    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())


def check_resumable(recipe: Recipe, loop: LoopConfig, out: Path) -> None:
    from roost.errors import OutputMismatch

    existing = read_manifest(out)
    if existing and existing.get("recipe_hash") != recipe.fingerprint():
        raise OutputMismatch(f"{out} holds the iterations of a different recipe (hash {existing.get('recipe_hash')}, "
                             f"this one {recipe.fingerprint()}); choose another --out or delete it")


def check_held_out(recipe: Recipe, loop: LoopConfig) -> None:
    """`loop.eval`'s problems must be held out: none may be a prompt any iteration trains on
    (compared as text, case and spacing ignored). Prompts Magpie makes up are not known ahead."""
    from roost.reasoning.problems import ProblemRows

    if loop.eval is None:
        return
    cfg = loop.eval.problems
    rows = ProblemRows(cfg)
    held_out = {_norm(q): q for q in rows.questions(cfg.start, cfg.stop)}
    for t in range(loop.iterations):
        rec = iteration_recipe(recipe, t, recipe.model.model)
        for text in training_prompts(rec):
            if (key := _norm(text)) in held_out:
                raise ConfigError(f"field 'loop.eval.problems': the held-out problem {held_out[key][:80]!r} is also a "
                                  f"training prompt of iteration {t}; evaluate on rows no iteration trains on")


def training_prompts(recipe: Recipe):
    """The user-turn texts of a build's input rows (the rows it will use), where it reads a dataset."""
    from roost.dataset.sources import open_source

    cfg = recipe.synthesizer
    spec = next((x for x in (getattr(cfg, name, None) for name in ("problems", "prompts", "input"))
                 if getattr(x, "path", None)), None)
    if spec is None:
        return
    limit = recipe.output.num_rows
    seen = 0
    for batch in open_source(spec.path, split=spec.split).batches():
        for row in batch:
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield from _texts(row)


def _texts(row: dict):
    for name in ("question", "problem", "instruction", "prompt", "messages"):
        value = row.get(name)
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[-1], str):
                yield users[-1]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def run_iterations(recipe: Recipe, loop: LoopConfig, out: str | Path, *,
                   build: Callable[[Recipe, str], dict], train: Callable[[str, Path], int] = run_training,
                   evaluate: Callable[[Any, str], dict] | None = None,
                   on_step: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """The whole loop (see the module doc). `build(recipe, out_dir)` makes one iteration's data
    (the Prefect build flow, or roost.building.runner.Build); `train(command, log)` runs the command;
    `evaluate(eval_recipe, out_dir)` measures a model (default roost.evaluation.run.run_eval)."""
    from roost import __version__

    out = Path(out)
    check_resumable(recipe, loop, out)
    manifest = read_manifest(out) or {"recipe_hash": recipe.fingerprint(), "recipe": recipe.model_dump(mode="json"),
                                      "roost_version": __version__, "iterations": []}
    manifest.update(loop=loop.model_dump(), status="running")
    manifest.pop("stopped", None)
    steps: list[dict] = manifest["iterations"]
    model = recipe.model.model
    judge = Progress(loop, out, evaluate, on_step)
    if loop.eval is not None:
        manifest["baseline"] = judge.measure(recipe.model, out / "eval-base", "base model")
        write_manifest(out, manifest)
    for t in range(loop.iterations):
        folder = out / f"iter-{t}"
        stopping.within(f"iteration {t} of {loop.iterations} ({t} finished)")
        step = steps[t] if t < len(steps) else None
        if step and step.get("status") == "trained" and model_problem(Path(step["output"])) is None:
            on_step(f"iteration {t}: done before, model {step['output']}")
        else:
            step = _build_and_train(recipe, loop, out, t, model, build, train, on_step, manifest)
        model = step["output"]
        if loop.eval is not None:
            step["eval"] = judge.measure(_trained(recipe, model), folder / "eval", f"iteration {t}'s model")
            write_manifest(out, manifest)
            if step["eval"]["value"] == 0:
                _fail(out, manifest, step, f"the trained model {model} scores 0 {loop.eval.metric} on the held-out "
                                           "problems (check the training command's settings and its log)")
            if (stop := judge.verdict(t, step)) is not None:
                manifest["stopped"] = stop
                on_step(f"iteration {t}: {stop['reason']}; stopping")
                del steps[t + 1:]  # iterations a longer earlier run made are not this loop's
                break
    manifest.update(status="complete", final_model=model)
    if loop.eval is not None:
        manifest.update(judge.best(manifest))
    write_manifest(out, manifest)
    return manifest


def run_here(recipe: Recipe, loop: LoopConfig, out: str | Path) -> dict[str, Any]:
    """The whole loop without Prefect (builds with roost.building.runner.Build, evaluations with roost.evaluation)."""
    import sys

    from roost.building.runner import build_here

    def say(message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    return run_iterations(recipe, loop, out, build=build_here, on_step=say)


def _build_and_train(recipe: Recipe, loop: LoopConfig, out: Path, t: int, model: str, build, train, on_step,
                     manifest: dict) -> dict:
    """Iteration t: build its data with `model`, run the training command, check the model it saved."""
    folder = out / f"iter-{t}"
    rec = iteration_recipe(recipe, t, model)
    on_step(f"iteration {t}: building data with {model}")
    built = build(rec, str(folder / "data"))
    if loop.release_engines:
        from roost.engines import release_all

        release_all()
    data = training_data(out, t, recipe, loop)
    output = folder / "model"
    if output.exists():
        shutil.rmtree(output)  # a model left by an interrupted or failed run
    command = render_command(loop, data=data, model=model, output=output, t=t)
    step = {"iteration": t, "model": model, "data": str(folder / "data"), "train_data": str(data),
            "rows": built.get("rows"), "output": str(output), "command": command,
            "log": str(folder / "train.log"), "status": "training", "started": _now()}
    steps = manifest["iterations"]
    steps[t:] = [step]
    write_manifest(out, manifest)
    on_step(f"iteration {t}: training ({folder / 'train.log'})")
    stopping.track("shards of its data", lambda: built.get("num_shards", 0), built.get("num_shards", 0),
                   manifest=out / MANIFEST)  # the training is redone whole on resume
    code = train(command, folder / "train.log")
    step.update(exit_code=code, finished=_now())
    problem = None if code == 0 else f"the training command exited with {code}"
    if problem is None and (why := model_problem(output)) is not None:
        problem = f"the training command exited 0 but left no loadable model at {output} ({why})"
    if problem:
        _fail(out, manifest, step, problem, f"; see its log {folder / 'train.log'}")
    step["status"] = "trained"
    write_manifest(out, manifest)
    return step


def _fail(out: Path, manifest: dict, step: dict, problem: str, hint: str = "") -> None:
    step.update(status="failed", problem=problem)
    manifest["status"] = "failed"
    write_manifest(out, manifest)
    raise TrainingFailed(f"iteration {step['iteration']}: {problem}{hint}")


def _trained(recipe: Recipe, model: str):
    """The engine config of a trained model: the policy's settings, the model replaced (the same
    identity the next iteration's build uses, so the engine is shared)."""
    if model == recipe.model.model:
        return recipe.model
    return recipe.model.model_copy(update={"model": model, "revision": None, "tokenizer": None})


class Progress:
    """Held-out measurement of each iteration's model (`loop.eval`): the metric, the gain over
    the model before it, when to stop, which model is best."""

    def __init__(self, loop: LoopConfig, out: Path, evaluate, on_step):
        self.cfg, self.out, self.on_step = loop.eval, out, on_step
        if evaluate is None:
            from roost.evaluation.run import run_eval as evaluate
        self.evaluate = evaluate
        self.previous: float | None = None

    def measure(self, engine_config, folder: Path, who: str) -> dict:
        from roost.errors import OutputMismatch

        recipe = self.cfg.recipe_for(engine_config)
        self.on_step(f"eval: {who} on {recipe.problems.path} rows {recipe.problems.start}:{recipe.problems.stop or ''}")
        try:
            summary = self.evaluate(recipe, str(folder))
        except OutputMismatch:  # evaluated before with other settings: derived data, measure again
            shutil.rmtree(folder)
            summary = self.evaluate(recipe, str(folder))
        value = summary["metrics"][self.cfg.metric]
        record = {"model": engine_config.model, "metric": self.cfg.metric, "value": value,
                  "stderr": summary["stderr"].get(self.cfg.metric), "metrics": summary["metrics"],
                  "summary": str(folder / "summary.json")}
        if self.previous is not None:
            record["gain"] = round(value - self.previous, 6)
        self.on_step(f"eval: {who}: {self.cfg.metric} {value:.4f}"
                     + (f" ({record['gain']:+.4f})" if "gain" in record else ""))
        self.previous = value
        return record

    def verdict(self, t: int, step: dict) -> dict | None:
        """Why the loop stops after iteration t, or None."""
        ev = step["eval"]
        if "gain" in ev and ev["gain"] < self.cfg.min_gain:
            return {"iteration": t, "reason": f"{self.cfg.metric} gained {ev['gain']:+.4f} < min_gain "
                                              f"{self.cfg.min_gain}"}
        return None

    def best(self, manifest: dict) -> dict:
        candidates = [manifest["baseline"]] + [s["eval"] for s in manifest["iterations"] if "eval" in s]
        top = max(candidates, key=lambda e: e["value"])
        return {"best_model": top["model"], "best": {"metric": top["metric"], "value": top["value"],
                                                     "iteration": next((s["iteration"] for s in manifest["iterations"]
                                                                        if s.get("eval") is top), None)}}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
