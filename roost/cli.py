"""The `roost` command line."""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from roost.recipe import load_recipe
from roost.runtime import logs

# Prefect's ephemeral server would try to send telemetry; these machines (and many clusters) are offline.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Its default 20 s start-up wait fails a run on a busy machine (seen with load 6 on 2 cores).
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
if not os.environ.get("PREFECT_API_URL"):
    # The temporary server roost's own process starts: if it does not answer it is gone, not busy,
    # so a few retries (2 s, 4 s) instead of Prefect's five (a minute per call); and its library
    # logs are in OUT/logs/roost.log already, not worth shipping to a server nobody watches.
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "2")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Synthesize and curate LLM alignment data.")
console = Console(stderr=True)
REPO = Path(__file__).resolve().parents[1]


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors():
    """A problem the user can fix is one line and exit 2; anything else is a bug in roost and
    keeps its traceback (exit 1)."""
    from roost.errors import UserError

    try:
        yield
    except UserError as e:
        _fail(str(e).splitlines()[0] if str(e) else type(e).__name__, getattr(e, "exit_code", 2))


def _warn(line: str) -> None:
    console.print(f"[yellow]{line}[/]", highlight=False, soft_wrap=True)


@contextmanager
def _holding(out_dir: Path):
    """This run holds OUT (roost.runtime.runlock): a second run into it stops with one line."""
    from roost.runtime.runlock import hold

    with hold(out_dir, say=_warn):
        yield


_FLOWS = {  # command: its Prefect flow, and the plain function that does the same work without Prefect
    "build": ("roost.flows.build:build_flow", "roost.building.runner:build_here"),
    "curate": ("roost.flows.curate:curate_flow", "roost.curation.runner:curate"),
    "eval": ("roost.flows.evaluate:eval_flow", "roost.flows.evaluate:evaluate_here"),
}


def _flow(command: str):
    """The `run` roost.api's runners take, for the command: its Prefect flow (imported only once
    the run has set up logging), finished without Prefect if the server goes (`_run_flow`)."""
    def load(spec: str):
        import importlib

        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr)

    def run(recipe, out: str) -> dict:
        flow, here = _FLOWS[command]
        return _run_flow(load(flow), load(here), recipe, out)

    return run


def _run_flow(flow, here, *args):
    """Run the command's Prefect flow. If the Prefect server stops answering mid-run, say so
    once and finish the same work without it (`here`: the plain functions the flow wires; the
    run resumes from what is on disk), instead of retrying a dead server or dying on it."""
    try:
        return flow(*args)
    except Exception as e:  # noqa: BLE001  only a lost server is handled here
        if not _server_gone(e):
            raise
    console.print("[yellow]warning: the Prefect server stopped answering; going on without it (this run's end "
                  "is not recorded there)[/]", highlight=False, soft_wrap=True)
    _detach_prefect()
    try:
        return here(*args)
    finally:
        _detach_prefect()  # and any sender the failing flow run's last calls started since


