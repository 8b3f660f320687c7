"""roost as a Python library: what `roost build`, `roost curate` and `roost eval` do, called from
Python (a notebook, a script, another pipeline), with results that explain themselves.

    import roost

    built = roost.build("recipes/magpie-demo.yaml", out="out/magpie", model="path/to/model", num_rows=40)
    built                        # kept / rejected, reasons, where the files are
    built.dataset()              # datasets.Dataset of data/ (rejects(): of rejects/)
    curated = roost.curate(built.out, out="out/curated",
                           stages=["heuristics", "exact_dedup", {"kind": "semantic_dedup", "threshold": 0.9}])
    curated.counts               # {stage: {reason: rows removed}}
    scores = roost.evaluate(model="path/to/model", problems="data/arithmetic_problems.jsonl", rows="2000:2100")

Each call is the command's: the same recipe (built from the same options, in one place, here:
`build_recipe`, `curate_recipe`, `eval_recipe`, which the CLI calls too), the same checks before
any model loads, the same fingerprints, and the same resume: calling it again into the same
`out` keeps what is finished and does only the rest (nothing, if it all is). It holds `out`
(roost.runtime.runlock), so it and a `roost` command never write one output at once. It needs no
Prefect server: it runs the plain functions the command's flows wire (roost.building.runner.Build,
roost.curation.runner.curate, roost.evaluation.run.run_eval). Progress bars are rich's, so they draw in a
terminal and in Jupyter (with ipywidgets). Library logs go to OUT/logs/roost.log unless
`verbose=True`. A mistake raises a roost.errors.UserError subclass whose message is the one
line the command prints; interrupting (a notebook's stop button) keeps every finished unit,
marks the manifest "stopped", and the next call resumes.
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

from roost.errors import ConfigError, UserError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

    from roost.evaluation.config import EvalRecipe
    from roost.recipe import CurateRecipe, Recipe

__all__ = ["build", "curate", "evaluate", "eval", "Result", "EvalResult", "build_recipe", "curate_recipe",
           "eval_recipe", "UserError"]

PathLike = Union[str, Path]
Say = Callable[[str], None]
Runner = Callable[[Any, str], dict]


# -- the recipes, from what the caller gave (the CLI's flags are these keywords) ----------------


def build_recipe(recipe: "PathLike | Mapping | Recipe", *, model: str | None = None, revision: str | None = None,
                 num_rows: int | None = None, shard_size: int | None = None, seed: int | None = None,
                 server: str | None = None, overrides: Mapping[str, Any] | None = None, ray: str | None = None,
                 ray_workers: int | None = None) -> "Recipe":
    """The build recipe `build` runs: a YAML path, a mapping or a Recipe, with the options over it
    (`overrides`: dotted fields, as `roost build --set`, e.g. {"synthesizer.k": 8})."""
    from roost.recipe import Recipe, apply_overrides, load_recipe, validate_recipe

    given = {
        "model.model": model,
        "model.revision": revision,
        "model.server.url": server,
        "output.num_rows": num_rows,
        "output.shard_size": shard_size,
        "model.seed": seed,
        **dict(overrides or {}),
        "executor.kind": "ray" if ray else None,
        "executor.address": ray,
        "executor.workers": ray_workers,
    }
    if isinstance(recipe, Recipe):
        rec = recipe
        if any(v is not None for v in given.values()):
            raw = recipe.model_dump(mode="json")
            apply_overrides(raw, given)
            rec = validate_recipe(raw, "recipe")
    elif isinstance(recipe, Mapping):
        raw = json.loads(json.dumps(dict(recipe), default=str))  # a copy: the caller's dict is left as it was
        apply_overrides(raw, given)
        rec = validate_recipe(raw, "recipe")
    elif isinstance(recipe, (str, Path)):
        rec = load_recipe(Path(recipe), given)
    else:
        raise ConfigError(f"recipe: a YAML path, a mapping or a roost.Recipe, not {type(recipe).__name__}")
    if ray_workers and rec.executor.kind != "ray":
        raise ConfigError("--ray-workers: only with --ray ADDRESS (or executor: {kind: ray} in the recipe)")
    return rec


def curate_recipe(source: "PathLike | Mapping | CurateRecipe | None" = None, *, input: PathLike | None = None,
                  recipe: "PathLike | Mapping | CurateRecipe | None" = None, stages: Sequence[Any] | None = None,
                  split: str | None = None, embedding_model: str | None = None, shard_size: int | None = None,
                  **options: Any) -> "CurateRecipe":
    """The curation recipe `curate` runs. `source`: the input (a roost output dir, Parquet
    file/dir/glob, JSON Lines, hf://<dataset id>), or a whole recipe (a .yaml path, a mapping or a
    CurateRecipe). `recipe`: a recipe YAML the input and options go over (`roost curate INPUT
    --recipe R`). `stages`: the stages, in order, each a stage config (roost.stages.*.*Config), a
    mapping with `kind`, or just a kind; default: the recipe's, else heuristics, exact and semantic
    dedup. `input`: the input, never taken for a recipe (the command's INPUT). `options`: the
    command's stage flags (each stage declares its own, `Stage.options`: threshold=, budget=,
    reward_model=, ...), applied over the stages."""
    from roost.recipe import CurateRecipe, apply_overrides, read_yaml, upgrade_curate, validate

    declared = stage_options()
    unknown = sorted(set(options) - set(declared))
    if unknown:
        raise ConfigError(f"{unknown[0]}: not an option of any stage (options: {', '.join(declared)})")
    options = {name: value for name, value in options.items() if value is not None}
    label = "options"
    if source is not None:
        if isinstance(source, (CurateRecipe, Mapping)) or _is_yaml(source):
            if recipe is not None:
                raise ConfigError("recipe: give the recipe once (as the first argument or as recipe=, not both)")
            recipe = source
        elif input is not None:
            raise ConfigError("input: give the input once (as the first argument or as input=, not both)")
        else:
            input = source
    if isinstance(recipe, CurateRecipe):
        given = dict(input=input, stages=stages, split=split, embedding_model=embedding_model, shard_size=shard_size)
        if not options and all(v is None for v in given.values()):
            return recipe
        raw, label = recipe.model_dump(mode="json", exclude_unset=True), "recipe"
    elif isinstance(recipe, Mapping):
        raw, label = upgrade_curate(json.loads(json.dumps(dict(recipe), default=str))), "recipe"
    elif recipe is not None:
        raw, label = upgrade_curate(read_yaml(Path(recipe))), str(recipe)
    else:
        raw = {}
    if stages is not None:
        if isinstance(stages, (str, Mapping)) or not isinstance(stages, Iterable):
            raise ConfigError("stages: a list of stages (configs, mappings with 'kind', or kind names)")
        raw["stages"] = [_stage_raw(i, s) for i, s in enumerate(stages)]
    apply_overrides(raw, {"input.path": str(input) if input is not None else None, "input.split": split,
                          "embedding.model": embedding_model, "shard_size": shard_size})
    for name, value in options.items():
        apply_stage_option(raw, *declared[name], value)
    return validate(CurateRecipe, raw, label)


def stage_options() -> dict[str, tuple[str, Any]]:
    """Every stage's `roost curate` flags: name -> (the stage's kind, its roost.stages.base.Option)."""
    from roost.stages.base import STAGES

    return {option.name: (kind, option) for kind in STAGES.kinds() for option in STAGES.get(kind).options}


def apply_stage_option(raw: dict, kind: str, option: Any, value: Any) -> None:
    """Set a stage flag's value in a raw curation recipe: on the first stage of its kind, made if
    missing (scorers before a selection, others at the end), or that stage taken out."""
    from roost.recipe import stage_block

    block = stage_block(raw, kind, create=True)
    if option.apply(block, value) is False:
        raw["stages"] = [b for b in raw["stages"] if b is not block]


def eval_recipe(recipe: "PathLike | Mapping | EvalRecipe | None" = None, *, model: str | None = None,
                problems: str | None = None, rows: "str | tuple[int | None, int | None] | None" = None,
                samples: int | None = None, server: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> "EvalRecipe":
    """The evaluation recipe `evaluate` runs: a YAML path, a mapping, an EvalRecipe or nothing
    (the options alone). `rows`: "START:STOP" or (start, stop), the held-out rows of `problems`."""
    from roost.evaluation.config import EvalRecipe
    from roost.recipe import apply_overrides, load_eval_recipe, validate

    start, stop = row_range(rows) if not isinstance(rows, tuple) else rows
    given = {"model.model": model, "model.server.url": server, "problems.path": problems, "problems.start": start,
             "problems.stop": stop, "samples": samples, **dict(overrides or {})}
    if recipe is None or isinstance(recipe, (str, Path)):
        return load_eval_recipe(Path(recipe) if recipe is not None else None, given)
    if isinstance(recipe, EvalRecipe):
        if all(v is None for v in given.values()):
            return recipe
        raw = recipe.model_dump(mode="json")
    elif isinstance(recipe, Mapping):
        raw = json.loads(json.dumps(dict(recipe), default=str))
    else:
        raise ConfigError(f"recipe: a YAML path, a mapping or a roost.EvalRecipe, not {type(recipe).__name__}")
    apply_overrides(raw, given)
    if isinstance(recipe, Mapping) and isinstance(raw.get("model"), dict):  # as load_eval_recipe: the model's
        raw["model"].setdefault("max_model_len", None)  # own context length unless the recipe says
    return validate(EvalRecipe, raw, "recipe")


def row_range(rows: str | None) -> tuple[int | None, int | None]:
    """"START:STOP" (either may be left out) -> (start, stop)."""
    if rows is None:
        return None, None
    lo, _, hi = str(rows).partition(":")
    try:
        return (int(lo) if lo else 0), (int(hi) if hi else None)
    except ValueError:
        raise ConfigError(f"--rows {rows!r}: expected START:STOP, e.g. 2000:2500") from None


def default_build_out(rec: "Recipe") -> Path:
    return Path("out") / rec.name


def default_eval_out(rec: "EvalRecipe") -> Path:
    return Path("out") / f"eval-{Path(rec.model.model).name}"


def _is_yaml(source: Any) -> bool:
    return isinstance(source, (str, Path)) and Path(source).suffix.lower() in (".yaml", ".yml") \
        and not str(source).startswith("hf://")


def _stage_raw(i: int, stage: Any) -> dict:
    from pydantic import BaseModel

    if isinstance(stage, str):
        return {"kind": stage}
    if isinstance(stage, BaseModel) and hasattr(stage, "kind"):
        return {**stage.model_dump(mode="json", exclude_unset=True), "kind": stage.kind}
    if isinstance(stage, Mapping):
        return json.loads(json.dumps(dict(stage), default=str))
    raise ConfigError(f"stages[{i}]: a stage config, a mapping with 'kind' or a kind name, not {type(stage).__name__}")


# -- running: one output, held, logged, checked; then the work (the CLI passes its Prefect flow) --


def writable(out: PathLike) -> Path:
    """OUT, made if missing; a ConfigError if it cannot be written."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".roost-write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    return out


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


