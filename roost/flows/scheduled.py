"""Prefect flow that `roost serve` deploys on a schedule: build, then optionally curate and
publish, into a new dated directory per run (roost.flows.runs). The recipes travel as the
deployment's parameters, frozen when `roost serve` started, so the Prefect UI shows exactly
what each run makes; a run started by hand may pass edited ones."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from roost.engines import release_all
from roost.flows import runs
from roost.flows.build import build_flow
from roost.flows.curate import curate_flow
from roost.recipe import CurateRecipe, validate, validate_recipe
from roost.runtime import logs


@flow(name="roost-scheduled", log_prints=True)
def scheduled_flow(recipe: dict[str, Any], base: str, curate: dict[str, Any] | None = None,
                   publish: dict[str, Any] | None = None, seed_per_run: bool = False) -> dict[str, Any]:
    when = flow_run.scheduled_start_time or datetime.now(timezone.utc)
    run = runs.run_dir(base, when, flow_run.id or "local")
    logs.setup(run)
    runs.record(base, run, "running", flow_run=flow_run.id, scheduled_for=when.isoformat())
    try:
        result = _run(recipe, run, curate, publish, seed_per_run, when)
    except BaseException as e:
        runs.record(base, run, "failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise
    finally:
        release_all()  # the engines' processes end with the run, so the runner sees it finish
    runs.record(base, run, "completed", **result)
    runs.mark_latest(base, run)
    return {"run": str(run), **result}


def _run(recipe: dict, run: Path, curate: dict | None, publish: dict | None, seed_per_run: bool,
         when: datetime) -> dict[str, Any]:
    raw = dict(recipe)
    if seed_per_run:  # a new, reproducible seed per scheduled day
        raw["model"] = {**raw.get("model", {}), "seed": int(when.strftime("%Y%m%d"))}
    build = build_flow(validate_recipe(raw, "deployment parameter 'recipe'"), str(run / "build"))
    result = {"build": str(run / "build"), "rows": build["rows"], "seed": build.get("seed")}
    final = run / "build"
    if curate is not None:
        raw_curate = {**curate, "input": {**curate.get("input", {}), "path": str(final)}}
        curated = curate_flow(validate(CurateRecipe, raw_curate, "deployment parameter 'curate'"),
                              str(run / "curated"), progress=False)
        final = run / "curated"
        result.update(curated=str(final), rows=curated["rows"])
    if publish is not None:
        from roost.flows.publish import publish_task

        result["published"] = publish_task(str(final), **publish)
    return result