def _server_gone(error: BaseException) -> bool:
    import httpx

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectTimeout)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _detach_prefect() -> None:
    """Stop Prefect's background senders (events, API logs): with no server they would retry
    for as long as the process lives, and hold its exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        for instance in list(service._instances.values()):
            try:
                instance._stop()
            except Exception:  # noqa: BLE001
                pass


def _out_dir(out: Path) -> Path:
    from roost.api import writable

    return writable(out)


@app.command()
def build(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    model: Optional[str] = typer.Option(None, help="policy model: hub id or local path (overrides the recipe)"),
    revision: Optional[str] = typer.Option(None, help="model revision (overrides the recipe)"),
    out: Optional[Path] = typer.Option(None, help="output directory (default out/<recipe name>)"),
    num_rows: Optional[int] = typer.Option(None, help="rows to make, or input rows to use (overrides the recipe)"),
    shard_size: Optional[int] = typer.Option(None, help="rows per shard (overrides the recipe)"),
    seed: Optional[int] = typer.Option(None, help="seed (overrides the recipe)"),
    set_: list[str] = typer.Option([], "--set", help="any recipe field, e.g. --set synthesizer.k=8 (repeatable)"),
    verbose: bool = typer.Option(False, "--verbose", help="show library logs (default: OUT/logs/roost.log)"),
    server: Annotated[Optional[str], typer.Option(
        help="URL of a running vLLM server (vllm serve) serving the policy model, e.g. http://host:8000/v1; "
             "API key from $VLLM_API_KEY (overrides the recipe's model.server)")] = None,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", metavar="ADDRESS", help="run the shards on a Ray cluster, one engine per Ray worker: auto (the "
        "cluster `ray start` made here) or HOST:PORT; needs roost[ray] and an --out every node shares")] = None,
    ray_workers: Annotated[Optional[int], typer.Option(
        "--ray-workers", min=1, help="Ray workers (default: as many as the cluster fits, one GPU each "
        "or tensor_parallel_size GPUs)")] = None,
) -> None:
    """Build a dataset from a recipe. Re-running into the same --out resumes."""
    from roost import api

    with user_errors():
        sets = _parse_sets(set_)
        rec = api.build_recipe(recipe, model=model, revision=revision, num_rows=num_rows, shard_size=shard_size,
                               seed=seed, server=server, overrides=sets, ray=ray, ray_workers=ray_workers)
        out_dir = out or api.default_build_out(rec)
        manifest = api.run_build(rec, out_dir, run=_flow("build"), verbose=verbose,
                                 say=_warn)
    _print_build_summary(manifest, out_dir)


@app.command()
def iterate(
    recipe: Path = typer.Argument(..., help="recipe YAML (its `loop:` block, or the options below)"),
    train: Optional[str] = typer.Option(None, help="training command template: {data} {model} {output} [{iteration}]"),
    iterations: Optional[int] = typer.Option(None, help="how many build+train rounds (default 2)"),
    mix_previous: Optional[bool] = typer.Option(None, "--mix-previous/--no-mix-previous",
                                                help="train on the previous iteration's rows too (SPIN)"),
    subset: Optional[str] = typer.Option(None, help="which part of each build is trained on (data, sppo, ...)"),
    model: Optional[str] = typer.Option(None, help="the starting policy (overrides the recipe)"),
    out: Optional[Path] = typer.Option(None, help="output directory (default out/<recipe name>-iterate)"),
    set_: list[str] = typer.Option([], "--set", help="any recipe field, e.g. --set synthesizer.k=8 (repeatable)"),
    verbose: bool = typer.Option(False, "--verbose", help="show library logs (default: OUT/logs/roost.log)"),
) -> None:
    """Build data with model t, train model t+1 on it with your command, repeat. Re-running resumes."""
    from roost.errors import ConfigError

    loop = {"loop.train": train, "loop.iterations": iterations, "loop.mix_previous": mix_previous, "loop.subset": subset}
    with user_errors():
        rec = load_recipe(recipe, {"model.model": model, **{k: v for k, v in loop.items() if v is not None},
                                   **_parse_sets(set_)})
        if rec.loop is None:
            raise ConfigError("field 'loop.train': required (give --train 'COMMAND {data} {model} {output}' "
                              "or a loop: block in the recipe)")
        out_dir = _out_dir(out or Path("out") / f"{rec.name}-iterate")
        with _holding(out_dir):
            logs.setup(out_dir, verbose)
            from roost.building.iterate import check_held_out, check_resumable, iteration_recipe
            from roost.building.runner import Build
            from roost.flows.iterate import iterate_flow

            check_resumable(rec, rec.loop, out_dir)
            check_held_out(rec, rec.loop)
            Build.open(iteration_recipe(rec, 0, rec.model.model), out_dir / "iter-0" / "data")
            from roost.building.iterate import run_here

            manifest = _run_flow(iterate_flow, run_here, rec, rec.loop, str(out_dir))
    _print_iterate_summary(manifest, out_dir)


def _print_iterate_summary(manifest: dict, out_dir: Path) -> None:
    out = Console()
    if base := manifest.get("baseline"):
        out.print(f"base model {base['model']}: held-out {base['metric']} {base['value']:.4f}", soft_wrap=True)
    for step in manifest["iterations"]:
        ev = step.get("eval")
        score = f"; held-out {ev['metric']} {ev['value']:.4f} ({ev.get('gain', 0):+.4f})" if ev else ""
        out.print(f"iteration {step['iteration']}: {step.get('rows')} rows from {step['model']} -> "
                  f"model {step['output']} (exit {step.get('exit_code')}){score}", soft_wrap=True)
    if stop := manifest.get("stopped"):
        out.print(f"stopped after iteration {stop['iteration']}: {stop['reason']}", soft_wrap=True)
    if not manifest.get("baseline"):
        out.print("not measured: no loop.eval block, so nothing here says whether a trained model is better "
                  "(add eval: with held-out problems to measure each iteration and stop on no gain)", soft_wrap=True)
    if "best_model" in manifest:
        best = manifest["best"]
        out.print(f"best model: {manifest['best_model']} ({best['metric']} {best['value']:.4f})", soft_wrap=True)
    out.print(f"final model: {manifest['final_model']}  manifest: {out_dir / 'iterations.json'}", soft_wrap=True)


@app.command("eval")
def eval_cmd(
    recipe: Optional[Path] = typer.Argument(None, help="eval recipe YAML (optional: the options below build one)"),
    model: Optional[str] = typer.Option(None, help="the model to evaluate: hub id or local path"),
    problems: Optional[str] = typer.Option(None, help="problems with gold answers: JSON Lines, Parquet, hf://<id>"),
    rows: Optional[str] = typer.Option(None, help="rows START:STOP of the problems (held-out rows), e.g. 2000:2500"),
    samples: Optional[int] = typer.Option(None, help="sampled solutions per problem (default 4; 0: greedy only)"),
    out: Optional[Path] = typer.Option(None, help="output directory (default out/eval-<model name>)"),
    server: Annotated[Optional[str], typer.Option(
        help="URL of a running vLLM server serving the model (API key from $VLLM_API_KEY)")] = None,
    harness: Annotated[Optional[str], typer.Option(
        help="run this lm-evaluation-harness task instead (its vLLM model type), e.g. gsm8k")] = None,
    set_: list[str] = typer.Option([], "--set", help="any eval recipe field, e.g. --set sampling.temperature=1.0"),
    verbose: bool = typer.Option(False, "--verbose", help="show library logs (default: OUT/logs/roost.log)"),
) -> None:
    """Evaluate a model on problems with gold answers: greedy accuracy, sampled accuracy, maj@k, pass@k,
    by number of steps; and/or (the recipe's `open_ended:`) its win rate against a reference model or gold
    answers on open-ended prompts, raw and length-controlled. Per-item outcomes as Parquet beside a JSON
    summary. Re-running resumes."""
    from roost import api
    from roost.recipe import read_yaml

    with user_errors():
        start, stop = api.row_range(rows)
        sets = _parse_sets(set_)
        if harness is not None:
            raw = read_yaml(recipe) if recipe is not None else {}
            _harness({**raw, "model": {**(raw.get("model") or {}), **({"model": model} if model else {})}},
                     harness, out, verbose)
            return
        rec = api.eval_recipe(recipe, model=model, problems=problems, rows=(start, stop), samples=samples,
                              server=server, overrides=sets)
        out_dir = out or api.default_eval_out(rec)
        summary = api.run_evaluation(rec, out_dir, run=_flow("eval"), verbose=verbose, say=_warn)
    _print_eval_summary(summary, out_dir)


def _harness(raw: dict, task: str, out: Optional[Path], verbose: bool) -> None:
    from roost.errors import ConfigError

    model = (raw.get("model") or {}).get("model")
    if not model:
        raise ConfigError("--harness: needs --model (the model to evaluate)")
    from roost.evaluation.harness import run_harness

    out_dir = _out_dir(out or Path("out") / f"eval-{Path(model).name}-{task}")
    with _holding(out_dir):
        logs.setup(out_dir, verbose)
        metrics = run_harness(model, task, out_dir=out_dir, limit=raw.get("limit"))
    table = Table(title=f"lm-evaluation-harness: {task} ({model})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


def _print_eval_summary(summary: dict, out_dir: Path) -> None:
    out = Console()
    if "open_ended" in summary:  # win rate against a reference on open-ended prompts
        oe = summary["open_ended"]
        m, se, ref = oe["metrics"], oe["stderr"], oe["reference"] or {}
        against = "gold answers" if ref.get("kind") == "gold" else ref.get("model", "a reference model")
        table = Table(title=f"roost eval: {summary['model']} against {against} on {oe['prompts']['path']} "
                            f"({(oe['judge'] or {}).get('kind', 'judge')})")
        for name, justify in (("metric", "left"), ("value", "right"), ("+-stderr", "right")):
            table.add_column(name, justify=justify)
        for name, value in m.items():
            if name not in ("prompts", "judged", "unjudged"):
                table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value),
                              f"{se[name]:.4f}" if name in se else "")
        out.print(table)
        un, bad = oe["unjudged"], oe["unusable"]
        out.print(f"prompts: {m['prompts']}  judged: {m['judged']}"
                  + (f"  unjudged: {un['count']} {json.dumps(un['by_reason'])}" if un["count"] else "")
                  + (f"  unusable rows: {bad['count']} {json.dumps(bad['by_reason'])} "
                     f"({out_dir / 'open_ended' / 'unusable.parquet'})" if bad["count"] else ""), soft_wrap=True)
        out.print(f"open-ended outcomes: {out_dir / 'open_ended' / 'outcomes'}", soft_wrap=True)
    if "metrics" not in summary:  # open-ended prompts only
        out.print(f"summary: {out_dir / 'summary.json'}", soft_wrap=True)
        return
    m, se = summary["metrics"], summary["stderr"]
    table = Table(title=f"roost eval: {summary['model']} on {summary['set']['path']} rows "
                        f"{summary['set']['rows'][0]}:{summary['set']['rows'][1]}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("+-stderr", justify="right")
    for name, value in m.items():
        if name != "problems":
            table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value),
                          f"{se[name]:.4f}" if name in se else "")
    out.print(table)
    steps = summary.get("by_steps") or {}
    if steps:
        key = "greedy_accuracy" if "greedy_accuracy" in m else "sampled_accuracy"
        out.print(f"{key} by steps: " + ", ".join(f"{k}: {v.get(key, 0):.3f} ({v['problems']})" for k, v in steps.items()))
    bad = summary["unusable"]
    out.print(f"problems: {m['problems']}" + (f"  unusable rows: {bad['count']} {json.dumps(bad['by_reason'])} "
                                               f"({out_dir / 'unusable.parquet'})" if bad["count"] else ""))
    out.print(f"outcomes: {out_dir / 'outcomes'}  summary: {out_dir / 'summary.json'}", soft_wrap=True)


@app.command()
def serve(
    recipe: Path = typer.Argument(..., help="build recipe YAML"),
    cron: str = typer.Option(..., help="when to run, e.g. '0 3 * * *' (03:00 every day)"),
    timezone: str = typer.Option("UTC", help="time zone of the cron schedule"),
    out: Optional[Path] = typer.Option(None, help="base directory: each run writes OUT/runs/<time>-<id>, "
                                                  "OUT/latest points at the last good run (default out/<recipe name>-scheduled)"),
    curate: Optional[Path] = typer.Option(None, help="curation recipe run on each build's output"),
    publish: Optional[str] = typer.Option(None, help="publish each run's final output to this Hub dataset ORG/NAME"),
    private: bool = typer.Option(False, "--private", help="with --publish: create the Hub repo private"),
    name: Optional[str] = typer.Option(None, help="deployment name (default: the recipe's name)"),
    model: Optional[str] = typer.Option(None, help="policy model: hub id or local path (overrides the recipe)"),
    seed_per_run: bool = typer.Option(False, "--seed-per-run", help="seed each run with its scheduled date "
                                                                     "(YYYYMMDD) instead of the recipe's seed"),
    set_: list[str] = typer.Option([], "--set", help="any recipe field, e.g. --set output.num_rows=1000 (repeatable)"),
    verbose: bool = typer.Option(False, "--verbose", help="show library logs (default: OUT/logs/roost.log)"),
) -> None:
    """Run a build (then curate and publish) on a cron schedule, from a Prefect deployment served here."""
    from roost.flows import serve as serving
    from roost.recipe import load_curate_recipe

    with user_errors():
        rec = load_recipe(recipe, {"model.model": model, **_parse_sets(set_)})
        schedule = serving.cron_schedule(cron, timezone)
        cur = load_curate_recipe(curate) if curate is not None else None
        target = None
        if publish is not None:
            from roost.publish import check_repo_id, hub_token

            target = {"repo": check_repo_id(publish), "private": private}
            hub_token()  # fail now, not at 3 a.m.: the token stays in the environment, never in parameters
        base = _out_dir(out or Path("out") / f"{rec.name}-scheduled")
        with _holding(base):
            logs.setup(base, verbose)
            params = serving.parameters(rec, base, cur, target, seed_per_run)
            _serve(serving, name or rec.name, schedule, params, base, cron, timezone)


def _serve(serving, name: str, schedule, params: dict, base: Path, cron: str, timezone: str) -> None:
    from roost.runtime import stopping

    deployment = f"roost-scheduled/{name}"
    stopping.say_on_stop(f"stopped serving {deployment} (its schedule is paused; finished runs are kept in "
                         f"{base / 'runs'}); run the same command to serve again")
    with serving.prefect_server(base / "logs") as api:
        Console().print(f"serving {deployment} on cron '{cron}' ({timezone}) through {api}\n"
                        f"each run writes {base / 'runs'}/<time>-<id>; last good run: {base / 'latest'}; "
                        f"history: {base / 'runs.json'}\nCtrl-C stops serving and pauses the schedule",
                        soft_wrap=True)
        serving.serve(name, schedule, params)


def _parse_sets(items: list[str]) -> dict:
    from roost.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set {item!r}: expected field=value")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
    return out


def curate(
    input: str = typer.Argument(..., help="roost output dir, Parquet file/dir/glob, or hf://<dataset id>"),
    out: Path = typer.Option(..., help="output directory"),
    recipe: Optional[Path] = typer.Option(None, help="curation recipe YAML (options below override it)"),
    split: Optional[str] = typer.Option(None, help="split to read and write (default train)"),
    embedding_model: Optional[str] = typer.Option(None, help="sentence-transformers model (default: bundled all-MiniLM-L6-v2), or 'static': model2vec distilled from it, hundreds of times faster"),
    shard_size: Optional[int] = typer.Option(None, help="rows per output shard"),
    verbose: bool = typer.Option(False, "--verbose", help="show library logs (default: OUT/logs/roost.log)"),
    **options,
) -> None:
    """Deduplicate, filter, score and select rows (SFT or preference); removed rows go to rejects/ with reasons."""
    from roost import api

    with user_errors():
        rec = api.curate_recipe(input=input, recipe=recipe, split=split, embedding_model=embedding_model,
                                shard_size=shard_size, **options)
        manifest = api.run_curate(rec, out, run=_flow("curate"), verbose=verbose, say=_warn)
    _print_curate_summary(manifest, out)


class _WithStageFlags:
    """A command whose signature has every registered stage's flags (roost.stages.base.Option) in
    place of its **options, read when the CLI is built (a stage registered by then, e.g. from a
    user's module, has its flags in `roost curate --help` from its own module, nothing else)."""

    def __init__(self, command):
        functools.update_wrapper(self, command)
        self.command = command

    def __call__(self, **kwargs):
        return self.command(**kwargs)

    @property
    def __signature__(self):
        import inspect

        from roost.api import stage_options

        signature = inspect.signature(self.command)
        fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        flags = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[option.type],
                                   default=typer.Option(None, *([option.flag] if option.flag else []), help=option.help))
                 for name, (_, option) in stage_options().items()]
        return signature.replace(parameters=fixed + flags)


