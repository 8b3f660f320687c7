"""Where scheduled runs write: every run gets a new dated directory, and only a finished run
moves the pointer to the last good one.

    BASE/runs/20261126T030000Z-1a2b3c4d/   one run: build/, curated/, logs/
    BASE/latest -> runs/20261126T030000Z-1a2b3c4d   the last run that finished
    BASE/runs.json                          every run: status, times, rows, error

A failed run keeps its directory (logs, finished shards) for a look and moves nothing, so
the last good output is never clobbered.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from roost.dataset.writer import atomic_write_bytes

HISTORY = "runs.json"
LATEST = "latest"


def run_dir(base: str | Path, when: datetime, run_id: str) -> Path:
    """A new directory for one run, named by its (scheduled) UTC time and run id."""
    stamp = when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(base) / "runs" / f"{stamp}-{run_id.replace('-', '')[:8]}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def record(base: str | Path, run: Path, status: str, **facts: Any) -> dict[str, Any]:
    """Add or update `run`'s entry in BASE/runs.json (written whole, then renamed into place)."""
    history = read_history(base)
    entry = next((e for e in history if e["run"] == run.name), None)
    if entry is None:
        entry = {"run": run.name, "path": str(run), "started_at": _now()}
        history.append(entry)
    entry.update(status=status, updated_at=_now(), **facts)
    atomic_write_bytes(Path(base) / HISTORY, (json.dumps(history, indent=2, default=str) + "\n").encode())
    return entry


def read_history(base: str | Path) -> list[dict[str, Any]]:
    path = Path(base) / HISTORY
    return json.loads(path.read_text()) if path.exists() else []


def mark_latest(base: str | Path, run: Path) -> Path:
    """Point BASE/latest at `run` in one rename (readers see the old or the new run, never none)."""
    link = Path(base) / LATEST
    tmp = link.with_name(f".{LATEST}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run.relative_to(base))
    os.replace(tmp, link)
    return link


def latest(base: str | Path) -> Path | None:
    link = Path(base) / LATEST
    return link.resolve() if link.is_symlink() else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
