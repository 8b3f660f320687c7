"""Prefect flow for `roost curate`: thin wiring over roost.curation.runner.

Curation is one task: dedup and selection are global over the whole input, and the stages
share in-memory state (embeddings, decisions) that is cheaper to keep than to persist.
"""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from roost.curation.runner import curate
from roost.flows import artifacts
from roost.recipe import CurateRecipe
from roost.runtime import stopping


@task(name="curate", cache_policy=NO_CACHE)
def curate_task(recipe: CurateRecipe, out: str, progress: bool = True) -> dict:
    return curate(recipe, out, progress=progress)


@flow(name="roost-curate", log_prints=True)
def curate_flow(recipe: CurateRecipe, out: str, progress: bool = True) -> dict:
    stopping.note_flow_run()
    manifest = curate_task(recipe, out, progress)
    artifacts.attach(manifest, out)
    return manifest
