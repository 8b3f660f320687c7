"""Paths as an output records them: never an absolute path of the machine that made it.

A manifest (and the dataset card made from it) names local things: the model directory, the
input, the output's own cache. Written as given they say `/home/alice/...` or `/tmp/...`: where
one machine kept them, not what they were. So every absolute local path a manifest records is
written, on the way to the file, as

1. relative to the working directory the run started in, when it is inside it
   (`.cache/models/tiny-chatml`, `out/demo/magpie`: what the recipe says from there, so the
   recorded recipe runs again from the same place);
2. else relative to the output's folder, when it is inside it or beside it (up to two levels
   up: `.cache`, `../prompts.parquet`, `../../iter-0/model`);
3. else its last component (`in.parquet`; with its parent's when it says little: `minilm/model`,
   `run-3/checkpoint-60`); a model directory's gets the digest of its files
   (`tiny-chatml@local-sha256:96f981124215ad6a`, the same digest as the model's `revision`), and
   a snapshot in the Hub's cache is its model id and commit (`Qwen/Qwen2.5-1.5B@<sha>`).

Only what is recorded changes: recipe fingerprints are computed from the live recipe (as given),
so an existing output still resumes. What identifies a model is its `revision` (a Hub commit,
or `local-sha256:` of a local directory's files), recorded beside it unchanged.

A string counts as a local path only when it is absolute and looks like one of this machine's:
under the working directory or the output, or with a first component that exists here (`/tmp`,
`/home`, `/work`) and at least two components, or existing. Text in other fields (prompts,
stop strings) is never rewritten, except the shell commands of `COMMAND_KEYS`, where each
absolute path inside the command is.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

NOTE = ("local paths are relative to the directory the run started in when inside it, else to this "
        "output's folder (up to ../..), else their last component (a model directory's with the digest of "
        "its files); a model's identity is its revision")

COMMAND_KEYS = frozenset({"command", "train"})  # shell commands: the paths inside them are rewritten
UP = 2  # how far above the output a relative path may reach (../..)

_HUB_CACHE = re.compile(r"/(?:models|datasets)--([^/]+)--([^/]+)/snapshots/([0-9a-f]{40})(/.*)?$")
_GENERIC = {"model", "models", "weights", "checkpoint", "final", "latest", "best", "data", "output", "snapshot", "hf"}
_IN_TEXT = re.compile(r"(?<![\w.~:/\\$-])/[^\s'\"`<>|;,(){}\[\]]+")


def is_local_path(value: Any, out: str | Path | None = None, cwd: str | Path | None = None) -> bool:
    """Whether `value` is an absolute path of this machine (see the module doc)."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return False
    if len(value) > 4096 or any(c in value for c in "\n\r\t\0") or value != value.strip():
        return False
    path = os.path.normpath(value)
    for base in _bases(out, cwd):
        if base != "/" and _within(path, base):
            return True
    parts = PurePosixPath(path).parts
    if len(parts) >= 3 and os.path.isdir(os.path.join("/", parts[1])):
        return True
    return len(parts) >= 2 and os.path.exists(path)


def portable_path(value: str, out: str | Path | None = None, cwd: str | Path | None = None) -> str:
    """One absolute local path as it is recorded (module doc); anything else as it is."""
    if not is_local_path(value, out, cwd):
        return value
    path = os.path.normpath(value)
    cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
    out = os.path.abspath(out) if out is not None else None
    for p, c, o in ((path, cwd, out), (os.path.realpath(path), os.path.realpath(cwd),
                                       os.path.realpath(out) if out else None)):
        if c != "/" and _within(p, c):
            return os.path.relpath(p, c)
        if o is None:
            continue
        base = o
        for _ in range(UP + 1):
            if base == "/" or not base:
                break
            if _within(p, base):
                return os.path.relpath(p, o)
            base = os.path.dirname(base)
    hub = _HUB_CACHE.search(path)
    if hub:  # a Hub cache snapshot: the model id and commit say exactly what it is
        return f"{hub.group(1)}/{hub.group(2)}@{hub.group(3)}" + (hub.group(4) or "")
    name = os.path.basename(path) or path
    if name in _GENERIC or name.isdigit() or name.startswith("checkpoint-"):  # model/, 1/, checkpoint-60/
        name = f"{os.path.basename(os.path.dirname(path))}/{name}"
    if os.path.isfile(os.path.join(path, "config.json")):  # a model directory: its files name it
        digest = _model_digest(path)
        if digest:
            return f"{name}@{digest}"
    return name


def portable_text(text: str, out: str | Path | None = None, cwd: str | Path | None = None) -> str:
    """`text` (a shell command, a sentence) with each absolute local path in it made portable."""
    if not isinstance(text, str) or "/" not in text:
        return text

    def one(match: re.Match) -> str:
        token = match.group(0)
        tail = ""
        while token and token[-1] in ".:!?":
            token, tail = token[:-1], token[-1] + tail
        return portable_path(token, out, cwd) + tail if is_local_path(token, out, cwd) else match.group(0)

    return _IN_TEXT.sub(one, text)


def portable(value: Any, out: str | Path | None = None, cwd: str | Path | None = None, *, key: str | None = None) -> Any:
    """A copy of a JSON-like value with every absolute local path made portable: strings that
    are a path as a whole, and the paths inside the commands of COMMAND_KEYS."""
    if isinstance(value, dict):
        return {k: portable(v, out, cwd, key=k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, out, cwd, key=key) for v in value]
    if isinstance(value, str):
        if key in COMMAND_KEYS:
            return portable_text(value, out, cwd)
        return portable_path(value, out, cwd)
    return value


def absolute_paths(value: Any, out: str | Path | None = None, cwd: str | Path | None = None) -> list[str]:
    """The absolute local paths a JSON-like value (or text) still holds: what `portable` removes."""
    found: list[str] = []
    if isinstance(value, dict):
        for v in value.values():
            found += absolute_paths(v, out, cwd)
    elif isinstance(value, (list, tuple)):
        for v in value:
            found += absolute_paths(v, out, cwd)
    elif isinstance(value, str):
        found += [m.group(0) for m in _IN_TEXT.finditer(value) if is_local_path(m.group(0).rstrip(".:!?"), out, cwd)]
    return found


def _bases(out, cwd) -> list[str]:
    bases = [os.path.abspath(cwd if cwd is not None else os.getcwd())]
    if out is not None:
        bases.append(os.path.abspath(out))
    return bases


def _within(path: str, base: str) -> bool:
    try:
        return os.path.commonpath([path, base]) == base
    except ValueError:
        return False


def _model_digest(path: str) -> str | None:
    try:
        from roost.engines.common import resolve_revision

        return resolve_revision(path, None)
    except Exception:  # an unreadable directory is still named, without a digest
        return None