@contextmanager
def held(out: PathLike, *, verbose: bool = False, say: Say | None = None) -> Iterator[Path]:
    """OUT writable and held by this run (roost.runtime.runlock), library logs in OUT/logs/roost.log. In a
    process that is not a `roost` command (a notebook), an interrupt marks the manifest "stopped",
    closes the engines it may have left mid-call, says what is kept, and is raised on."""
    from roost.runtime import logs, runlock, stopping

    out = writable(out)
    with runlock.hold(out, say=say or _stderr):
        if not stopping.installed():
            stopping._progress.clear()  # what an interrupt now keeps is this run's, not an earlier call's
        logs.setup(out, verbose)
        try:
            yield out
        except KeyboardInterrupt:
            if not stopping.installed():  # the command's own stop is roost.runtime.stopping.run_cli's
                stopping._mark_manifests()
                stopping._release_engines()
                (say or _stderr)(stopping.message().replace("run the same command", "call it again"))
            raise


def run_build(rec: "Recipe", out: PathLike, *, run: Runner | None = None, verbose: bool = False,
              say: Say | None = None, progress: bool = True) -> dict:
    """Check, then build `rec` into `out` with `run(recipe, out)` (default: in this process).
    (Libraries are imported once `held` has set up their logging.)"""
    with held(out, verbose=verbose, say=say) as out_dir:
        from roost.building.runner import Build

        build = Build.open(rec, out_dir)  # user errors surface here, before Prefect and the engines start
        if rec.executor.kind == "ray":  # an address that does not answer: one line, now
            from roost.building.on_ray import connect

            connect(rec.executor.address, quiet=not verbose)
        if run is None:
            return build.run(progress=progress)
        return run(rec, str(out_dir))


