"""The work of `roost build`, as plain functions (the Prefect flow in roost.flows only wires them).

A build is a list of shards; a shard is an independent unit of work: it loads (or reuses)
the process's engine, generates its quota, and writes its own Parquet file atomically.
Re-running into the same output skips shards whose file exists, so a killed run resumes
without redoing or duplicating anything. An output made by a different recipe is refused.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from roost import __version__
from roost.engines import get_engine
from roost.recipe import Recipe
from roost.schemas import SFT_ROWS
from roost.synthesizers.magpie import MagpieSynthesizer
from roost.writer import DatasetWriter, ShardStats, base_manifest, read_roost_metadata, summarize


class OutputMismatch(RuntimeError):
    """The output directory holds a dataset built from a different recipe."""


def writer_for(recipe: Recipe, out: str | Path) -> DatasetWriter:
    return DatasetWriter(out, SFT_ROWS, split=recipe.output.split, num_shards=recipe.output.num_shards)


def check_resumable(recipe: Recipe, out: str | Path) -> None:
    existing = writer_for(recipe, out).read_manifest()
    if existing and existing.get("recipe_hash") != recipe.fingerprint():
        raise OutputMismatch(
            f"{out} was built from a different recipe (hash {existing.get('recipe_hash')}, "
            f"this one {recipe.fingerprint()}); choose another --out or delete it"
        )


def shard_seed(recipe: Recipe, index: int) -> int:
    return recipe.model.seed * 1_000_003 + index


def run_shard(recipe: Recipe, out: str | Path, index: int) -> ShardStats:
    """Generate and write shard `index`. Safe to run on any worker that can see `out`."""
    writer = writer_for(recipe, out)
    if writer.is_done(index):
        return writer.shard_stats(index)
    engine = get_engine(recipe.model)
    synth = MagpieSynthesizer(recipe.magpie, engine, model_id=recipe.model.model, seed=recipe.model.seed)
    result = synth.generate(
        recipe.output.shard_rows(index),
        random.Random(shard_seed(recipe, index)),
        label=f"shard {index + 1}/{recipe.output.num_shards}",
    )
    provenance = provenance_for(recipe, engine.describe(), synth.provenance())
    return writer.write_shard(index, result.rows, result.rejects, provenance, result.stats)


def provenance_for(recipe: Recipe, engine: dict[str, Any], synth: dict[str, Any]) -> dict[str, Any]:
    return {
        "roost_version": __version__,
        "recipe_hash": recipe.fingerprint(),
        "model": engine.get("model"),
        "revision": engine.get("revision"),
        "engine": engine,
        "seed": recipe.model.seed,
        **synth,
    }


def start_manifest(recipe: Recipe, out: str | Path) -> None:
    writer = writer_for(recipe, out)
    if writer.read_manifest() is None:
        writer.write_manifest(
            base_manifest("sft", recipe.model_dump(mode="json"), recipe.fingerprint(), status="running")
        )


def finish_manifest(recipe: Recipe, out: str | Path) -> dict[str, Any]:
    """Rebuild the manifest from the shard files themselves: they are the source of truth."""
    writer = writer_for(recipe, out)
    done = [i for i in range(recipe.output.num_shards) if writer.is_done(i)]
    stats = [writer.shard_stats(i) for i in done]
    provenance = _first_provenance(writer, done)
    manifest = base_manifest(
        "sft",
        recipe.model_dump(mode="json"),
        recipe.fingerprint(),
        status="complete" if len(done) == recipe.output.num_shards else "partial",
        schema=SFT_ROWS.name,
        split=recipe.output.split,
        num_shards=recipe.output.num_shards,
        model=provenance.get("model", recipe.model.model),
        revision=provenance.get("revision"),
        engine=provenance.get("engine"),
        seed=recipe.model.seed,
        sampling={
            "instruction": provenance.get("instruction_sampling"),
            "response": provenance.get("response_sampling"),
        },
        first_turn_template=provenance.get("first_turn_template"),
        system_prompts=provenance.get("system_prompts"),
        **summarize(stats),
    )
    writer.write_manifest(manifest)
    return manifest


def _first_provenance(writer: DatasetWriter, done: list[int]) -> dict[str, Any]:
    for i in done:
        meta = read_roost_metadata(writer.data_path(i))
        if meta.get("provenance"):
            return meta["provenance"]
    return {}
