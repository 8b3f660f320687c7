"""What a roost output holds, read for publishing: its configs (row sets in the Hub's layout),
its manifest(s) and recipe. Checked before anything is staged: a directory roost did not
write, or one whose run did not finish, is refused with one line.

Every output maps onto the Hub's layout the same way:

    build / curate OUT                    repo
    data/{split}-*.parquet             -> data/        config `default`
    easy/ hard/ sppo/ step_dpo/ prm/   -> same names    one config each
    rejects/{split}-*.parquet          -> rejects/     config `rejects`
    manifest.json                      -> manifest.json

An `roost iterate` OUT publishes every iteration: `iter-<t>/data/` (config `iter-<t>`),
its subsets and rejects (`iter-<t>-<name>`), its manifest (`iter-<t>/manifest.json`), and
`iterations.json`; `default` is the last iteration's data. Manifests are read as roost.dataset.portable
records them (an output written by an older roost may hold absolute paths; the staged copy does not). A config whose files hold no rows
(e.g. a build with no rejects) is left out: `datasets` cannot load an empty config.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from roost.dataset.portable import portable
from roost.errors import InputError


class NotARoostOutput(InputError):
    """The directory is not a finished output of roost build, curate or iterate."""


@dataclass
class Part:
    """One config: a folder of Parquet shards."""

    name: str  # config name
    dest: str  # folder in the repo
    files: list[Path]
    rows: int
    columns: list[str]
    kind: str  # data, subset or rejects


@dataclass
class Source:
    out: Path
    kind: str  # build, curated or iterate
    manifest: dict[str, Any]  # the (last) build's manifest
    recipe: dict[str, Any]  # what to publish as roost_recipe.yaml (the loop's recipe for iterate)
    split: str
    parts: list[Part]
    files: list[tuple[Path, str]] = field(default_factory=list)  # other files: (source, path in repo)
    iterations: list[dict[str, Any]] = field(default_factory=list)  # iterate: one manifest per iteration

    @property
    def default(self) -> Part:
        return self.parts[0]

    @property
    def row_kind(self) -> str:
        """sft or preference (of the main data)."""
        m = self.manifest
        return m.get("row_kind") or m.get("schema") or m.get("kind") or "sft"


_SKIP_DIRS = {"data", "rejects", "logs"}


def read_source(out: str | Path) -> Source:
    out = Path(out)
    if not out.is_dir():
        raise NotARoostOutput(f"{out}: no such directory")
    if (out / "iterations.json").is_file():
        return _read_loop(out)
    manifest = _manifest(out)
    split = manifest.get("split") or "train"
    parts = _build_parts(out, manifest, split)
    kind = "curated" if manifest.get("kind") == "curated" else "build"
    return Source(out, kind, manifest, manifest.get("recipe") or {}, split, parts,
                  files=[(out / "manifest.json", "manifest.json")])


def _manifest(root: Path) -> dict[str, Any]:
    path = root / "manifest.json"
    if not path.is_file():
        raise NotARoostOutput(f"{root}: no manifest.json (not an output of roost build, curate or iterate)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NotARoostOutput(f"{path}: unreadable ({e})") from None
    if not isinstance(manifest, dict) or "roost_version" not in manifest or "recipe" not in manifest:
        raise NotARoostOutput(f"{path}: not a roost manifest (no roost_version or recipe)")
    if manifest.get("status") != "complete":
        raise NotARoostOutput(f"{root}: its run is not complete (manifest status {manifest.get('status')!r}); "
                              "finish it (re-run resumes) before publishing")
    return portable(manifest, root)  # an output written before roost made its paths portable


def _build_parts(root: Path, manifest: dict, split: str, *, names: str = "", dirs: str = "") -> list[Part]:
    """The configs of one build or curate output; inside a loop, `names` and `dirs` prefix
    their config names (iter-<t>-) and repo folders (iter-<t>/)."""
    data = _shards(root / "data", split)
    listed = set(manifest.get("shards") or {})
    if listed and {f.name for f in data} != listed:
        raise NotARoostOutput(f"{root / 'data'}: holds {len(data)} shard file(s), the manifest lists {len(listed)}; "
                              "the output was changed after roost wrote it")
    main = _part(names.rstrip("-") or "default", f"{dirs}data", data, "data")
    if main.rows != manifest.get("rows", main.rows):
        raise NotARoostOutput(f"{root / 'data'}: holds {main.rows} rows, the manifest says {manifest.get('rows')}; "
                              "the output was changed after roost wrote it")
    if not main.rows:
        raise NotARoostOutput(f"{root / 'data'}: no rows to publish")
    parts = [main]
    declared = list(manifest.get("subsets") or {}) + list(((manifest.get("difficulty") or {}).get("subsets")) or {})
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and p.name not in _SKIP_DIRS and _shards(p, split))
    for name in dict.fromkeys([n for n in declared if n in found] + found):
        parts.append(_part(f"{names}{name}", f"{dirs}{name}", _shards(root / name, split), "subset"))
    rejects = _shards(root / "rejects", split)
    if rejects:
        parts.append(_part(f"{names}rejects", f"{dirs}rejects", rejects, "rejects"))
    return [p for p in parts if p.rows]


def _shards(folder: Path, split: str) -> list[Path]:
    return sorted(folder.glob(f"{split}-*.parquet")) if folder.is_dir() else []


def _part(name: str, dest: str, files: list[Path], kind: str) -> Part:
    rows = 0
    columns: list[str] = []
    for f in files:
        try:
            meta = pq.ParquetFile(f).metadata
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise NotARoostOutput(f"{f}: not a readable Parquet file ({str(e).splitlines()[0][:120]})") from None
        rows += meta.num_rows
        columns = columns or list(meta.schema.to_arrow_schema().names)
    return Part(name, dest, files, rows, columns, kind)


def _read_loop(out: Path) -> Source:
    try:
        loop = json.loads((out / "iterations.json").read_text())
    except (OSError, ValueError) as e:
        raise NotARoostOutput(f"{out / 'iterations.json'}: unreadable ({e})") from None
    if not isinstance(loop, dict) or not all(isinstance(s, dict) and "iteration" in s
                                             for s in loop.get("iterations") or []):
        raise NotARoostOutput(f"{out / 'iterations.json'}: not the manifest of a roost iterate loop")
    if loop.get("status") != "complete":
        raise NotARoostOutput(f"{out}: the iteration loop is not complete (status {loop.get('status')!r}); "
                              "finish it, or publish one iteration's build: OUT/iter-<t>/data")
    steps = loop.get("iterations") or []
    if not steps:
        raise NotARoostOutput(f"{out}: iterations.json lists no iterations")
    parts: list[Part] = []
    files = [(out / "iterations.json", "iterations.json")]
    manifests = []
    split = "train"
    for step in steps:
        t = step["iteration"]
        root = out / f"iter-{t}" / "data"
        manifest = _manifest(root)
        manifests.append(manifest)
        split = manifest.get("split") or "train"
        parts += _build_parts(root, manifest, split, names=f"iter-{t}-", dirs=f"iter-{t}/")
        files.append((root / "manifest.json", f"iter-{t}/manifest.json"))
    last = f"iter-{steps[-1]['iteration']}"
    main = next(p for p in parts if p.name == last)
    default = Part("default", main.dest, main.files, main.rows, main.columns, "data")
    return Source(out, "iterate", manifests[-1], portable(loop.get("recipe") or {}, out), split, [default, *parts], files,
                  iterations=manifests)

