"""Stopping well, with real processes: the installed `roost` command (supervisor, command,
vLLM engine processes, Prefect server) is started in a process group of its own and sent
what a terminal (Ctrl-C: SIGINT to the group) or a scheduler (SIGTERM) sends. Every process
a test starts carries a tag (tests/procs.py), so "nothing left running" is checked, not assumed.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from procs import alive, power_cut, roost, tagged_env, wait_gone
from typer.testing import CliRunner

from roost.cli import app

REPO = Path(__file__).resolve().parents[1]
SHARDS = 24
STOP_SECONDS = 20  # measured 1-3 s on an idle 2-core machine; CI machines are slower and busier
LINE = re.compile(r"stopped: (\d+) of (\d+) shards finished; run the same command to resume")


def _recipe(tmp_path: Path, model: Path) -> Path:
    data = {"name": "stop-test", "model": {"model": str(model), "max_model_len": 1024, "seed": 0},
            "output": {"num_rows": SHARDS * 8, "shard_size": 8},
            "synthesizer": {"kind": "magpie", "instruction": {"max_tokens": 32}, "response": {"max_tokens": 64}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, chatml_engine, tiny_chatml_path):
    """The rows of an uninterrupted build of the recipe (same seed), made in this process."""
    from roost.building.runner import build_here
    from roost.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("reference")
    recipe = _recipe(tmp, tiny_chatml_path)
    build_here(load_recipe(recipe), tmp / "out")
    return recipe, _rows(tmp / "out")


def _rows(out: Path) -> list[dict]:
    return [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _start(env: dict, *args) -> subprocess.Popen:
    return subprocess.Popen(roost(*args), env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended ({proc.returncode}) before {what}: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _shards(out: Path) -> int:
    return len(list((out / "data").glob("*.parquet")))


def _holder(out: Path) -> dict:
    try:
        return json.loads((out / ".roost.lock").read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _stop(proc: subprocess.Popen, signum: int) -> tuple[int, str, float]:
    """Send `signum` to the run's process group; its exit code, stderr and seconds to exit."""
    os.killpg(proc.pid, signum)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, time.monotonic() - t0


def _no_partial_files(out: Path) -> None:
    assert not [p for p in out.rglob("*.tmp") if p.is_file()], list(out.rglob("*.tmp"))
    for part in ("data", "rejects"):
        assert all(not p.name.startswith(".") for p in (out / part).iterdir())


def _flow_run_states(home: Path) -> list[str]:
    with sqlite3.connect(home / "prefect.db") as db:
        return [s for (s,) in db.execute("select state_type from flow_run")]


def _stopped_line(err: str) -> re.Match:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and (m := LINE.fullmatch(lines[-1].strip())), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return m


