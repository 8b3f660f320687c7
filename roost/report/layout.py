"""Where a roost output keeps its rows, rejects and manifest: one build or curate run
(`manifest.json`, `data/`, `rejects/`, subset folders), or an `roost iterate` loop
(`iterations.json` and one build per `iter-<t>/data`)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from roost.errors import InputError

ITERATIONS = "iterations.json"


@dataclass
class Build:
    """One build or curate output directory."""

    root: Path
    manifest: dict[str, Any]
    data: list[Path]
    rejects: list[Path]
    iteration: int | None = None  # t, for a build of an iterate loop

    @property
    def rows(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.data)

    def subsets(self) -> dict[str, int]:
        """Rows per subset folder the manifest names (easy/, hard/, sppo/, prm/, ...), from
        the Parquet footers."""
        names = dict(self.manifest.get("subsets") or {})
        names.update((self.manifest.get("difficulty") or {}).get("subsets") or {})
        return {name: sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((self.root / name).glob("*.parquet")))
                for name in names if (self.root / name).is_dir()}


@dataclass
class Output:
    """What `roost report` reads: the builds (one, or one per iteration) and the top manifest."""

    root: Path
    manifest: dict[str, Any]
    builds: list[Build] = field(default_factory=list)

    @property
    def is_loop(self) -> bool:
        return (self.root / ITERATIONS).is_file()

    @property
    def data(self) -> list[Path]:
        return [f for b in self.builds for f in b.data]

    @property
    def rejects(self) -> list[Path]:
        return [f for b in self.builds for f in b.rejects]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable ({e})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: not a roost manifest (expected a JSON object)")
    return value


def _build(root: Path, iteration: int | None = None) -> Build:
    return Build(root, _read_json(root / "manifest.json"), sorted((root / "data").glob("*.parquet")),
                 sorted((root / "rejects").glob("*.parquet")), iteration)


def open_output(out: Path) -> Output:
    """The output at `out`, or an InputError naming why it is not one roost can report on."""
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out}: no such directory")
    if (out / "manifest.json").is_file():
        result = Output(out, _read_json(out / "manifest.json"), [_build(out)])
    elif (out / ITERATIONS).is_file():
        manifest = _read_json(out / ITERATIONS)
        builds = []
        for step in manifest.get("iterations") or []:
            folder = out / f"iter-{step.get('iteration')}" / "data"
            if (folder / "manifest.json").is_file():
                builds.append(_build(folder, int(step["iteration"])))
        result = Output(out, manifest, builds)
    else:
        raise InputError(f"{out}: not a roost output (no manifest.json)")
    if not result.data or sum(b.rows for b in result.builds) == 0:
        raise InputError(f"{out}: the dataset is empty (0 rows in data/)")
    return result
