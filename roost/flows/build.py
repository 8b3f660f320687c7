"""Prefect flow for `roost build`: thin wiring over roost.building.runner.Build.

Shards run one after another in this process, each a task, because they share its engines;
with the recipe's `executor: {kind: ray}` (`roost build --ray ADDRESS`) one task hands them to
Ray workers instead, each holding one engine (roost.building.on_ray). Either way each shard is
independent (its own seed, its own files) and the manifest is finished here.
"""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from roost.building.runner import Build
from roost.flows import artifacts
from roost.recipe import Recipe
from roost.runtime import stopping


@task(name="build-shard", cache_policy=NO_CACHE, task_run_name="shard-{index}")
def build_shard(build: Build, index: int) -> dict:
    return build.run_shard(index).__dict__


@task(name="build-shards-on-ray", cache_policy=NO_CACHE)
def build_shards_on_ray(build: Build, pending: list[int]) -> dict:
    from roost.building.on_ray import run_on_ray

    return run_on_ray(build, pending)


@flow(name="roost-build", log_prints=True)
def build_flow(recipe: Recipe, out: str) -> dict:
    stopping.note_flow_run()
    build = Build.open(recipe, out)
    skipped = build.done()
    if skipped:
        print(f"resuming: {skipped} finished shard(s) kept, {build.num_shards - skipped} to build")
    manifest = build.run(on_shard=lambda index: build_shard(build, index),
                         on_ray=lambda pending: build_shards_on_ray(build, pending))
    artifacts.attach(manifest, out)
    return manifest
