"""Run a build's shards on a Ray cluster (`roost build ... --ray auto|HOST:PORT`, or a recipe's
`executor: {kind: ray, ...}` block). Ray is optional: `pip install 'roost[ray]'`.

Each Ray worker is an actor that holds one engine: it builds the synthesizer and loads the
model once (`warm`), then runs shard after shard (`run`), each exactly as a local build runs
it (`roost.building.runner.Build.run_shard`: the shard's own derived seed, its own files written atomically).
The driver (this process) hands the next pending shard index to whichever worker is free,
waiting on the outstanding calls with `ray.wait`, and finishes the manifest itself.

A worker that dies (killed, out of memory, its node gone) loses only the shard it held: that
index goes back to the queue, another worker (or a replacement started in its place) redoes
it from scratch, with the same seed and so the same rows. A shard file appears only by an
atomic rename, so a dead worker leaves no partial file and never overwrites a finished shard
(a shard already on disk is skipped). A shard that loses its worker `max_attempts` times
stops the build; what finished is kept and a re-run resumes.

Resources: on GPUs, a worker takes `gpus_per_worker` GPUs (default: the model's
tensor_parallel_size); a tensor-parallel engine (tp > 1) gets a STRICT_PACK placement group
of one CPU bundle for the actor plus tp one-GPU bundles on one node, which vLLM's Ray
executor (`distributed_executor_backend: ray`, set for it) uses for its ranks (as distilabel
does). On CPUs, `cpus_per_worker` CPUs each. Untested on GPUs: no GPU where this was written.

The output directory must be one every node sees (a shared filesystem): workers write the
shards, the driver reads them. Ray's own logs stay in its session directory (nothing is sent
to the driver's terminal unless --verbose); each worker's library logs go to
`OUT/logs/ray-<host>-<pid>.log`.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from roost.errors import ConfigError, UserError
from roost.runtime.stopping import Stopped

CONNECT_TIMEOUT = 5.0  # seconds for a cluster address to answer
_FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HUB_DISABLE_PROGRESS_BARS",
                  "TRANSFORMERS_VERBOSITY", "TOKENIZERS_PARALLELISM", "VLLM_CPU_KVCACHE_SPACE",
                  "VLLM_CPU_OMP_THREADS_BIND", "PREFECT_SERVER_ANALYTICS_ENABLED", "ROOST_RAY_HOLD_SHARD")
log = logging.getLogger("roost.ray")


class ClusterError(UserError):
    """The Ray cluster cannot be reached, cannot fit a worker, or keeps losing workers."""


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("Ray is not installed: pip install 'roost[ray]' (the same Ray version as the "
                          "cluster's)") from None
    return ray


# -- connecting ------------------------------------------------------------------------------


def resolve_address(address: str | None) -> str:
    """"auto" (RAY_ADDRESS, else the cluster `ray start` made on this machine), HOST:PORT or
    ray://HOST:PORT, checked to answer within a few seconds; else one-line ClusterError."""
    address = (address or "auto").strip()
    if address == "auto":
        _ray()
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die

            address = canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError:
            raise ClusterError("Ray cluster 'auto': none runs on this machine (start one with `ray start --head`, "
                               "or give its HOST:PORT)") from None
        except ImportError:  # another Ray's internals: let ray.init find it
            return "auto"
    host, port = _host_port(address)
    probe(host, port, address)
    return address


def _host_port(address: str) -> tuple[str, int]:
    bare = address.removeprefix("ray://")
    host, sep, port = bare.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"Ray cluster {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    return host, int(port)


