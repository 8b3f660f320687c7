"""Prefect flow for `roost eval`: thin wiring over roost.evaluation.run."""
from __future__ import annotations

import sys

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from roost.evaluation import run as work
from roost.evaluation.config import EvalRecipe
from roost.runtime import stopping


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(recipe: EvalRecipe, out: str) -> dict:
    return work.run_eval(recipe, out, say=_say)


@flow(name="roost-eval", log_prints=True)
def eval_flow(recipe: EvalRecipe, out: str) -> dict:
    stopping.note_flow_run()
    return evaluate_task(recipe, out)


def evaluate_here(recipe: EvalRecipe, out: str) -> dict:
    """The same evaluation without Prefect."""
    return work.run_eval(recipe, out, say=_say)


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
