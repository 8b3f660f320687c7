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
        return subprocess.run(command, shell=True, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=env).returncode


def read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    from roost.writer import atomic_write_bytes

    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())


def check_resumable(recipe: Recipe, loop: LoopConfig, out: Path) -> None:
    from roost.errors import OutputMismatch

    existing = read_manifest(out)
    if existing and existing.get("recipe_hash") != recipe.fingerprint():
        raise OutputMismatch(f"{out} holds the iterations of a different recipe (hash {existing.get('recipe_hash')}, "
                             f"this one {recipe.fingerprint()}); choose another --out or delete it")


def run_iterations(recipe: Recipe, loop: LoopConfig, out: str | Path, *,
                   build: Callable[[Recipe, str], dict], train: Callable[[str, Path], int] = run_training,
                   on_step: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """The whole loop (see the module doc). `build(recipe, out_dir)` makes one iteration's data
    (the Prefect build flow, or roost.build's functions); `train(command, log)` runs the command."""
    from roost import __version__

    out = Path(out)
    check_resumable(recipe, loop, out)
    manifest = read_manifest(out) or {"recipe_hash": recipe.fingerprint(), "recipe": recipe.model_dump(mode="json"),
                                      "roost_version": __version__, "iterations": []}
    manifest.update(loop=loop.model_dump(), status="running")
    steps: list[dict] = manifest["iterations"]
    model = recipe.model.model
    for t in range(loop.iterations):
        folder = out / f"iter-{t}"
        step = steps[t] if t < len(steps) else None
        if step and step.get("status") == "trained" and model_problem(Path(step["output"])) is None:
            on_step(f"iteration {t}: done before, model {step['output']}")
            model = step["output"]
            continue
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
        steps[t:] = [step]
        write_manifest(out, manifest)
        on_step(f"iteration {t}: training ({folder / 'train.log'})")
        code = train(command, folder / "train.log")
        step.update(exit_code=code, finished=_now())
        problem = None if code == 0 else f"the training command exited with {code}"
        if problem is None and (why := model_problem(output)) is not None:
            problem = f"the training command exited 0 but left no loadable model at {output} ({why})"
        if problem:
            step.update(status="failed", problem=problem)
            manifest["status"] = "failed"
            write_manifest(out, manifest)
            raise TrainingFailed(f"iteration {t}: {problem}; see its log {folder / 'train.log'}")
        step["status"] = "trained"
        model = str(output)
        write_manifest(out, manifest)
    manifest.update(status="complete", final_model=model)
    write_manifest(out, manifest)
    return manifest


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
