"""The work of `roost build`, as plain functions (the Prefect flow in roost.flows only wires them).

A build is the list of shards its synthesizer plans; a shard is an independent unit of work:
it loads (or reuses) the process's engines, generates its rows from its own derived seed,
and writes its own Parquet file atomically. Re-running into the same output skips shards
whose file exists, so a killed run resumes without redoing or duplicating anything. An
output made by a different recipe (or cut into a different number of shards) is refused.
This module names no synthesizer: they are found by `kind` (roost.synthesizers).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from roost import __version__
from roost.errors import OutputMismatch
from roost.recipe import Recipe
from roost.synthesizers.base import SYNTHESIZERS, Shard, Synthesizer
from roost.writer import DatasetWriter, ShardStats, base_manifest, read_roost_metadata, summarize


def synthesizer_for(recipe: Recipe) -> Synthesizer:
    return _synthesizer(recipe.model_dump_json())


@lru_cache(maxsize=8)
def _synthesizer(recipe_json: str) -> Synthesizer:
    # one synthesizer (and so one set of loaded engines) per recipe per process
    recipe = Recipe.model_validate_json(recipe_json)
    return SYNTHESIZERS.get(recipe.synthesizer.kind)(recipe.synthesizer, recipe)


def plan(recipe: Recipe) -> list[Shard]:
    return synthesizer_for(recipe).plan()


def writer_for(recipe: Recipe, out: str | Path, num_shards: int | None = None) -> DatasetWriter:
    synth = synthesizer_for(recipe)
    count = num_shards if num_shards is not None else len(synth.plan())
    return DatasetWriter(out, synth.schema, split=recipe.output.split, num_shards=count)


def check_resumable(recipe: Recipe, out: str | Path, num_shards: int) -> None:
    existing = DatasetWriter(out, synthesizer_for(recipe).schema, num_shards=num_shards).read_manifest()
    if not existing:
        return
    if existing.get("recipe_hash") != recipe.fingerprint():
        raise OutputMismatch(
            f"{out} was built from a different recipe (hash {existing.get('recipe_hash')}, "
            f"this one {recipe.fingerprint()}); choose another --out or delete it"
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
    synth = synthesizer_for(recipe)
    synth.check()
    shards = synth.plan()
    check_resumable(recipe, out, len(shards))
    return shards


def run_shard(recipe: Recipe, out: str | Path, index: int) -> ShardStats:
    """Generate and write shard `index`. Safe to run on any worker that can see `out`."""
    synth = synthesizer_for(recipe)
    shard = synth.plan()[index]
    writer = writer_for(recipe, out, shard.count)
    if writer.is_done(index):
        return writer.shard_stats(index)
    result = synth.generate(shard)
    provenance = {
        "roost_version": __version__,
        "recipe_hash": recipe.fingerprint(),
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
            writer.schema.name, recipe.model_dump(mode="json"), recipe.fingerprint(),
            status="running", num_shards=num_shards))


def finish_manifest(recipe: Recipe, out: str | Path, num_shards: int) -> dict[str, Any]:
    """Rebuild the manifest from the shard files themselves: they are the source of truth."""
    writer = writer_for(recipe, out, num_shards)
    done = [i for i in range(num_shards) if writer.is_done(i)]
    provenance = _first_provenance(writer, done)
    manifest = base_manifest(
        writer.schema.name,
        recipe.model_dump(mode="json"),
        recipe.fingerprint(),
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


def build_here(recipe: Recipe, out: str | Path) -> dict[str, Any]:
    """The whole build in this process, shard after shard, without Prefect (a notebook, a bench;
    the CLI's flow runs the same steps as tasks). Resumes like the CLI does."""
    from roost import stopping

    shards = preflight(recipe, out)
    start_manifest(recipe, out, len(shards))
    writer = writer_for(recipe, out, len(shards))
    stopping.track("shards", lambda: len(shards) - len(writer.pending()), len(shards), manifest=writer.root / "manifest.json")
    for index in writer.pending():
        run_shard(recipe, out, index)
    return finish_manifest(recipe, out, len(shards))