def run_curate(rec: "CurateRecipe", out: PathLike, *, run: Runner | None = None, verbose: bool = False,
               say: Say | None = None, progress: bool = True) -> dict:
    with held(out, verbose=verbose, say=say) as out_dir:
        from roost.curation.runner import curate as curate_here, preflight

        preflight(rec, out_dir)  # user errors surface here, before Prefect and the models start
        if run is None:
            return curate_here(rec, str(out_dir), progress=progress)
        return run(rec, str(out_dir))


def run_evaluation(rec: "EvalRecipe", out: PathLike, *, run: Runner | None = None, verbose: bool = False,
                   say: Say | None = None) -> dict:
    with held(out, verbose=verbose, say=say) as out_dir:
        from roost.evaluation.run import preflight, run_eval

        preflight(rec, out_dir)
        if run is None:
            return run_eval(rec, str(out_dir), say=_stderr)
        return run(rec, str(out_dir))


# -- the API -----------------------------------------------------------------------------------


def build(recipe: "PathLike | Mapping | Recipe", out: PathLike | None = None, *, model: str | None = None,
          revision: str | None = None, num_rows: int | None = None, shard_size: int | None = None,
          seed: int | None = None, server: str | None = None, overrides: Mapping[str, Any] | None = None,
          ray: str | None = None, ray_workers: int | None = None, verbose: bool = False,
          progress: bool = True) -> "Result":
    """Build a dataset from a recipe (a YAML path, a mapping or a roost.Recipe) into `out`
    (default out/<recipe name>), as `roost build` does. Calling it again resumes: finished shards
    are kept. The options are the command's flags; `overrides` its `--set` ({"synthesizer.k": 8})."""
    rec = build_recipe(recipe, model=model, revision=revision, num_rows=num_rows, shard_size=shard_size, seed=seed,
                       server=server, overrides=overrides, ray=ray, ray_workers=ray_workers)
    out = Path(out) if out is not None else default_build_out(rec)
    manifest = run_build(rec, out, verbose=verbose, progress=progress)
    return Result(out, manifest)


