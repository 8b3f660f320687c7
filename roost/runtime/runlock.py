"""One run per output directory.

A run holds a POSIX record lock on `OUT/.roost.lock` for its whole life, and writes in it who
it is (process id, host, start time, command). The kernel drops the lock when the process
dies, however it dies (kill -9, power loss), so a lock file nobody holds is stale by
definition and the next run takes it over. A second run while the first is alive stops at
once, naming it. (Record locks, not flock: a process's record locks are not inherited by
the engine processes it forks, so a leftover child cannot keep a dead run's lock.)

Holding the lock also makes it safe to sweep the temp files a stopped run left (a shard
being written when the power went): no other roost process is writing here.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from roost.errors import UserError
from roost.runtime import stopping
from roost.runtime.stopping import Stopped

LOCK = ".roost.lock"
# Roost's temp files: hidden `.NAME.RANDOM.tmp` beside their target, or in a `.roost-tmp/` folder.
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{6,32}\.tmp$")


class OutputBusy(UserError):
    """Another live run holds this output."""


_held: dict[Path, int] = {}
STOPPING_WAIT_SECONDS = 60.0


@contextmanager
def hold(out: str | Path, say=None) -> Iterator[dict]:
    """Hold OUT for this run (re-entrant within a process); `say(line)` hears a stale takeover."""
    out = Path(out).resolve()
    if out in _held:
        yield {}
        return
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    if not _lock(fd, wait_if_stopping=STOPPING_WAIT_SECONDS, say=say):
        other = _read(fd)
        os.close(fd)
        raise OutputBusy(f"{out} is in use by another roost run (process {other.get('pid', '?')} on "
                         f"{other.get('host', '?')}, started {other.get('started', '?')}: "
                         f"{other.get('command', '?')}); wait for it, or stop it (Ctrl-C or kill "
                         f"{other.get('pid', 'PID')}) and run again") from None
    previous = _read(fd)
    if previous.get("pid") and say is not None:
        say(f"taking over {out}: the run that held it (process {previous['pid']}, started "
            f"{previous.get('started', '?')}) is gone; its finished work is kept")
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
          "command": " ".join(["roost", *sys.argv[1:]])[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    os.fsync(fd)
    _held[out] = fd
    try:
        sweep_temp_files(out)
        yield me
    except (Stopped, KeyboardInterrupt):
        if not stopping.installed():  # a notebook's Ctrl-C: the process goes on, so the lock goes now
            _release(out)
        raise  # the command's stop: held while it shuts down (roost.runtime.stopping); the process's end drops it
    except BaseException:
        _release(out)
        raise
    _release(out)


def _release(out: Path) -> None:
    fd = _held.pop(out)
    os.ftruncate(fd, 0)  # a clean end leaves nothing to take over
    os.close(fd)  # drops the lock


def _lock(fd: int, wait_if_stopping: float, say=None) -> bool:
    """Take the lock; if its holder is stopping (it said so), wait up to `wait_if_stopping` s."""
    deadline = None
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            other = _read(fd)
            if not other.get("stopping"):
                return False
            if deadline is None:
                deadline = time.monotonic() + wait_if_stopping
                if say is not None:
                    say(f"waiting for the run that is stopping here (process {other.get('pid', '?')}) to end")
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def mark_stopping() -> None:
    """Say in every lock this process holds that its run is stopping (a new run may wait)."""
    for fd in _held.values():
        me = _read(fd)
        if me:
            me["stopping"] = True
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}


def sweep_temp_files(out: Path) -> int:
    """Remove temp files a stopped or killed run left under OUT; returns how many."""
    removed = 0
    for path in out.rglob("*.tmp"):
        if path.is_file() and (_TEMP.match(path.name) or path.parent.name == ".roost-tmp"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
