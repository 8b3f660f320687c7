"""The `roost` command as two processes: this small supervisor, in the terminal's process
group, and the real command in a session of its own (with its engines, training commands
and any Prefect server it starts).

Why: a terminal's Ctrl-C goes to every process of its foreground group at once. Without this,
the vLLM engine processes and the Prefect server would die with the user's Ctrl-C while roost
still needs them to stop cleanly. Here only the supervisor gets it and passes one SIGINT to
the command, which stops as roost.runtime.stopping says. A second Ctrl-C (or SIGTERM) kills the whole
session at once. When the command ends, whatever it left running (an engine process, a
server) is killed and reaped: the supervisor is a child subreaper, so even processes that
were orphaned on the way come back to it. Exit code: the command's, or 128 + the signal the
supervisor got (130 for Ctrl-C, 143 for SIGTERM).

Stdlib only, so that starting it costs a few milliseconds.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_PDEATHSIG = 1
SUPERVISED = "ROOST_SUPERVISED"
GRACE_SECONDS = float(os.environ.get("ROOST_STOP_GRACE_SECONDS", "45"))  # after the first signal


def main() -> None:
    if os.environ.get(SUPERVISED) or os.name != "posix":
        from roost.cli import main as cli_main

        die_with_parent()
        cli_main()
        return
    sys.exit(supervise([sys.executable, "-m", "roost", *sys.argv[1:]]))


def supervise(command: list[str]) -> int:
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    child = subprocess.Popen(command, env={**os.environ, SUPERVISED: "1"}, start_new_session=True)
    received: list[int] = []
    first_at: list[float] = []

    def on_signal(signum, frame):
        received.append(signum)
        if len(received) == 1:
            first_at.append(time.monotonic())
            _signal(child.pid, signal.SIGINT)  # one stop request, whatever the signal: roost.runtime.stopping
        else:  # the second: no more waiting
            _kill_session(child.pid, signal.SIGKILL)
            _reap_all()
            os._exit(128 + received[0])

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    while (code := child.poll()) is None:
        if first_at and time.monotonic() > first_at[0] + GRACE_SECONDS:
            sys.stderr.write(f"stopped: the run did not end within {GRACE_SECONDS:.0f} s of the signal; killed\n")
            _kill_session(child.pid, signal.SIGKILL)
            code = child.wait()
            break
        time.sleep(0.05)
    _kill_leftovers(child.pid)
    if received and code != 0:  # (0: the signal came after the work was done, during its teardown)
        return 128 + received[0]
    return code if code >= 0 else 128 - code


def _kill_leftovers(sid: int) -> None:
    """SIGTERM, then SIGKILL, to what is left of the command's session and of our children."""
    if not _session_members(sid) and not _children():
        return
    _kill_session(sid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while (_session_members(sid) or _children()) and time.monotonic() < deadline:
        _reap_all()
        time.sleep(0.1)
    _kill_session(sid, signal.SIGKILL)
    _reap_all()


def _kill_session(sid: int, signum: int) -> None:
    for pid in {*_session_members(sid), *_children()}:
        _signal(pid, signum)


def _session_members(sid: int) -> list[int]:
    return [pid for pid, stat in _procs() if stat[3] == sid and stat[0] != "Z"]


def _children() -> list[int]:
    me = os.getpid()
    return [pid for pid, stat in _procs() if stat[1] == me and stat[0] != "Z"]


def _procs():
    """(pid, (state, ppid, pgrp, session)) of every process, from /proc."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            yield int(name), (fields[0], int(fields[1]), int(fields[2]), int(fields[3]))


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def die_with_parent() -> None:
    """The command, when supervised: if the supervisor is killed (kill -9), stop as on SIGTERM."""
    if os.environ.get(SUPERVISED):
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the supervisor died before the line above
            os.kill(os.getpid(), signal.SIGTERM)


def _prctl(option: int, value: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the session still shields the command
        pass


if __name__ == "__main__":
    main()