def curate(source: "PathLike | Mapping | CurateRecipe", out: PathLike, *, recipe: PathLike | None = None,
           stages: Sequence[Any] | None = None, split: str | None = None, embedding_model: str | None = None,
           shard_size: int | None = None, verbose: bool = False, progress: bool = True, **options: Any) -> "Result":
    """Deduplicate, filter, score and select rows into `out`, as `roost curate` does; removed rows
    go to rejects/ with their stage and reason. `source`: the input (a roost output dir, Parquet,
    JSON Lines, hf://<id>) or a whole curation recipe (a .yaml path, a mapping, a CurateRecipe);
    `stages`: stage configs, mappings with `kind`, or kind names, in order; `options`: the stages'
    flags, e.g. threshold=0.85, budget=1000 (see curate_recipe). Calling it again is a no-op when
    finished, and resumes from OUT/.cache when not."""
    rec = curate_recipe(source, recipe=recipe, stages=stages, split=split, embedding_model=embedding_model,
                        shard_size=shard_size, **options)
    manifest = run_curate(rec, out, verbose=verbose, progress=progress)
    return Result(Path(out), manifest)


def evaluate(recipe: "PathLike | Mapping | EvalRecipe | None" = None, out: PathLike | None = None, *,
             model: str | None = None, problems: str | None = None,
             rows: "str | tuple[int | None, int | None] | None" = None, samples: int | None = None,
             server: str | None = None, overrides: Mapping[str, Any] | None = None,
             verbose: bool = False) -> "EvalResult":
    """Evaluate a model on problems with gold answers (and/or, with the recipe's `open_ended:`,
    its win rate), as `roost eval` does, into `out` (default out/eval-<model name>). Calling it
    again keeps the finished parts."""
    rec = eval_recipe(recipe, model=model, problems=problems, rows=rows, samples=samples, server=server,
                      overrides=overrides)
    out = Path(out) if out is not None else default_eval_out(rec)
    return EvalResult(out, run_evaluation(rec, out, verbose=verbose))


