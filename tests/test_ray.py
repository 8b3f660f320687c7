"""`roost build --ray`: shards on a real Ray cluster (two nodes started here on this machine, one
CPU each), one engine per Ray worker; a worker killed while it holds a shard; bad addresses.

The cluster's processes are this module's own: each `ray start` runs in a new session, which
its daemons (GCS, raylets, Ray workers, the vLLM processes those start) stay in; at the end every
process of those sessions is killed by pid (never `ray stop`: it ends every Ray on the machine).
"""
from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.recipe import load_recipe

RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _session_pids(sids: list[int]) -> dict[int, str]:
    """pid -> command line (a Ray worker's is its title, e.g. ray::ShardWorker.run) of every live
    process in these sessions."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            sid = int(stat.rsplit(")", 1)[1].split()[3])
            if sid in sids:
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a worker node, one CPU each, on this machine; yields the head's address."""
    temp = tempfile.mkdtemp(prefix="rr", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, client, dashboard, *agents = _free_ports(11)
    common = ["--num-cpus", "1", "--object-store-memory", str(100 << 20), "--disable-usage-stats"]

    def node_ports(i: int) -> list[str]:  # two nodes on one machine: no fixed default port twice
        listen, grpc, runtime_env, metrics = agents[4 * i:4 * i + 4]
        return ["--dashboard-agent-listen-port", str(listen), "--dashboard-agent-grpc-port", str(grpc),
                "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics)]

    head = [RAY, "start", "--head", "--port", str(gcs), "--include-dashboard=false", "--temp-dir", temp,
            "--ray-client-server-port", str(client), "--dashboard-port", str(dashboard), *node_ports(0), *common]
    worker = [RAY, "start", "--address", f"127.0.0.1:{gcs}", *node_ports(1), *common]
    sids = []
    try:
        for cmd in (head, worker):
            with open(Path(temp) / "start.log", "a") as log:
                proc = subprocess.Popen(cmd, env=env, cwd=temp, start_new_session=True, stdout=log,
                                        stderr=subprocess.STDOUT)
                sids.append(proc.pid)
                assert proc.wait(timeout=180) == 0, (Path(temp) / "start.log").read_text()[-3000:]
        yield {"address": f"127.0.0.1:{gcs}", "sids": sids}
    finally:
        for pid in _session_pids(sids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["rm", "-rf", temp], check=False)


def _recipe(tmp_path: Path, model_path: Path) -> Path:
    data = {
        "name": "test-ray",
        # the conftest engine's identity: the local reference run reuses that engine
        "model": {"model": str(model_path), "max_model_len": 1024, "seed": 0},
        "output": {"num_rows": 16, "shard_size": 4},
        "synthesizer": {"kind": "magpie", "max_rounds": 6, "instruction": {"temperature": 1.0, "max_tokens": 64},
                        "response": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 96}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _rows(out: Path, part: str = "data") -> list[dict]:
    rows = [r for f in sorted((out / part).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: (r.get("id") or "", json.dumps(r, sort_keys=True, default=str)))


@pytest.fixture(scope="module")
def local_build(tmp_path_factory, tiny_chatml_path, chatml_engine):
    """The same recipe built here, without Ray: what every Ray build must equal."""
    from roost.flows.build import build_flow

    tmp = tmp_path_factory.mktemp("local")
    out = tmp / "out"
    build_flow(load_recipe(_recipe(tmp, tiny_chatml_path)), str(out))
    return out


def _build_on_ray(recipe: Path, out: Path, address: str, hold: float | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "roost.cli", "build", str(recipe), "--out", str(out), "--ray", address,
           "--ray-workers", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if hold:
        env["ROOST_RAY_HOLD_SHARD"] = str(hold)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _check_output_equals_local(out: Path, local: Path) -> None:
    assert len(list((out / "data").glob("*.parquet"))) == 4
    assert all(not p.name.startswith(".") for p in (out / "data").iterdir())  # no partial file where readers look
    rows, expected = _rows(out), _rows(local)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(expected) > 0  # no row twice, none lost
    assert rows == expected  # every column: the rows carry no timing
    assert _rows(out, "rejects") == _rows(local, "rejects")
    manifest = json.loads((out / "manifest.json").read_text())
    local_manifest = json.loads((local / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rows"] == len(rows)
    assert manifest["recipe_hash"] == local_manifest["recipe_hash"]  # where shards ran is not in the fingerprint


@pytest.mark.engine
def test_ray_build_equals_the_local_build(tmp_path, ray_cluster, tiny_chatml_path, local_build):
    recipe = _recipe(tmp_path, tiny_chatml_path)
    out = tmp_path / "out"
    proc = _build_on_ray(recipe, out, ray_cluster["address"])
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    _check_output_equals_local(out, local_build)
    # the terminal: progress and summary; Ray's and the libraries' logs went to files
    terminal = stdout + stderr
    assert "ray: 2 node(s), 2 CPU, 0 GPU; 2 worker(s) of 1 CPU" in stderr
    assert stderr.count("ray: shard ") == 4 and "[4/4]" in stderr and "died" not in stderr
    assert " INFO " not in terminal and "vllm" not in terminal.lower()
    assert "status: complete  rows: 16" in stdout and f"ray: 2 worker(s) at {ray_cluster['address']}" in stdout
    worker_logs = list((out / "logs").glob("ray-*.log"))
    assert worker_logs and any("vllm" in p.read_text() for p in worker_logs)
    # resuming into a finished output: nothing to hand out, nothing rewritten
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    again = _build_on_ray(recipe, out, ray_cluster["address"])
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr[-3000:]
    assert "skipped 4 finished shard(s)" in stdout and "ray: shard" not in stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == mtimes


@pytest.mark.engine
def test_a_worker_killed_holding_a_shard_loses_nothing_and_doubles_nothing(tmp_path, ray_cluster, tiny_chatml_path,
                                                                          local_build):
    recipe = _recipe(tmp_path, tiny_chatml_path)
    out = tmp_path / "out"
    # each worker holds each shard 4 s before working on it: time to find it and kill it
    proc = _build_on_ray(recipe, out, ray_cluster["address"], hold=4)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    victim, finished_before = None, {}
    deadline = time.time() + 900
    while victim is None and time.time() < deadline and proc.poll() is None:
        holding = [pid for pid, cmd in _session_pids(ray_cluster["sids"]).items()
                   if cmd.startswith("ray::ShardWorker.run")]
        if holding:
            victim = holding[0]
            finished_before = {p.name: p.stat().st_mtime_ns for p in (out / "data").glob("*.parquet")}
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.2)
    assert victim is not None, "no worker was ever seen holding a shard"
    stdout = proc.stdout.read()
    proc.wait(timeout=900)
    reader.join(timeout=10)
    stderr = "".join(err_lines)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"pid {victim} died holding shard" in stderr and "goes back to the queue" in stderr
    assert "after a worker died" in stdout
    # the retried shard overwrote nothing finished, and came out as the first attempt would have
    assert {n: (out / "data" / n).stat().st_mtime_ns for n in finished_before} == finished_before
    _check_output_equals_local(out, local_build)
    assert not glob.glob(str(out / ".roost-tmp" / "*"))  # the dead worker left no temp file behind either


@pytest.mark.parametrize("answers", ["nothing", "not ray"])
def test_a_ray_address_that_does_not_answer_is_one_line_exit_2(tmp_path, tiny_chatml_path, monkeypatch, answers):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = _recipe(tmp_path, tiny_chatml_path)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    if answers == "nothing":
        server.close()
    else:
        server.listen()  # accepts the connection, never speaks gRPC (as a web server would not)
    try:
        started = time.time()
        result = CliRunner().invoke(app, ["build", str(recipe), "--out", str(tmp_path / "o"),
                                          "--ray", f"127.0.0.1:{port}"])
        took = time.time() - started
    finally:
        server.close()
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], result.output
    assert ("nothing answers" if answers == "nothing" else "not Ray") in lines[0]
    assert took < 30
    assert not (tmp_path / "o" / "data").exists()


def test_worker_plan_fits_the_cluster():
    from roost.building.on_ray import plan_workers
    from roost.engines import EngineConfig
    from roost.errors import UserError
    from roost.recipe import ExecutorConfig

    ray_ex = ExecutorConfig(kind="ray")
    cpu_nodes = [{"CPU": 8.0}, {"CPU": 4.0}]
    plan = plan_workers(ray_ex, EngineConfig(model="m"), 100, cpu_nodes)
    assert (plan.count, plan.cpus, plan.gpus, plan.placement) == (12, 1.0, 0.0, False)
    assert plan_workers(ray_ex, EngineConfig(model="m"), 3, cpu_nodes).count == 3  # no more workers than shards
    # GPUs: one per worker by default; tensor parallel: tp GPUs on one node, in a placement group
    gpu_nodes = [{"CPU": 32.0, "GPU": 8.0}, {"CPU": 32.0, "GPU": 4.0}, {"CPU": 16.0}]
    plan = plan_workers(ray_ex, EngineConfig(model="m"), 100, gpu_nodes)
    assert (plan.count, plan.gpus, plan.placement) == (12, 1.0, False)
    plan = plan_workers(ray_ex, EngineConfig(model="m", tensor_parallel_size=4), 100, gpu_nodes)
    assert (plan.count, plan.gpus, plan.placement) == (3, 4.0, True)
    assert plan.bundles() == [{"CPU": 1.0}] + [{"GPU": 1.0}] * 4
    from roost.building.on_ray import for_workers
    from roost.recipe import Recipe

    recipe = Recipe.model_validate({"name": "r", "model": {"model": "m", "tensor_parallel_size": 4},
                                    "synthesizer": {"kind": "magpie"}, "output": {"num_rows": 8}})
    tp = for_workers(recipe, plan)  # vLLM's Ray executor, in the group's GPU bundles
    assert tp.model.throughput["distributed_executor_backend"] == "ray" and tp.fingerprint() == recipe.fingerprint()
    assert plan_workers(ExecutorConfig(kind="ray", workers=2), EngineConfig(model="m"), 100, gpu_nodes).count == 2
    with pytest.raises(UserError, match="no node has room"):
        plan_workers(ray_ex, EngineConfig(model="m", tensor_parallel_size=16), 100, gpu_nodes)
    with pytest.raises(UserError, match="one GPU per rank"):
        plan_workers(ExecutorConfig(kind="ray", gpus_per_worker=1), EngineConfig(model="m", tensor_parallel_size=2),
                     10, gpu_nodes)


def test_where_shards_run_is_not_part_of_the_fingerprint(tmp_path, tiny_chatml_path):
    recipe = _recipe(tmp_path, tiny_chatml_path)
    local = load_recipe(recipe)
    on_ray = load_recipe(recipe, {"executor.kind": "ray", "executor.address": "10.0.0.1:6379", "executor.workers": 8,
                                  "executor.gpus_per_worker": 1})
    assert on_ray.executor.kind == "ray" and on_ray.fingerprint() == local.fingerprint()
    result = CliRunner().invoke(app, ["build", str(recipe), "--out", str(tmp_path / "o"), "--ray-workers", "2"])
    assert result.exit_code == 2 and "--ray-workers: only with --ray" in result.output
