"""`roost serve` against a real Prefect server with its real scheduler.

`prefect_test_harness` runs no scheduler (its server is ephemeral), so it cannot show a
schedule firing; this module starts `prefect server start` on a loopback port, serves a
deployment with `roost serve` in its own process, and talks to the server as a user would.
With SQLAlchemy 2.1 the server's scheduler fails on every loop and no scheduled run is ever
created: the first test fails then.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOST = [sys.executable, "-m", "roost.cli"]
DEPLOYMENT = "roost-scheduled/serve-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    url = f"http://127.0.0.1:{_free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1"}
    log = open(home / "server.log", "wb")
    port = url.split(":")[2].split("/")[0]
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", port], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait(lambda: proc.poll() is not None or _healthy(url), 120, "the Prefect server")
        assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
        yield url, env, home / "server.log"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def served(prefect_server, tiny_chatml_path, tmp_path_factory):
    """`roost serve` of a small Magpie build, in its own process, for the module's tests."""
    url, env, _ = prefect_server
    base = tmp_path_factory.mktemp("scheduled")
    log = open(base.parent / "serve.log", "wb")
    proc = subprocess.Popen(
        [*ROOST, "serve", str(REPO / "recipes" / "magpie-demo.yaml"), "--cron", "0 3 * * *", "--name", "serve-test",
         "--out", str(base), "--model", str(tiny_chatml_path), "--set", "output.num_rows=8",
         "--set", "output.shard_size=4"],
        stdout=log, stderr=subprocess.STDOUT, env={**env, "PREFECT_RUNNER_POLL_FREQUENCY": "2"})
    try:
        yield base, proc, base.parent / "serve.log"
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C stops serving: in seconds, exit 130, one line
        t0 = time.monotonic()
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        log.close()
        text = (base.parent / "serve.log").read_text()
        assert code == 130 and time.monotonic() - t0 < 30, (code, text[-3000:])
        assert f"stopped serving {DEPLOYMENT}" in text.strip().splitlines()[-1], text[-3000:]


def _client_call(url: str, fn):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go():
        async with get_client() as client:
            return await fn(client)

    with temporary_settings(updates={PREFECT_API_URL: url}):
        return asyncio.run(go())


def _deployment(url: str):
    async def read(client):
        from prefect.exceptions import ObjectNotFound

        try:
            return await client.read_deployment_by_name(DEPLOYMENT)
        except ObjectNotFound:
            return None

    return _client_call(url, read)


def _scheduled_runs(url: str, deployment_id):
    async def read(client):
        from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                    FlowRunFilterState, FlowRunFilterStateType)
        from prefect.client.schemas.objects import StateType

        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.SCHEDULED]))))

    return _client_call(url, read)


def _run_deployment(url: str, parameters: dict | None = None):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url}):
        return run_deployment(DEPLOYMENT, parameters=parameters, timeout=600, poll_interval=2)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "logs" not in p.parts}


def test_the_server_schedules_the_deployment_by_its_cron(prefect_server, served):
    url, _, server_log = prefect_server
    base, proc, serve_log = served
    deployment = _wait(lambda: proc.poll() is not None or _deployment(url), 180, "the deployment to register")
    assert proc.poll() is None, serve_log.read_text()[-3000:]
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
    assert deployment.parameters["recipe"]["model"]["seed"] == 0 and deployment.parameters["base"] == str(base)
    # The server's scheduler (not the harness, not us) creates the upcoming runs: with
    # SQLAlchemy 2.1 it raises "Can't evaluate bulk DML statement" on every loop instead.
    upcoming = _wait(lambda: _scheduled_runs(url, deployment.id), 60, "scheduled runs")
    assert "bulk DML" not in server_log.read_text()
    times = sorted(r.expected_start_time for r in upcoming)
    assert all((t.hour, t.minute) == (3, 0) and t.tzinfo is not None for t in times)
    assert len({t.date() for t in times}) == len(times) >= 2  # one per day


def test_a_triggered_run_completes_and_a_failed_one_leaves_the_last_good_output(prefect_server, served):
    url, _, _ = prefect_server
    base, proc, serve_log = served
    _wait(lambda: _deployment(url), 180, "the deployment to register")
    run = _run_deployment(url)
    assert run.state.is_completed(), (run.state.message, serve_log.read_text()[-3000:])

    good = (base / "latest").resolve()
    assert good.parent == base / "runs" and (good / "build" / "manifest.json").exists()
    manifest = json.loads((good / "build" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rows"] == 8
    history = json.loads((base / "runs.json").read_text())
    assert [(h["run"], h["status"], h["rows"]) for h in history] == [(good.name, "completed", 8)]

    async def artifacts(client):
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["build-magpie-demo", "build-magpie-demo-counts"])))

    made = {a.key: a for a in _client_call(url, artifacts)}
    assert set(made) == {"build-magpie-demo", "build-magpie-demo-counts"}
    assert "| rows | `8` |" in made["build-magpie-demo"].data and str(good / "build" / "data") in made["build-magpie-demo"].data
    table = made["build-magpie-demo-counts"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert sum(r["rows"] for r in table) == 8 and len(table) == 2

    before = _tree_digest(good)
    params = _deployment(url).parameters
    broken = {**params["recipe"], "model": {**params["recipe"]["model"], "model": str(base / "no-such-model")}}
    failed = _run_deployment(url, {"recipe": broken})
    assert failed.state.is_failed()
    assert "no-such-model" in (failed.state.message or "")
    assert (base / "latest").resolve() == good and _tree_digest(good) == before
    history = json.loads((base / "runs.json").read_text())
    assert [h["status"] for h in history] == ["completed", "failed"]
    assert "no-such-model" in history[1]["error"] and history[1]["run"] != good.name


def test_bad_cron_and_timezone_are_one_line_exit_2(tmp_path):
    for args, field in ((["--cron", "every day at 3"], "--cron"), (["--cron", "0 3 * * *", "--timezone", "Mars/Base"],
                                                                   "--timezone")):
        r = subprocess.run([*ROOST, "serve", str(REPO / "recipes" / "magpie-demo.yaml"), *args, "--out",
                            str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and field in lines[0], r.stderr