eval = evaluate  # noqa: A001  roost.eval(...), as the command is named (not in `import *`, see roost/__init__)


# -- results -----------------------------------------------------------------------------------


def _parquet_dataset(files: list[Path], empty_schema=None) -> "datasets.Dataset":
    """The rows of these Parquet files as a datasets.Dataset (memory-mapped, from the datasets
    cache); files without rows are skipped (datasets cannot read them), none at all: empty."""
    import datasets
    import pyarrow.parquet as pq

    full = [str(f) for f in files if pq.ParquetFile(f).metadata.num_rows]
    if full:
        return datasets.Dataset.from_parquet(full)
    schema = pq.read_schema(files[0]) if files else empty_schema
    if schema is None:
        return datasets.Dataset.from_dict({})
    return datasets.Dataset(datasets.table.InMemoryTable(schema.remove_metadata().empty_table()))


@dataclass(repr=False)
class Result:
    """What a build or a curation wrote into `out`: `manifest` (as manifest.json, plus what this
    call did: `skipped_shards`, `skipped`), `dataset()`, `rejects()`, `counts` and `summary()`."""

    out: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, out: PathLike) -> "Result":
        """The result of an earlier build or curation, from its manifest.json."""
        from roost.dataset.writer import read_manifest
        from roost.errors import InputError

        manifest = read_manifest(out)
        if not manifest:
            raise InputError(f"{out}: no manifest.json (not an output of roost build or curate)")
        return cls(Path(out), manifest)

    @property
    def kind(self) -> str:
        """"curate" or "build"."""
        return "curate" if self.manifest.get("kind") == "curated" else "build"

    @property
    def status(self) -> str:
        return self.manifest.get("status", "?")

    @property
    def rows(self) -> int:
        return int(self.manifest.get("rows") or 0)

    @property
    def rejected(self) -> int:
        return int(self.manifest.get("rejects") or 0)

    @property
    def split(self) -> str:
        return self.manifest.get("split") or "train"

    def files(self, subset: str = "data", split: str | None = None) -> list[Path]:
        """The Parquet shards of `subset` (data, rejects, or a synthesizer's own part, e.g. sppo)."""
        return sorted((self.out / subset).glob(f"{split or self.split}-*.parquet"))

    def dataset(self, split: str | None = None, subset: str = "data") -> "datasets.Dataset":
        """The kept rows (data/), or a synthesizer's other part (`subset`, e.g. "sppo"), as a
        datasets.Dataset."""
        return _parquet_dataset(self.files(subset, split))

    def rejects(self, split: str | None = None) -> "datasets.Dataset":
        """The rows kept out (rejects/): id, stage, reason, detail, duplicate_of, record (the row
        as JSON). Empty, with those columns, when there are none."""
        from roost.schemas import REJECT

        return _parquet_dataset(self.files("rejects", split), REJECT)

    @property
    def stages(self) -> list[dict]:
        """A curation's stages as the manifest has them: name, rows_in, kept, removed by reason."""
        return list(self.manifest.get("stages") or [])

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Rows kept out, by stage and reason: {stage: {reason: rows}}. A curation's from its
        manifest; a build's manifest counts reasons only, so its stages come from rejects/."""
        if self.kind == "curate":
            return {s["name"]: dict(s["removed"]) for s in self.stages if s.get("removed")}
        by_reason = dict(self.manifest.get("rejects_by_reason") or {})
        files = self.files("rejects")
        if not by_reason or not files:
            return {"build": by_reason} if by_reason else {}
        import pyarrow.parquet as pq

        out: dict[str, dict[str, int]] = {}
        for f in files:
            t = pq.read_table(f, columns=["stage", "reason"])
            for stage, reason in zip(t.column("stage").to_pylist(), t.column("reason").to_pylist()):
                out.setdefault(stage, {}).setdefault(reason, 0)
                out[stage][reason] += 1
        return out

    def summary(self) -> str:
        m = self.manifest
        if self.kind == "curate":
            head = f"roost curate ({m.get('row_kind', 'sft')} rows) -> {self.out}: {self.status}"
            lines = [head, f"  {m.get('input_rows', '?')} input rows -> {self.rows} kept, {self.rejected} rejected"
                     + ("  (already curated with this recipe: nothing was done)" if m.get("skipped") else "")]
            if self.stages:
                width = max(len(s["name"]) for s in self.stages)
                lines.append(f"  {'stage':<{width}}  {'in':>7}  {'kept':>7}  removed")
                for s in self.stages:
                    removed = ", ".join(f"{r} {n}" for r, n in s["removed"].items()) if s.get("removed") else ""
                    lines.append(f"  {s['name']:<{width}}  {s['rows_in']:>7}  {s['kept']:>7}  {removed}")
        else:
            name = (m.get("recipe") or {}).get("name", "?")
            shards = m.get("num_shards") or len(m.get("shards") or {})
            skipped = m.get("skipped_shards")
            lines = [f"roost build {name!r} -> {self.out}: {self.status}",
                     f"  {self.rows} rows kept, {self.rejected} rejected, in {shards} shard(s)"
                     + (f"  ({skipped} finished shard(s) kept from an earlier run)" if skipped else "")]
            if self.rejected:
                lines.append("  rejected by stage and reason:")
                for stage, reasons in self.counts.items():
                    lines.append(f"    {stage}: " + ", ".join(f"{r} {n}" for r, n in reasons.items()))
            lines.append(f"  model: {m.get('model')}  seed: {m.get('seed')}")
        lines.append(f"  data: {self.out / 'data'}  rejects: {self.out / 'rejects'}  "
                     f"manifest: {self.out / 'manifest.json'}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


@dataclass(repr=False)
class EvalResult:
    """What an evaluation wrote into `out`: `summary` (summary.json), `metrics`, `outcomes()`."""

    out: Path
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, out: PathLike) -> "EvalResult":
        from roost.errors import InputError
        from roost.evaluation.run import read_summary

        summary = read_summary(out)
        if not summary:
            raise InputError(f"{out}: no summary.json (not an output of roost eval)")
        return cls(Path(out), summary)

    @property
    def metrics(self) -> dict[str, Any]:
        """Accuracy and friends on the problems (greedy_accuracy, sampled_accuracy, maj@k, pass@k, problems)."""
        return dict(self.summary.get("metrics") or {})

    @property
    def stderr(self) -> dict[str, float]:
        return dict(self.summary.get("stderr") or {})

    @property
    def open_ended(self) -> dict[str, Any] | None:
        """The win-rate section (a recipe with `open_ended:`), else None."""
        return self.summary.get("open_ended")

    def outcomes(self, open_ended: bool = False) -> "datasets.Dataset":
        """One row per problem (or open-ended prompt): every answer, its grade, its tokens."""
        folder = self.out / ("open_ended/outcomes" if open_ended else "outcomes")
        return _parquet_dataset(sorted(folder.glob("part-*.parquet")))

    def unusable(self) -> "datasets.Dataset":
        """Rows of the problems without a usable question or gold answer, with the reason."""
        path = self.out / "unusable.parquet"
        return _parquet_dataset([path] if path.exists() else [])

    def __repr__(self) -> str:
        s = self.summary
        lines = [f"roost eval {s.get('model')} -> {self.out}"]
        if self.metrics:
            rows = (s.get("set") or {}).get("rows") or ["?", "?"]
            lines.append(f"  {(s.get('set') or {}).get('path')} rows {rows[0]}:{rows[1]}, "
                         f"{self.metrics.get('problems')} problems")
            for name, value in self.metrics.items():
                if name != "problems":
                    err = f" +- {self.stderr[name]:.4f}" if name in self.stderr else ""
                    lines.append(f"  {name}: {value:.4f}{err}" if isinstance(value, float) else f"  {name}: {value}")
        if self.open_ended:
            for name, value in (self.open_ended.get("metrics") or {}).items():
                lines.append(f"  open-ended {name}: {value:.4f}" if isinstance(value, float)
                             else f"  open-ended {name}: {value}")
        lines.append(f"  summary: {self.out / 'summary.json'}")
        return "\n".join(lines)