def probe(host: str, port: int, address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Something answers at host:port, and speaks gRPC (Ray's GCS and client server do): an
    address that does not answer would otherwise keep `ray.init` retrying for minutes."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = "no answer" if isinstance(e, (socket.timeout, TimeoutError)) else (e.strerror or str(e)).lower()
        raise ClusterError(f"Ray cluster at {address}: nothing answers there ({reason} within {timeout:g} s); "
                           f"start one with `ray start --head --port {port}` or check the address") from None
    try:
        import grpc
    except ImportError:  # no way to tell a Ray port from another; ray.init will say
        return
    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ClusterError(f"Ray cluster at {address}: something answers there, but not Ray (give the head's "
                           "GCS port, 6379 unless `ray start --port` chose another; 8265 is the dashboard)") from None
    finally:
        channel.close()


def connect(address: str | None, *, quiet: bool = True):
    """Join the cluster once per process (later calls reuse the connection). Returns `ray`."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    resolved = resolve_address(address)
    try:
        ray.init(address=resolved, namespace="roost", log_to_driver=not quiet, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(f"Ray cluster at {address or 'auto'}: {first}") from None
    _quiet_ray_logger(quiet)
    return ray


def _quiet_ray_logger(quiet: bool) -> None:
    from roost.runtime import logs

    if quiet and logs._handler is not None:  # Ray's own console handler -> roost.log
        ray_logger = logging.getLogger("ray")
        for h in [h for h in ray_logger.handlers if type(h) is logging.StreamHandler]:
            ray_logger.removeHandler(h)
        logs._attach(ray_logger, logs._handler)


# -- planning the workers --------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    cpus: float  # per worker (the actor itself)
    gpus: float  # per worker (in the placement group's bundles when `placement`)
    placement: bool  # tensor-parallel on GPUs: STRICT_PACK [{"CPU": cpus}] + [{"GPU": 1}] * gpus

    def describe(self) -> str:
        each = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return f"{self.count} worker(s) of {each}" + (" (placement group, STRICT_PACK)" if self.placement else "")

    def bundles(self) -> list[dict[str, float]]:
        return [{"CPU": self.cpus}] + [{"GPU": 1.0}] * int(self.gpus)


def plan_workers(executor, model, pending: int, nodes: list[dict[str, float]]) -> WorkerPlan:
    """How many workers, of what size, for `pending` shards on alive nodes' resources."""
    tp = int(getattr(model, "tensor_parallel_size", 1) or 1)
    has_gpus = any(n.get("GPU", 0) > 0 for n in nodes)
    served = getattr(model, "server", None) is not None  # the model runs elsewhere: no GPU here
    if executor.gpus_per_worker is not None:
        gpus = float(executor.gpus_per_worker)
    else:
        gpus = float(tp) if has_gpus and not served else 0.0
    placement = gpus > 0 and tp > 1 and not served
    if placement and gpus != tp:
        raise ConfigError(f"field 'executor.gpus_per_worker': a tensor-parallel engine takes one GPU per rank: "
                          f"{tp} (model.tensor_parallel_size), not {gpus:g}")
    cpus = float(executor.cpus_per_worker)

    def fits(node: dict[str, float]) -> int:
        n = math.floor(node.get("CPU", 0) / cpus + 1e-9)
        if gpus:
            n = min(n, math.floor(node.get("GPU", 0) / gpus + 1e-9))
        return n

    capacity = sum(fits(n) for n in nodes)
    if capacity == 0:
        total = {k: sum(n.get(k, 0) for n in nodes) for k in ("CPU", "GPU")}
        need = f"{cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus else "")
        raise ClusterError(f"Ray cluster: no node has room for one worker ({need} on one node; the cluster has "
                           f"{len(nodes)} node(s), {total['CPU']:g} CPU, {total['GPU']:g} GPU in all)")
    count = executor.workers or capacity
    return WorkerPlan(count=max(1, min(count, pending)), cpus=cpus, gpus=gpus, placement=placement)


def for_workers(recipe, plan: WorkerPlan):
    """The recipe as workers run it. A tensor-parallel engine in a placement group: vLLM's Ray
    executor, which puts the ranks in the group's GPU bundles (vLLM would otherwise pick its
    multiprocessing executor and look for tp GPUs in the actor, which holds none). A
    throughput setting: the fingerprint is the same."""
    if not plan.placement:
        return recipe
    throughput = {"distributed_executor_backend": "ray", **recipe.model.throughput}
    return recipe.model_copy(update={"model": recipe.model.model_copy(update={"throughput": throughput})})


# -- the worker ------------------------------------------------------------------------------


class ShardWorker:
    """A Ray actor (made remote by `run_on_ray`): one engine, many shards."""

    def __init__(self, recipe_json: str, out: str, env: dict[str, str], cwd: str, quiet: bool):
        os.environ.update(env)
        if os.path.isdir(cwd):  # the driver's relative paths (models, inputs) mean the same here
            os.chdir(cwd)
        from roost.recipe import Recipe
        from roost.runtime import logs

        self.recipe = Recipe.model_validate_json(recipe_json)
        self.out = out
        self.build = None  # this worker's Build of the driver's (checked) build: made once, in warm()
        self.log = None
        if quiet and os.path.isdir(out):
            self.log = logs.setup(out, name=f"ray-{socket.gethostname()}-{os.getpid()}")

    def where(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "host": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(), "log": str(self.log) if self.log else None}

    def warm(self, probe_file: str) -> dict[str, Any]:
        """Make this worker's Build and load the model (once); say whether `out` is the driver's."""
        started = time.perf_counter()
        from roost.building.runner import Build
        from roost.engines import get_engine

        self.build = self.build or Build(self.recipe, self.out)
        if getattr(self.recipe.model, "server", None) is None:
            get_engine(self.recipe.model)
        return {**self.where(), "sees_out": os.path.exists(probe_file),
                "seconds": round(time.perf_counter() - started, 1)}

    def run(self, index: int) -> dict[str, Any]:
        from roost.building.runner import Build

        self.build = self.build or Build(self.recipe, self.out)
        started = time.perf_counter()
        # A test seam: seconds a worker holds its shard before working on it, so that a test can
        # kill a worker that holds one (tests/test_ray.py). Unset in real use.
        time.sleep(float(os.environ.get("ROOST_RAY_HOLD_SHARD") or 0))
        stats = self.build.run_shard(index)
        return {"index": index, "stats": stats.__dict__, "seconds": round(time.perf_counter() - started, 1)}

    def close(self) -> None:
        from roost.engines import release_all

        release_all()


# -- the driver ------------------------------------------------------------------------------


def _say(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, markup=False, highlight=False, soft_wrap=True)
    log.info(message)


@dataclass
class _Worker:
    number: int
    handle: Any
    group: Any = None  # its placement group
    ready: bool = False
    info: dict | None = None

    def name(self) -> str:
        where = f" on {self.info['host']} pid {self.info['pid']}" if self.info else ""
        return f"worker {self.number}{where}"


def run_on_ray(build, pending: list[int], say: Callable[[str], None] = _say) -> dict[str, Any]:
    """Build the `pending` shard indices of `build` (a roost.building.runner.Build, opened and
    started by the driver) on the cluster its recipe's executor names; each worker makes a Build
    of its own. Returns a summary (workers, retried shards, seconds)."""
    from roost.runtime import logs

    recipe, out, num_shards, writer = build.recipe, build.out, build.num_shards, build.writer
    executor = recipe.executor
    quiet = logs._log_path is not None
    ray = connect(executor.address, quiet=quiet)
    started = time.perf_counter()
    out = str(Path(out).resolve())
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    plan = plan_workers(executor, recipe.model, len(pending), nodes)
    total = {k: sum(n.get(k, 0) for n in nodes) for k in ("CPU", "GPU")}
    say(f"ray: {len(nodes)} node(s), {total['CPU']:g} CPU, {total['GPU']:g} GPU; {plan.describe()}, "
        f"one engine each, for {len(pending)} shard(s)")

    probe_file = Path(out) / f".roost-ray-probe-{uuid.uuid4().hex}"
    probe_file.touch()
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    remote_cls = ray.remote(ShardWorker)
    recipe_json = for_workers(recipe, plan).model_dump_json()
    queue = deque(pending)
    attempts: dict[int, int] = {}
    retried: list[int] = []
    workers: dict[int, _Worker] = {}
    calls: dict[Any, tuple[int, int | None]] = {}  # ref -> (worker number, shard index or None for warm)
    made = 0
    lost = 0
    finished = 0

    def start_worker() -> None:
        nonlocal made
        made += 1
        options: dict[str, Any] = {"num_cpus": plan.cpus, "max_restarts": 0, "max_task_retries": 0}
        group = None
        if plan.placement:
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            group = placement_group(plan.bundles(), strategy="STRICT_PACK")
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)
        elif plan.gpus:
            options["num_gpus"] = plan.gpus
        handle = remote_cls.options(**options).remote(recipe_json, out, env, os.getcwd(), quiet)
        workers[made] = _Worker(made, handle, group)
        calls[handle.warm.remote(str(probe_file))] = (made, None)

    def drop(worker: _Worker) -> None:
        workers.pop(worker.number, None)
        try:
            ray.kill(worker.handle, no_restart=True)
        except Exception:  # already gone
            pass
        if worker.group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(worker.group)

    def hand_out(worker: _Worker) -> None:
        if queue:
            index = queue.popleft()
            calls[worker.handle.run.remote(index)] = (worker.number, index)

    def hand_out_to_idle() -> None:  # a shard came back to the queue: a ready worker may be waiting
        busy = {number for number, _ in calls.values()}
        for worker in list(workers.values()):
            if worker.ready and worker.number not in busy:
                hand_out(worker)

    try:
        for _ in range(plan.count):
            start_worker()
        last_progress = time.monotonic()
        while queue or any(index is not None for _, index in calls.values()):
            if not calls:  # every worker is gone and none is starting
                raise ClusterError("ray: no worker left to run the remaining shard(s); finished shards are kept, "
                                   "re-run to resume")
            ready, _ = ray.wait(list(calls), num_returns=1, timeout=60)
            if not ready:
                if not any(w.ready for w in workers.values()) and time.monotonic() - last_progress > 600:
                    say(f"ray: no worker ready after {time.perf_counter() - started:.0f} s ({plan.describe()}): still "
                        "loading the model, or waiting for room on the cluster (`ray status` tells)")
                    last_progress = time.monotonic()
                continue
            ref = ready[0]
            number, index = calls.pop(ref)
            worker = workers.get(number)
            try:
                result = ray.get(ref)
            except Exception as e:
                death = _death(ray, e)  # raises unless the worker itself was lost
                lost += 1
                what = "while loading the model" if index is None else f"holding shard {index + 1}/{num_shards}"
                name = worker.name() if worker else "a worker"
                if worker is not None:
                    drop(worker)
                if index is not None:
                    attempts[index] = attempts.get(index, 0) + 1
                    if attempts[index] >= executor.max_attempts:
                        raise ClusterError(f"ray: shard {index + 1}/{num_shards} lost its worker {attempts[index]} "
                                           f"times ({death}); finished shards are kept, re-run to resume") from None
                    queue.appendleft(index)
                    retried.append(index)
                    say(f"ray: {name} died {what} ({death}); shard {index + 1}/{num_shards} goes back to the queue")
                else:
                    say(f"ray: {name} died {what} ({death})")
                if lost > executor.max_attempts * plan.count + len(pending):
                    raise ClusterError(f"ray: {lost} workers died (last: {death}); finished shards are kept, re-run "
                                       "to resume") from None
                if queue and len(workers) < plan.count:
                    start_worker()  # in its place, when the cluster has room
                hand_out_to_idle()
                continue
            if worker is None:
                continue
            last_progress = time.monotonic()
            if index is None:
                worker.ready, worker.info = True, result
                if not result["sees_out"]:
                    raise ClusterError(f"ray: {worker.name()} does not see {out} as this machine does: --out must "
                                       "be a directory every Ray node shares (NFS or the like)")
                say(f"ray: {worker.name()} ready ({result['seconds']:g} s to load the model)")
            else:
                if not writer.is_done(index):
                    raise ClusterError(f"ray: {worker.name()} wrote shard {index + 1}/{num_shards}, but it is not "
                                       f"in {out} here: --out must be a directory every Ray node shares")
                finished += 1
                stats = result["stats"]
                say(f"ray: shard {index + 1}/{num_shards} done by {worker.name()}: {stats['rows']} rows, "
                    f"{stats['rejects']} rejects, {result['seconds']:g} s [{finished}/{len(pending)}]")
            hand_out(worker)
    except (Stopped, KeyboardInterrupt):  # stopped: the shards in progress are abandoned, no waiting
        for w in list(workers.values()):
            drop(w)
        raise
    finally:
        probe_file.unlink(missing_ok=True)
        _close(ray, list(workers.values()), drop)
    seconds = round(time.perf_counter() - started, 1)
    summary = {"kind": "ray", "address": executor.address or "auto", "workers": plan.count,
               "workers_started": made, "workers_lost": lost, "retried_shards": retried, "seconds": seconds}
    say(f"ray: {finished} shard(s) in {seconds:g} s on {plan.count} worker(s)"
        + (f"; {len(retried)} retried after a worker died" if retried else ""))
    return summary


def _death(ray, error: Exception) -> str:
    """What killed a worker, in a few words; raises `error` (or its cause) when it is not a
    lost worker but an error of the work itself, or a worker that can never start."""
    exc = ray.exceptions
    if isinstance(error, exc.RayTaskError):  # the shard's own code raised: as a local build would
        cause = getattr(error, "cause", None)
        if isinstance(cause, UserError):
            raise cause from None
        raise error
    if isinstance(error, (exc.ActorUnschedulableError, exc.RuntimeEnvSetupError)):
        raise ClusterError(f"ray: a worker cannot start: {_last_line(error)}") from None
    if isinstance(error, exc.RayActorError) and error.actor_init_failed:
        raise ClusterError(f"ray: a worker failed to start: {_last_line(error)}") from None
    if isinstance(error, exc.RayError):
        return type(error).__name__
    raise error


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _close(ray, workers: list[_Worker], drop) -> None:
    """Let each ready worker release its engine (vLLM's own processes end cleanly), then end it."""
    closing = [w.handle.close.remote() for w in workers if w.ready]
    if closing:
        try:
            ray.wait(closing, num_returns=len(closing), timeout=30)
        except Exception:  # a dying worker: killed below anyway
            pass
    for w in workers:
        drop(w)