app.command("curate")(_WithStageFlags(curate))


def _print_curate_summary(manifest: dict, out_dir: Path) -> None:
    out = Console()
    if manifest.get("skipped"):
        out.print(f"already curated with this recipe: {out_dir} (nothing to do)")
    table = Table(title=f"roost curate ({manifest.get('row_kind', 'sft')} rows)", show_header=True)
    for col in ("stage", "in", "kept", "removed"):
        table.add_column(col)
    for st in manifest["stages"]:
        table.add_row(st["name"], str(st["rows_in"]), str(st["kept"]), json.dumps(st["removed"]) if st["removed"] else "")
    out.print(table)
    out.print(f"input rows: {manifest['input_rows']}  output rows: {manifest['rows']}  rejects: {manifest['rejects']}")
    reused = [n for n, e in ((manifest.get("cache") or {}).get("entries") or {}).items() if e["status"] == "hit"]
    if reused and not manifest.get("skipped"):  # a killed run's work, read back from OUT/.cache
        out.print(f"resumed: {', '.join(reused)} read back from the cache", soft_wrap=True)
    out.print(f"data: {out_dir / 'data'}  rejects: {out_dir / 'rejects'}  manifest: {out_dir / 'manifest.json'}")


@app.command("publish")
def publish_cmd(
    out: Path = typer.Argument(..., help="a directory roost build, curate or iterate wrote"),
    repo: str = typer.Option(..., help="Hub dataset repo, ORG/NAME"),
    private: bool = typer.Option(False, "--private", help="create the repo private (an existing repo keeps its visibility)"),
    revision: Optional[str] = typer.Option(None, help="branch to commit to, created if missing (default main)"),
    dry_run: Optional[Path] = typer.Option(None, "--dry-run", metavar="DIR",
                                           help="write the folder that would be uploaded to DIR and stop (no token, no network)"),
    license: Optional[str] = typer.Option(None, help="license id for the card, e.g. apache-2.0 (default: other)"),
    endpoint: Optional[str] = typer.Option(None, help="Hub URL (default: HF_ENDPOINT, else https://huggingface.co)"),
    verbose: bool = typer.Option(False, "--verbose", help="show library logs (default: OUT/logs/roost.log)"),
) -> None:
    """Publish an output to the Hugging Face Hub as a dataset repo, in one commit (shards, card, manifest, recipe)."""
    from roost.publish import check_license, check_repo_id, check_revision, publish, read_source

    with user_errors():
        check_repo_id(repo)
        check_revision(revision)
        check_license(license)
        source = read_source(out)  # a directory roost did not write: one line, before anything is written
        _publish_logs(out, verbose)
        result = publish(source, repo, private=private, revision=revision, dry_run=dry_run, license=license,
                         endpoint=endpoint, say=lambda s: console.print(s, markup=False, highlight=False, soft_wrap=True))
    _print_publish_summary(result)


