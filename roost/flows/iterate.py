"""Prefect flow for `roost iterate`: thin wiring over roost.building.iterate (build as a subflow, then
the user's training command as a task, then the held-out evaluation as a subflow, per iteration)."""
from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from roost.building import iterate as work
from roost.flows.build import build_flow
from roost.flows.evaluate import eval_flow
from roost.recipe import LoopConfig, Recipe
from roost.runtime import stopping


@task(name="train", cache_policy=NO_CACHE, task_run_name="train-{log.parent.name}")
def train(command: str, log: Path) -> int:
    return work.run_training(command, log)


@flow(name="roost-iterate", log_prints=True)
def iterate_flow(recipe: Recipe, loop: LoopConfig, out: str) -> dict:
    stopping.note_flow_run()
    return work.run_iterations(recipe, loop, out, build=build_flow, train=train, evaluate=eval_flow, on_step=_say)


def _say(message: str) -> None:
    # the terminal, not Prefect's log (library logs go to OUT/logs/roost.log)
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
