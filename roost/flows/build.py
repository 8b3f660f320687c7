"""Prefect flow for `roost build`: thin wiring over roost.build.

Shards run one after another in this process because they share its engines. To spread
them over machines, run `build_shard` with a Ray or Dask task runner: each shard is
independent (its own seed, its own files).
"""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from roost import artifacts, build as work
from roost.recipe import Recipe


@task(name="build-shard", cache_policy=NO_CACHE, task_run_name="shard-{index}")
def build_shard(recipe: Recipe, out: str, index: int) -> dict:
    return work.run_shard(recipe, out, index).__dict__


@flow(name="roost-build", log_prints=True)
def build_flow(recipe: Recipe, out: str) -> dict:
    shards = work.preflight(recipe, out)
    work.start_manifest(recipe, out, len(shards))
    pending = work.writer_for(recipe, out, len(shards)).pending()
    skipped = len(shards) - len(pending)
    if skipped:
        print(f"resuming: {skipped} finished shard(s) kept, {len(pending)} to build")
    for index in pending:
        build_shard(recipe, out, index)
    manifest = work.finish_manifest(recipe, out, len(shards))
    manifest["skipped_shards"] = skipped
    artifacts.publish(manifest, out)
    return manifest