def _publish_logs(out: Path, verbose: bool) -> None:
    import logging
    import tempfile

    try:
        logs.setup(out, verbose)  # OUT/logs/roost.log, beside the build's own logs; the data is not touched
    except OSError:  # a read-only OUT
        logs.setup(Path(tempfile.mkdtemp(prefix="roost-publish-logs-")), verbose)
    if not verbose:  # huggingface_hub's own console handler ("No files have been modified ...") -> the file only
        import huggingface_hub.utils.logging  # noqa: F401  (adds that handler when first imported)

        hub = logging.getLogger("huggingface_hub")
        for h in [h for h in hub.handlers if type(h) is logging.StreamHandler]:
            hub.removeHandler(h)


def _print_publish_summary(result: dict) -> None:
    out = Console()
    out.print(f"roost publish: {result['repo']}@{result['revision']}", highlight=False)
    table = Table(show_header=True)
    table.add_column("config")
    table.add_column("rows", justify="right")
    for name, rows in result["configs"].items():
        table.add_row(name, str(rows))
    out.print(table)
    if result.get("dry_run"):
        out.print(f"dry run: {result['files']} files ({result['bytes'] / 1e6:.1f} MB) staged in {result['dry_run']}; "
                  "nothing uploaded", soft_wrap=True)
    elif result["committed"]:
        out.print(f"published: commit {result['commit'][:12]} ({result['changed']} new or changed, {result['unchanged']} "
                  f"unchanged, {result['deleted']} deleted)  {result['url']}", soft_wrap=True)
    else:
        out.print(f"nothing changed: {result['repo']}@{result['revision']} already holds these {result['files']} files "
                  f"(commit {result['commit'][:12]}, no new commit)  {result['url']}", soft_wrap=True)


