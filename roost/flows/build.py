"""Prefect flow for `roost build`: thin wiring over roost.build.

Shards run one after another in this process because they share its engines; with the
recipe's `executor: {kind: ray}` (`roost build --ray ADDRESS`) one task hands them to Ray
workers instead, each holding one engine (roost.building.on_ray). Either way each shard is
independent (its own seed, its own files) and the manifest is finished here.
"""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from roost.building import runner as work
from roost.flows import artifacts
from roost.recipe import Recipe
from roost.runtime import stopping


@task(name="build-shard", cache_policy=NO_CACHE, task_run_name="shard-{index}")
def build_shard(recipe: Recipe, out: str, index: int) -> dict:
    return work.run_shard(recipe, out, index).__dict__


@task(name="build-shards-on-ray", cache_policy=NO_CACHE)
def build_shards_on_ray(recipe: Recipe, out: str, pending: list[int], num_shards: int) -> dict:
    from roost.building.on_ray import run_on_ray

    return run_on_ray(recipe, out, pending, num_shards)


@flow(name="roost-build", log_prints=True)
def build_flow(recipe: Recipe, out: str) -> dict:
    stopping.note_flow_run()
    shards = work.preflight(recipe, out)
    work.start_manifest(recipe, out, len(shards))
    pending = work.writer_for(recipe, out, len(shards)).pending()
    skipped = len(shards) - len(pending)
    writer = work.writer_for(recipe, out, len(shards))
    stopping.track("shards", lambda: len(shards) - len(writer.pending()), len(shards), manifest=writer.root / "manifest.json")
    if skipped:
        print(f"resuming: {skipped} finished shard(s) kept, {len(pending)} to build")
    executor = None
    if recipe.executor.kind == "ray" and pending:
        executor = build_shards_on_ray(recipe, out, pending, len(shards))
    else:
        for index in pending:
            build_shard(recipe, out, index)
    manifest = work.finish_manifest(recipe, out, len(shards))
    manifest["skipped_shards"] = skipped
    if executor:
        manifest["executor"] = executor  # the CLI's summary (not written: where shards ran is not provenance)
    artifacts.publish(manifest, out)
    return manifest
