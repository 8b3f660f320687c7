"""`roost serve`: a Prefect deployment of the build flow (then curate, then publish) on a cron
schedule, served from this process until it is stopped (Ctrl-C pauses the schedule).

Schedules need a real Prefect server: the in-process one Prefect starts when no API URL is
set runs no scheduler, so no cron run would ever come. With no `PREFECT_API_URL`, roost
starts `prefect server start` on loopback as a child process (its log under BASE/logs) and
stops it on exit; the UI is then at that address.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from roost.errors import ConfigError, UserError

SERVER_START_SECONDS = 120


class PrefectServerError(UserError):
    """The Prefect server cannot be reached or started."""


def cron_schedule(cron: str, timezone: str = "UTC"):
    """Prefect's CronSchedule, or a one-line error naming the option."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        return CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as e:
        field = e.errors()[0]["loc"][0] if e.errors() and e.errors()[0]["loc"] else "cron"
        if field == "timezone":
            raise ConfigError(f"--timezone {timezone!r}: not a known time zone (e.g. UTC, Europe/Paris)") from None
        raise ConfigError(f"--cron {cron!r}: not a cron expression (five fields: minute hour day-of-month "
                          "month day-of-week, e.g. '0 3 * * *')") from None


def parameters(recipe, base: Path, curate=None, publish: dict[str, Any] | None = None,
               seed_per_run: bool = False) -> dict[str, Any]:
    """The deployment's parameters: plain JSON, and never a token (that stays in the environment)."""
    return {"recipe": recipe.model_dump(mode="json", exclude={"loop"}), "base": str(base.resolve()),
            "curate": curate.model_dump(mode="json") if curate is not None else None,
            "publish": publish, "seed_per_run": seed_per_run}


def serve(name: str, schedule, params: dict[str, Any]) -> None:
    """Register the deployment with its schedule and run its flow runs until stopped."""
    from prefect.flows import EntrypointType

    from roost.flows.scheduled import scheduled_flow

    scheduled_flow.serve(
        name=name, schedules=[schedule], parameters=params, limit=1,  # one run at a time: one set of engines
        description=f"roost build of recipe {params['recipe']['name']!r}, outputs under {params['base']}",
        tags=["roost"], print_starting_message=False, entrypoint_type=EntrypointType.MODULE_PATH,
    )


@contextmanager
def prefect_server(log_dir: Path) -> Iterator[str]:
    """The Prefect API to use: PREFECT_API_URL when set (checked), else a server started here."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    url = get_current_settings().api.url
    if url:
        _wait_healthy(url, timeout=10, what=f"PREFECT_API_URL {url}")
        yield url
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "prefect-server.log", "ab")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": url}
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(url, timeout=SERVER_START_SECONDS, what="the Prefect server roost started", proc=proc)
        os.environ["PREFECT_API_URL"] = url  # for the processes the runner starts
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_healthy(url: str, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise PrefectServerError(f"{what} exited with code {proc.returncode} (see its log)")
        if time.monotonic() > deadline:
            raise PrefectServerError(f"{what} does not answer at {url}/health")
        time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