@app.command()
def report(
    out: Path = typer.Argument(..., help="a directory roost build, curate or iterate wrote"),
    html: Optional[Path] = typer.Option(None, help="where to write the page (default OUT/report/report.html)"),
) -> None:
    """One self-contained HTML page of plots and tables (lengths, scores, dedup, rejects, iterations, sample
    rows); the figures also as PNGs in OUT/report/figures/ for the dataset card."""
    from roost.report import write_report

    with user_errors():
        path = write_report(out, html)
    Console().print(f"report: {path}", soft_wrap=True, highlight=False)


@app.command()
def inspect(path: Path = typer.Argument(..., help="output directory or a Parquet file"), rows: int = 3) -> None:
    """Show schema, counts, a few rows and the manifest of a dataset roost wrote."""
    from roost.dataset.show import describe_dataset

    try:
        describe_dataset(path, rows, Console())
    except FileNotFoundError as e:
        _fail(str(e))


@app.command("tiny-model")
def tiny_model(
    out: Path = typer.Argument(..., help="directory to write the model to"),
    style: str = typer.Option("chatml", help="chat template style: chatml or llama3 (kind chat)"),
    kind: str = typer.Option("chat", help="chat (its text is noise) or math (solves some of the shipped problems)"),
) -> None:
    """Build an offline tiny model: `chat` learns the chat format only; `math` is trained on
    worked solutions of the shipped arithmetic problems (a few CPU minutes)."""
    if kind == "math":
        from roost.tiny.math_model import build_tiny_math_model

        console.print(f"tiny math model at {build_tiny_math_model(out)}")
        return
    if kind != "chat":
        _fail("--kind: chat or math")
    from roost.tiny.models import TinyModelSpec, build_tiny_model

    path = build_tiny_model(out, TinyModelSpec(style=style))
    console.print(f"tiny {style} model at {path}")


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), help="output directory"),
    num_rows: int = typer.Option(200, help="Magpie rows to generate (the pairs use their prompts)"),
    verbose: bool = typer.Option(False, "--verbose", help="show library logs (default: OUT/logs/roost.log)"),
) -> None:
    """Offline end-to-end demo on tiny models built here: Magpie SFT rows, curated; then
    reward-ranked preference pairs from their prompts, curated; SPIN, SPPO and Step-DPO pairs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with user_errors(), _holding(_out_dir(out)):
        _demo(out, num_rows, verbose)


def _demo(out: Path, num_rows: int, verbose: bool) -> None:
    from roost.tiny.models import TinyModelSpec, build_tiny_model, build_tiny_reward_model

    log = logs.setup(out, verbose)
    console.print(
        "[yellow]Demo on tiny models built here (2 layers, trained for a few seconds): they have "
        "learned the chat format, but their words are noise. Point --model at a real model for real data.[/]"
    )
    model_path = build_tiny_model(REPO / ".cache" / "models" / "tiny-chatml", TinyModelSpec(style="chatml"))
    reward_path = build_tiny_reward_model(REPO / ".cache" / "models" / "tiny-reward")
    build(
        recipe=REPO / "recipes" / "magpie-demo.yaml", model=str(model_path), revision=None,
        out=out / "magpie", num_rows=num_rows, shard_size=None, seed=None, set_=[], verbose=verbose,
    )
    console.print("[yellow]Curating it: dedup, deita scores (from the same tiny model, so noise too), selection.[/]")
    curate(
        input=str(out / "magpie"), out=out / "curated", recipe=REPO / "recipes" / "curate-demo.yaml",
        split=None, exact_field=None, semantic=None, threshold=None, embedding_model=None,
        scorer=str(model_path), complexity_model=None, quality_model=None, reward_model=None, budget=None, tau=None,
        shard_size=None, verbose=verbose,
    )
    console.print("[yellow]Preference pairs: 4 samples per Magpie prompt, ranked by the tiny reward model.[/]")
    build(
        recipe=REPO / "recipes" / "reward-pairs-demo.yaml", model=str(model_path), revision=None,
        out=out / "pairs", num_rows=None, shard_size=None, seed=None,
        set_=[f"synthesizer.prompts.path={out / 'magpie'}", f"synthesizer.reward_model.model={reward_path}"],
        verbose=verbose,
    )
    console.print("[yellow]Curating the pairs: dedup on the prompt, rewards re-scored.[/]")
    curate(
        input=str(out / "pairs"), out=out / "pairs-curated", recipe=REPO / "recipes" / "curate-pairs-demo.yaml",
        split=None, exact_field=None, semantic=None, threshold=None, embedding_model=None,
        scorer=None, complexity_model=None, quality_model=None, reward_model=str(reward_path), budget=None, tau=None,
        shard_size=None, verbose=verbose,
    )
    console.print("[yellow]SPIN pairs: the seed conversations' gold answers against the tiny policy's own.[/]")
    build(
        recipe=REPO / "recipes" / "spin-demo.yaml", model=str(model_path), revision=None, out=out / "spin",
        num_rows=None, shard_size=None, seed=None,
        set_=[f"synthesizer.input.path={REPO / 'data' / 'seed_conversations.jsonl'}"], verbose=verbose,
    )
    console.print("[yellow]SPPO pairs: 4 samples per Magpie prompt, the tiny policy judging them pairwise.[/]")
    build(
        recipe=REPO / "recipes" / "sppo-demo.yaml", model=str(model_path), revision=None, out=out / "sppo",
        num_rows=None, shard_size=None, seed=None, set_=[f"synthesizer.prompts.path={out / 'magpie'}"],
        verbose=verbose,
    )
    console.print("[yellow]Step-DPO pairs: a tiny model trained on the shipped arithmetic problems (a few CPU "
                  "minutes, once) solves them, sometimes wrongly; rollouts find each wrong solution's first wrong "
                  "step, sampling from the prefix before it rectifies it.[/]")
    from roost.tiny.math_model import build_tiny_math_model

    math_path = build_tiny_math_model(REPO / ".cache" / "models" / "tiny-math")
    build(
        recipe=REPO / "recipes" / "step-dpo.yaml", model=str(math_path), revision=None, out=out / "step-dpo",
        num_rows=None, shard_size=None, seed=None,
        set_=[f"synthesizer.problems.path={REPO / 'data' / 'arithmetic_problems.jsonl'}"], verbose=verbose,
    )
    held_out = _demo_does_it_help(math_path, out)
    console.print("[yellow]A report of each output (HTML + PNG figures), and the curated pairs staged for the Hub "
                  "as a dry run (no token, nothing uploaded).[/]")
    from roost.report import write_report

    reports = [write_report(out / name) for name in ("curated", "pairs-curated", "spin", "sppo", "step-dpo")]
    staged = out / "hub-dry-run"
    shutil.rmtree(staged, ignore_errors=True)  # the demo's own folder: a re-run stages it afresh
    publish_cmd(out=out / "pairs-curated", repo="my-org/roost-demo-pairs", private=False, revision=None,
                dry_run=staged, license=None, endpoint=None, verbose=verbose)
    Console().print(f"\nSFT rows: {out / 'curated'}   reward-ranked pairs: {out / 'pairs-curated'}   SPIN: {out / 'spin'}"
                    f"   SPPO: {out / 'sppo'} (SPPO's own columns: {out / 'sppo' / 'sppo'})   Step-DPO: {out / 'step-dpo'}\n"
                    f"reports: {reports[1]} (and beside each output)   Hub dry run: {staged}\n"
                    f"{held_out}\n"
                    f"look inside: roost inspect {out / 'sppo'}   the SPIN loop: roost iterate recipes/spin-demo.yaml"
                    + (f"\nlibrary logs: {log}" if log else ""), soft_wrap=True)


# The demo's training: scripts/train_dpo.py on the Step-DPO pairs, settings from bench/bench_improves.py.
DEMO_TRAINING = "--steps 60 --lr 1e-5 --beta 0.1 --loss-type sigmoid,sft --batch-size 8"
DEMO_HELD_OUT = (2000, 2300)  # rows of data/arithmetic_problems.jsonl no demo build uses


def _demo_does_it_help(base: Path, out: Path) -> str:
    """Train the base math model on the demo's Step-DPO pairs, then evaluate both on held-out
    problems: the line the demo ends with."""
    from roost.building.iterate import run_training
    from roost.engines import release_all
    from roost.errors import OutputMismatch
    from roost.evaluation.config import EvalRecipe
    from roost.evaluation.run import preflight
    from roost.flows.evaluate import eval_flow

    console.print(f"[yellow]Does the data help? A short DPO training of the tiny math model on the Step-DPO pairs "
                  f"(scripts/train_dpo.py {DEMO_TRAINING}), then roost eval of the base and the trained model on "
                  f"{DEMO_HELD_OUT[1] - DEMO_HELD_OUT[0]} held-out problems.[/]")
    release_all()
    trained = out / "step-dpo-model"
    shutil.rmtree(trained, ignore_errors=True)
    command = (f"{sys.executable} {REPO / 'scripts' / 'train_dpo.py'} --data {out / 'step-dpo' / 'data'} "
               f"--model {base} --output {trained} {DEMO_TRAINING}")
    if (code := run_training(command, out / "step-dpo-train.log")) != 0:
        _fail(f"the demo's training exited with {code}; see {out / 'step-dpo-train.log'}", 1)
    scores = []
    for name, model in (("base", base), ("trained", trained)):
        recipe = EvalRecipe(model={"model": str(model), "max_model_len": 1024, "seed": 0},
                            problems={"path": str(REPO / "data" / "arithmetic_problems.jsonl"),
                                      "start": DEMO_HELD_OUT[0], "stop": DEMO_HELD_OUT[1]},
                            sampling={"temperature": 0.8, "top_p": 0.95, "max_tokens": 256})
        folder = out / f"eval-{name}"
        try:
            preflight(recipe, folder)
        except OutputMismatch:  # the demo's own folder, from another model or settings: measure again
            shutil.rmtree(folder)
        scores.append(eval_flow(recipe, str(folder))["metrics"])
        release_all()
    (b, t) = scores
    return (f"held-out accuracy (greedy / sampled, {b['problems']} problems): base {b['greedy_accuracy']:.3f} / "
            f"{b['sampled_accuracy']:.3f} -> trained {t['greedy_accuracy']:.3f} / {t['sampled_accuracy']:.3f}"
            f"   ({out / 'eval-base'}, {out / 'eval-trained'})")


def _print_build_summary(manifest: dict, out_dir: Path) -> None:
    out = Console()
    table = Table(title=f"roost build: {manifest['recipe']['name']}", show_header=True)
    table.add_column("shard")
    table.add_column("rows", justify="right")
    table.add_column("rejects", justify="right")
    table.add_column("seconds", justify="right")
    for name, s in manifest["shards"].items():
        table.add_row(name, str(s["rows"]), str(s["rejects"]), str(s.get("seconds", "")))
    out.print(table)
    out.print(f"status: {manifest['status']}  rows: {manifest['rows']}  rejects: {manifest['rejects']}"
              f"  (skipped {manifest.get('skipped_shards', 0)} finished shard(s))")
    if manifest["rejects_by_reason"]:
        out.print("rejects by reason: " + json.dumps(manifest["rejects_by_reason"]))
    out.print(f"model: {manifest.get('model')}  revision: {manifest.get('revision')}")
    if (ex := manifest.get("executor")) and ex.get("kind") == "ray":
        retried = ex["retried_shards"]
        out.print(f"ray: {ex['workers']} worker(s) at {ex['address']}, {ex['seconds']} s"
                  + (f"; retried shard(s) {', '.join(str(i + 1) for i in retried)} after a worker died" if retried
                     else ""), soft_wrap=True)
    out.print(f"data: {out_dir / 'data'}  rejects: {out_dir / 'rejects'}  manifest: {out_dir / 'manifest.json'}")


def main() -> None:  # pragma: no cover
    from roost.runtime.stopping import run_cli

    run_cli(lambda: app(prog_name="roost"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
