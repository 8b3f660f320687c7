"""Stopping well: Ctrl-C and SIGTERM end a run in seconds, keep every finished unit of work,
leave no partial file and no process behind, and say how far it got.

The first SIGINT or SIGTERM raises `Stopped` in the main thread wherever it is (inside vLLM's
generate, a Prefect task, a training command's wait): the shard in progress is abandoned (its
temp file is removed on the way out, roost.dataset.writer), so only finished shards stay. `run_cli`
catches it at the top of the `roost` command, marks the Prefect flow run cancelled, shuts the
engines down, prints one line ("stopped: 3 of 6 shards finished; run the same command to
resume") and exits 128 + the signal (130 for SIGINT, 143 for SIGTERM). A second signal during
that shutdown exits at once. A watchdog bounds the shutdown, so a library that hangs on its
way out cannot hold the terminal.

The `roost` command runs this in a child process of its own session (roost.runtime.supervisor): the
terminal's Ctrl-C reaches only the supervisor, which passes it on, so the engine processes
and the Prefect server roost started are not killed before roost has finished stopping.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable
from uuid import UUID

SHUTDOWN_SECONDS = float(os.environ.get("ROOST_SHUTDOWN_SECONDS", "20"))  # then the watchdog exits anyway


class Stopped(BaseException):
    """The run was asked to stop (a BaseException, like KeyboardInterrupt: `except Exception`
    in a library does not swallow it)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: int | None = None
_progress: dict[str, Any] = {}
_flow_runs: list[UUID] = []
_manifests: list[Path] = []  # marked "stopped" on a stop, if they still say "running"


def install() -> None:
    """SIGINT and SIGTERM raise `Stopped` (the first) or exit at once (the second)."""
    global _installed
    _installed = True
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_signal)


@contextmanager
def deferred():
    """A signal that comes inside this block takes effect when it ends: for the few
    milliseconds of writing a file and renaming it into place, so a stop never lands between
    the two and leaves a temp file behind."""
    global _defer_depth
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
    if _defer_depth == 0 and _pending is not None and _received is None:
        _on_signal(_pending, None)


_defer_depth = 0
_pending: int | None = None


def installed() -> bool:
    """Whether this process is a `roost` command that handles its own stop (run_cli)."""
    return _installed


_installed = False
_ended: int | None = None  # the command's exit code, once it has ended


def _on_signal(signum: int, frame) -> None:
    global _received, _pending
    if _defer_depth and _received is None and threading.current_thread() is threading.main_thread():
        _pending = signum  # raised when the write in progress is done (deferred)
        return
    if _received is not None:  # a second signal while stopping: no more waiting
        os._exit(128 + _received)
    if _ended is not None:  # the work is done and said; only teardown was left: end with its code
        os._exit(_ended)
    _received = signum
    _debug("signal")
    raise Stopped(signum)


def track(unit: str, done: Callable[[], int], total: int, *, manifest: str | Path | None = None) -> None:
    """What a stop now would keep: `done()` of `total` `unit` finished, counted when the stop
    comes (from the files, so a shard that landed a moment before counts). `manifest`: the
    run's manifest.json, marked "stopped" on a stop."""
    _progress.update(unit=unit, done=done, total=total)
    if manifest is not None and Path(manifest) not in _manifests:
        _manifests.append(Path(manifest))


def within(where: str) -> None:
    """The larger step the tracked work is part of, e.g. "iteration 1 of 3" (a loop's)."""
    global _where
    _where = where


_where = ""


def note_flow_run() -> None:
    """Called at the start of each flow: the run to mark cancelled if this process is stopped."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow_run is not None:
        _flow_runs.append(ctx.flow_run.id)


def say_on_stop(line: str) -> None:
    """The line a stop prints, for work that is not counted in units (e.g. serving a schedule)."""
    _progress.clear()
    _progress["line"] = line


def message() -> str:
    if "line" in _progress:
        return _progress["line"]
    if not _progress:
        return "stopped before any work was finished; run the same command to start again"
    p = _progress
    try:
        done = p["done"]()
    except Exception:  # noqa: BLE001  counting must not hide the stop
        done = "?"
    where = f"in {_where}, " if _where else ""
    return f"stopped: {where}{done} of {p['total']} {p['unit']} finished; run the same command to resume"


def run_cli(main: Callable[[], Any]) -> None:
    """Run the `roost` command `main` with the stop handling above; exits the process."""
    install()
    try:
        main()
    except SystemExit as e:  # the command ended (typer exits with its code): what is left is teardown
        global _ended
        _ended = e.code if isinstance(e.code, int) else 1
        _release_engines()  # now, and quickly: at exit vLLM waits 5 s before killing its engine process
        raise
    except (Stopped, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        code = 128 + signum
        _watchdog(code)
        shut_down()
        from rich.console import Console

        Console(stderr=True).print(f"[bold yellow]{message()}[/]", highlight=False, soft_wrap=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # Everything that matters is done; the interpreter's own teardown (library destructors,
        # atexit drains of Prefect's API workers) can take seconds and keeps nothing.
        os._exit(code)


def shut_down() -> None:
    """After a stop: the flow runs marked cancelled, the engines closed (their processes end)."""
    _debug("caught")
    from roost.runtime import runlock

    runlock.mark_stopping()
    _cancel_flow_runs()
    _debug("cancelled flow runs")
    _mark_manifests()
    _release_engines()
    _debug("engines released")
    _stop_prefect_server()
    _debug("prefect server stopped")


def _release_engines() -> None:
    if "roost.engines" in sys.modules:
        try:
            sys.modules["roost.engines.base"].SHUTDOWN_GRACE = 1.0
            sys.modules["roost.engines"].release_all()
        except Exception:  # noqa: BLE001  an engine half started when the signal came: the supervisor reaps it
            pass


def _stop_prefect_server() -> None:
    """The temporary Prefect server this process started (none when PREFECT_API_URL is set)."""
    server = sys.modules.get("prefect.server.api.server")
    if server is None:
        return
    for instance in list(server.SubprocessASGIServer._instances.values()):
        try:
            instance.stop()
        except Exception:  # noqa: BLE001
            pass


def _debug(what: str) -> None:
    if os.environ.get("ROOST_DEBUG_STOP"):
        import time
        sys.stderr.write(f"[{time.time():.2f} {what}]\n")


def _mark_manifests() -> None:
    from roost.dataset.writer import atomic_write_bytes

    for path in _manifests:
        try:
            manifest = json.loads(path.read_text())
            if manifest.get("status") == "running":
                manifest["status"] = "stopped"
                atomic_write_bytes(path, (json.dumps(manifest, indent=2, default=str) + "\n").encode())
        except (OSError, ValueError):
            pass


def _cancel_flow_runs() -> None:
    if not _flow_runs:
        return
    try:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            for run_id in _flow_runs:
                client.set_flow_run_state(run_id, Cancelled(message=message()), force=True)
    except Exception:  # noqa: BLE001  the server is gone: nothing to mark
        pass


def _watchdog(code: int) -> None:
    def expire() -> None:
        sys.stderr.write(f"stopped: shutdown took over {SHUTDOWN_SECONDS:.0f} s, exiting now\n")
        sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(SHUTDOWN_SECONDS, expire)
    timer.daemon = True
    timer.start()
