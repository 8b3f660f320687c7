"""Real processes in tests: every process a test starts carries a tag in its environment
(inherited by the supervisor, the command, vLLM's engine processes, a Prefect server, a
training command), so a test can see what is still alive and kill it all like a power cut."""
from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

TAG = "ROOST_TEST_TAG"


def tagged_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", TAG: uuid.uuid4().hex, **extra}


def roost(*args) -> list[str]:
    """The installed `roost` command (supervisor and all), as a user runs it."""
    return [str(Path(sys.executable).with_name("roost")), *map(str, args)]


def alive(env: dict[str, str]) -> list[str]:
    """'PID STATE CMDLINE' of every live or defunct process carrying env's tag (the whole
    command line: a cut one hides words that depend on where the checkout lives)."""
    needle = f"{TAG}={env[TAG]}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if needle not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found.append(f"{pid} {state} {cmd}")
    return found


def wait_gone(env: dict[str, str], timeout: float = 10.0) -> list[str]:
    """What is still alive after `timeout` seconds (an empty list once everything ended)."""
    deadline = time.monotonic() + timeout
    while (left := alive(env)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def power_cut(env: dict[str, str]) -> None:
    """SIGKILL every process carrying env's tag at once: nothing gets to clean up."""
    for line in alive(env):
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass
