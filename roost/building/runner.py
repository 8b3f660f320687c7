"""The work of `roost build`, as plain functions (the Prefect flow in roost.flows only wires them).

A build is the list of shards its synthesizer plans; a shard is an independent unit of work:
it loads (or reuses) the process's engines, generates its rows from its own derived seed,
and writes its own Parquet file atomically. Re-running into the same output skips shards
whose file exists, so a killed run resumes without redoing or duplicating anything. An
output made by a different recipe (or cut into a different number of shards) is refused.
This module names no synthesizer: they are found by `kind` (roost.synthesizers).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from roost import __version__
from roost.dataset.writer import DatasetWriter, ShardStats, base_manifest, read_roost_metadata, summarize
from roost.engines.base import on_release
from roost.errors import OutputMismatch
from roost.recipe import Recipe
from roost.synthesizers.base import SYNTHESIZERS, Shard, Synthesizer


def synthesizer_for(recipe: Recipe) -> Synthesizer:
    return _synthesizer(recipe.model_dump_json())


@lru_cache(maxsize=8)
def _synthesizer(recipe_json: str) -> Synthesizer:
    # one synthesizer (and so one set of loaded engines) per recipe per process
    recipe = Recipe.model_validate_json(recipe_json)
    return SYNTHESIZERS.get(recipe.synthesizer.kind)(recipe.synthesizer, recipe)


on_release(_synthesizer.cache_clear)  # roost.engines.release_all drops the synthesizers too: they reach the engines


def plan(recipe: Recipe) -> list[Shard]:
    return synthesizer_for(recipe).plan()


def writer_for(recipe: Recipe, out: str | Path, num_shards: int | None = None) -> DatasetWriter:
    synth = synthesizer_for(recipe)
    count = num_shards if num_shards is not None else len(synth.plan())
    return DatasetWriter(out, synth.schema, split=recipe.output.split, num_shards=count)


def build_fingerprint(recipe: Recipe) -> str:
    """The recipe's fingerprint with what its inputs are (content digests, Hub commits): an
    edited prompts file or a moved Hub branch is another build, not this one finished."""
    inputs = synthesizer_for(recipe).inputs()
    return recipe.fingerprint(contents={name: _identity(i) for name, i in inputs.items()} or None)


def _identity(described: dict) -> str:
    return described.get("revision") or described.get("sha256") or ""


def check_resumable(recipe: Recipe, out: str | Path, num_shards: int) -> None:
    existing = DatasetWriter(out, synthesizer_for(recipe).schema, num_shards=num_shards).read_manifest()
    if not existing:
        return
    for name, now in synthesizer_for(recipe).inputs().items():
        then = (existing.get("inputs") or {}).get(name)
        if then and _identity(then) != _identity(now):
            what = "commit" if "revision" in now else "sha256"
            pin = f"; pin revision: {then['revision']} to resume it" if what == "commit" else ""
            raise OutputMismatch(f"{out} was built from another version of {now['path']} ({what} {_identity(then)[:12]}, "
                                 f"now {_identity(now)[:12]}){pin}, or choose another --out")
    if existing.get("recipe_hash") != build_fingerprint(recipe):
        raise OutputMismatch(
            f"{out} was built from a different recipe (hash {existing.get('recipe_hash')}, "
            f"this one {build_fingerprint(recipe)}); choose another --out or delete it"
        )
    if existing.get("num_shards") not in (None, num_shards):
        raise OutputMismatch(f"{out} was cut into {existing['num_shards']} shards, this plan has {num_shards} "
                             "(did the input change?); choose another --out or delete it")


def preflight(recipe: Recipe, out: str | Path) -> list[Shard]:
    """Everything a user can get wrong, checked before any engine starts: the models exist,
    the synthesizer's inputs and options make sense, the output is this recipe's."""
    from roost.engines import ensure_available

    ensure_available(recipe.model.model, recipe.model.revision)
    if recipe.model.server is not None:  # reachable, vLLM, serving this model: checked before any shard
        from roost.engines import get_engine

        get_engine(recipe.model)
    _synthesizer.cache_clear()  # a new build opens its inputs again: a file edited or a branch moved since
    synth = synthesizer_for(recipe)
    synth.check()
    shards = synth.plan()
    check_resumable(recipe, out, len(shards))
    for name, described in synth.inputs().items():
        sys.stderr.write(f"{name}: {described['path']}: {described['rows']} rows of {described['read_as']}\n")
    return shards


def run_shard(recipe: Recipe, out: str | Path, index: int) -> ShardStats:
    """Generate and write shard `index`. Safe to run on any worker that can see `out`."""
    synth = synthesizer_for(recipe)
    shard = synth.plan()[index]
    writer = writer_for(recipe, out, shard.count)
    if writer.is_done(index):
        return writer.shard_stats(index)
    started = (writer.read_manifest() or {}).get("recipe_hash")
    if started not in (None, build_fingerprint(recipe)):  # a worker that opened another version of an input
        raise OutputMismatch(f"{out}: an input changed while it was being built (the build started from "
                             f"{started}, this worker sees {build_fingerprint(recipe)}); run it again")
    result = synth.generate(shard)
    provenance = {
        "roost_version": __version__,
        "recipe_hash": build_fingerprint(recipe),
        "synthesizer": synth.kind,
        "model": recipe.model.model,
        "seed": recipe.model.seed,
        "shard_seed": shard.seed,
        "iteration": recipe.iteration,
        **_engine_provenance(recipe),
        **synth.provenance(),
    }
    subsets = {name: (schema, result.subsets.get(name, [])) for name, schema in synth.subsets.items()}
    return writer.write_shard(index, result.rows, result.rejects, provenance, result.stats, subsets)


def _engine_provenance(recipe: Recipe) -> dict[str, Any]:
    from roost.engines import get_engine

    engine = get_engine(recipe.model).describe()
    return {"revision": engine.get("revision"), "engine": engine}


def start_manifest(recipe: Recipe, out: str | Path, num_shards: int) -> None:
    writer = writer_for(recipe, out, num_shards)
    if writer.read_manifest() is None:
        writer.write_manifest(base_manifest(
            writer.schema.name, recipe.model_dump(mode="json"), build_fingerprint(recipe),
            status="running", num_shards=num_shards, inputs=synthesizer_for(recipe).inputs()))


def finish_manifest(recipe: Recipe, out: str | Path, num_shards: int) -> dict[str, Any]:
    """Rebuild the manifest from the shard files themselves: they are the source of truth."""
    writer = writer_for(recipe, out, num_shards)
    done = [i for i in range(num_shards) if writer.is_done(i)]
    provenance = _first_provenance(writer, done)
    manifest = base_manifest(
        writer.schema.name,
        recipe.model_dump(mode="json"),
        build_fingerprint(recipe),
        inputs=synthesizer_for(recipe).inputs(),
        status="complete" if len(done) == num_shards else "partial",
        schema=writer.schema.name,
        split=recipe.output.split,
        num_shards=num_shards,
        **{k: v for k, v in provenance.items() if k not in ("recipe_hash", "roost_version", "shard_seed")},
        **summarize([writer.shard_stats(i) for i in done]),
    )
    if manifest["status"] == "complete":
        manifest.update(synthesizer_for(recipe).finish(writer))
    manifest.setdefault("model", recipe.model.model)
    manifest.setdefault("seed", recipe.model.seed)
    writer.write_manifest(manifest)
    return manifest


def _first_provenance(writer: DatasetWriter, done: list[int]) -> dict[str, Any]:
    for i in done:
        meta = read_roost_metadata(writer.data_path(i))
        if meta.get("provenance"):
            return meta["provenance"]
    return {}


def build_here(recipe: Recipe, out: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """The whole build in this process, without Prefect (roost.api, a notebook, a bench; the
    CLI's flow runs the same steps as tasks). Resumes like the CLI does; `executor: {kind: ray}`
    hands the shards to Ray as the flow does. `progress`: a bar of shards (terminal or notebook)."""
    from roost.runtime import stopping

    shards = preflight(recipe, out)
    start_manifest(recipe, out, len(shards))
    writer = writer_for(recipe, out, len(shards))
    pending = writer.pending()
    skipped = len(shards) - len(pending)
    stopping.track("shards", lambda: len(shards) - len(writer.pending()), len(shards), manifest=writer.root / "manifest.json")
    executor = None
    if recipe.executor.kind == "ray" and pending:
        from roost.building.on_ray import run_on_ray

        executor = run_on_ray(recipe, out, pending, len(shards))
    else:
        with _shard_bar(progress, len(shards), skipped) as advance:
            for index in pending:
                run_shard(recipe, out, index)
                advance()
    manifest = finish_manifest(recipe, out, len(shards))
    manifest["skipped_shards"] = skipped  # as the flow's: what this run kept from an earlier one
    if executor:
        manifest["executor"] = executor
    return manifest


@contextmanager
def _shard_bar(show: bool, total: int, done: int):
    if not show:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("shards", total=total, completed=done)
        yield lambda: bar.advance(task)