def test_ctrl_c_stops_a_build_a_second_run_is_refused_a_killed_runs_lock_is_taken_over(tmp_path, reference):
    recipe, rows = reference
    out = tmp_path / "out"
    env = tagged_env(PREFECT_HOME=str(tmp_path / "prefect-home"))
    run = _start(env, "build", recipe, "--out", out)
    holder = _wait(lambda: _holder(out), 120, "the run's lock", run)
    # refused while the first run starts its engine, so the build cannot end before its stop
    other = subprocess.run(roost("build", recipe, "--out", out), env=env, capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert f"in use by another roost run (process {holder['pid']}" in other.stderr
    assert holder["started"] in other.stderr

    _wait(lambda: _shards(out), 300, "the first shard", run)
    time.sleep(random.uniform(0, 1))  # a random moment of the build
    code, err, seconds = _stop(run, signal.SIGINT)
    assert code == 130, err[-3000:]
    finished = int(_stopped_line(err).group(1))
    assert finished == _shards(out) < SHARDS, "stopped too late to test resuming"
    assert seconds < STOP_SECONDS, seconds
    assert not wait_gone(env)
    _no_partial_files(out)
    assert json.loads((out / "manifest.json").read_text())["status"] == "stopped"
    assert "CANCELLED" in _flow_run_states(tmp_path / "prefect-home")

    # a run killed with no chance to clean up (kill -9 of everything, a power cut) leaves a stale lock
    dead = _start(env, "build", recipe, "--out", out)
    _wait(lambda: _holder(out).get("pid") not in (None, holder["pid"]), 120, "the resumed run's lock", dead)
    power_cut(env)
    dead.communicate()
    assert not wait_gone(env)

    resumed = subprocess.run(roost("build", recipe, "--out", out), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "taking over" in resumed.stderr and "is gone" in resumed.stderr
    assert _rows(out) == rows  # exactly the uninterrupted build's rows: none lost, none twice
    assert _holder(out) == {}  # a clean end leaves no lock to take over
    assert not wait_gone(env)


def test_sigterm_stops_a_build_and_a_second_ctrl_c_exits_at_once(tmp_path, reference):
    recipe, rows = reference
    out = tmp_path / "out"
    env = tagged_env(PREFECT_HOME=str(tmp_path / "prefect-home"))
    run = _start(env, "build", recipe, "--out", out)
    _wait(lambda: _shards(out), 300, "the first shard", run)
    time.sleep(random.uniform(0, 1))
    code, err, seconds = _stop(run, signal.SIGTERM)
    assert code == 143 and seconds < STOP_SECONDS, (code, seconds, err[-3000:])
    assert int(_stopped_line(err).group(1)) == _shards(out)
    assert not wait_gone(env)
    _no_partial_files(out)

    # Ctrl-C, then Ctrl-C again while it stops: out at once, and nothing left running
    again = _start(env, "build", recipe, "--out", out)
    _wait(lambda: _holder(out).get("pid"), 120, "the second run's lock", again)
    time.sleep(random.uniform(2, 6))  # somewhere in the engine's start or the first shards
    os.killpg(again.pid, signal.SIGINT)
    time.sleep(0.2)
    code, err, seconds = _stop(again, signal.SIGINT)
    assert code == 130 and seconds < 3, (code, seconds, err[-3000:])
    assert not wait_gone(env)

    resumed = subprocess.run(roost("build", recipe, "--out", out), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _rows(out) == rows
    _no_partial_files(out)


def test_a_lost_prefect_server_is_said_once_and_the_build_finishes_without_it(tmp_path, reference):
    recipe, rows = reference
    out = tmp_path / "out"
    env = tagged_env(PREFECT_HOME=str(tmp_path / "prefect-home"))
    run = _start(env, "build", recipe, "--out", out)
    _wait(lambda: _shards(out), 300, "the first shard", run)
    server = [line for line in alive(env) if "uvicorn" in line and "prefect.server" in line]
    assert len(server) == 1, alive(env)
    os.kill(int(server[0].split()[0]), signal.SIGKILL)
    t0 = time.monotonic()
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    assert err.count("the Prefect server stopped answering") == 1, err[-3000:]
    assert "Traceback" not in err and "Error logging to API" not in err and "Unable to connect" not in err, err[-3000:]
    assert time.monotonic() - t0 < 450  # each Prefect call a dead server gets: 2 retries (2 s, 4 s)
    assert _rows(out) == rows and json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert not wait_gone(env)


def test_ctrl_c_stops_a_curation_and_it_resumes_to_the_same_output(tmp_path):
    from test_stage_cache import _rows as curation_rows

    from roost.schemas import MESSAGES

    path = tmp_path / "in.parquet"
    table = pa.Table.from_pylist(curation_rows(4000), schema=pa.schema([pa.field("messages", MESSAGES),
                                                                         pa.field("source", pa.string())]))
    pq.write_table(table, path)
    recipe = tmp_path / "curate.yaml"
    recipe.write_text(json.dumps({"stages": [{"kind": "heuristics"}, {"kind": "exact_dedup"},
                                             {"kind": "semantic_dedup"}]}))
    env = tagged_env(PREFECT_HOME=str(tmp_path / "prefect-home"))
    # An uninterrupted run first: its stages' length sets when the stopped run is stopped (a
    # fixed wait let a fast machine finish the curation before its Ctrl-C arrived).
    fresh = tmp_path / "fresh"
    run = _start(env, "curate", path, "--out", fresh, "--recipe", recipe)
    _wait(lambda: (fresh / "manifest.json").exists(), 300, "the fresh curation's manifest", run)
    t0 = time.monotonic()
    _, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    stages_seconds = time.monotonic() - t0

    out = tmp_path / "out"
    run = _start(env, "curate", path, "--out", out, "--recipe", recipe)
    _wait(lambda: (out / "manifest.json").exists(), 300, "the curation's manifest", run)
    time.sleep(random.uniform(0.2, 0.7) * stages_seconds)  # a random moment of its stages
    code, err, seconds = _stop(run, signal.SIGINT)
    assert code == 130, (f"stages take {stages_seconds:.1f} s", code, err[-3000:])
    assert seconds < STOP_SECONDS, (code, seconds, err[-3000:])
    lines = [line for line in err.splitlines() if line.strip()]
    m = re.fullmatch(r"stopped: (\d) of 3 stages finished; run the same command to resume", lines[-1])
    assert m, err
    assert not wait_gone(env)
    assert not [p for p in out.rglob("*.tmp") if p.is_file()]
    status = json.loads((out / "manifest.json").read_text())["status"]
    assert status == "stopped" or (m.group(1) == "3" and status == "complete"), status  # (stopped as it ended)

    resumed = subprocess.run(roost("curate", path, "--out", out, "--recipe", recipe), env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for part in ("data", "rejects"):
        read = lambda o: [r for f in sorted((o / part).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]  # noqa: E731
        assert read(out) == read(fresh), part


def test_ctrl_c_during_an_iterate_loops_training_ends_the_training_command_too(tmp_path, tiny_chatml_path):
    recipe = _recipe(tmp_path, tiny_chatml_path)
    data = yaml.safe_load(recipe.read_text())
    data["output"] = {"num_rows": 4, "shard_size": 4}
    recipe.write_text(yaml.safe_dump(data))
    env = tagged_env(PREFECT_HOME=str(tmp_path / "prefect-home"))
    out = tmp_path / "loop"
    # a training command that would run for ten minutes, and starts a process of its own
    train = "sh -c 'sleep 600' & sleep 600; echo {data} {model} {output}"
    run = _start(env, "iterate", recipe, "--train", train, "--iterations", "2", "--out", out)
    _wait(lambda: (out / "iter-0" / "train.log").exists(), 300, "the training to start", run)
    _wait(lambda: sum("sleep 600" in line for line in alive(env)) >= 2, 30, "the training's processes")
    code, err, seconds = _stop(run, signal.SIGINT)
    assert code == 130 and seconds < STOP_SECONDS, (code, seconds, err[-3000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("stopped: in iteration 0 of 2 (0 finished), ") and "Traceback" not in err, err
    assert not wait_gone(env)  # the shell, its sleep and the sleep it started in the background
    assert json.loads((out / "iterations.json").read_text())["status"] == "stopped"


def test_sigterm_stops_an_eval_and_it_resumes(tmp_path, tiny_math_path):
    env = tagged_env(PREFECT_HOME=str(tmp_path / "prefect-home"))
    out = tmp_path / "eval"
    args = ("eval", "--model", tiny_math_path, "--problems", REPO / "data" / "arithmetic_problems.jsonl",
            "--rows", "0:240", "--samples", "2", "--set", "chunk_size=40", "--out", out)
    run = _start(env, *args)
    _wait(lambda: list((out / "outcomes").glob("part-*.parquet")), 300, "the first part", run)
    code, err, seconds = _stop(run, signal.SIGTERM)
    assert code == 143 and seconds < STOP_SECONDS, (code, seconds, err[-3000:])
    lines = [line for line in err.splitlines() if line.strip()]
    m = re.fullmatch(r"stopped: (\d) of 6 parts finished; run the same command to resume", lines[-1])
    assert m and int(m.group(1)) == len(list((out / "outcomes").glob("part-*.parquet"))), err
    assert not wait_gone(env)
    assert not [p for p in out.rglob("*.tmp") if p.is_file()]
    resumed = subprocess.run(roost(*args), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["metrics"]["problems"] == 240


def test_an_empty_input_is_one_line_and_exit_2(tmp_path):
    from roost.schemas import MESSAGES

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist([], schema=pa.schema([pa.field("messages", MESSAGES)])), empty)
    r = CliRunner().invoke(app, ["curate", str(empty), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "no rows, the input is empty" in r.output and len(r.output.strip().splitlines()) == 1, \
        r.output
