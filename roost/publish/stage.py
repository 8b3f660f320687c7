"""Stage the folder that is uploaded: one function, used by `--dry-run DIR` and by the upload.

The Parquet shards and manifests are hard links to OUT's files (copies across file systems; a
manifest that still holds an absolute path is a copy with it made portable, roost.dataset.portable);
nothing in OUT is written. The card, the recipe as YAML and the report's figures are new files.
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from roost.errors import ConfigError
from roost.publish.source import Source

RECIPE_FILE = "roost_recipe.yaml"
FIGURES = "figures"


@dataclass
class Staged:
    root: Path
    files: list[str]  # paths in the repo, sorted
    bytes: int
    linked: int  # files hard-linked to OUT's (the rest of the shards were copied)


def stage(source: Source, dest: str | Path, *, repo_id: str, license: str | None = None) -> Staged:
    """Write the repo's folder at `dest` (replacing an earlier staging of roost's there)."""
    dest = Path(dest)
    _check_dest(source.out, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}"
    tmp.mkdir(mode=0o777)  # the umask's mode, as any new folder (tempfile.mkdtemp's would be 0700)
    try:
        linked = _write(source, tmp, repo_id=repo_id, license=license)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    return Staged(dest, files, sum((dest / f).stat().st_size for f in files), linked)


def _check_dest(out: Path, dest: Path) -> None:
    out_r, dest_r = out.resolve(), dest.resolve()
    if dest_r == out_r or out_r in dest_r.parents or dest_r in out_r.parents:
        raise ConfigError(f"--dry-run {dest}: must be outside {out} (and not contain it): publish never writes in OUT")
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not _is_staging(dest))):
        raise ConfigError(f"--dry-run {dest}: exists and is not an earlier `roost publish --dry-run` folder; "
                          "choose a new or empty directory")


def _is_staging(folder: Path) -> bool:
    """An earlier staging of roost's: a card tagged roost beside manifest.json or iterations.json."""
    readme = folder / "README.md"
    if not readme.is_file() or not ((folder / "manifest.json").is_file() or (folder / "iterations.json").is_file()):
        return False
    try:
        from huggingface_hub import DatasetCard

        return "roost" in (DatasetCard.load(readme).data.tags or [])
    except Exception:  # an unparsable README is not ours
        return False


def _write(source: Source, root: Path, *, repo_id: str, license: str | None) -> int:
    from roost.publish.card import render
    from roost.report import card_markdown, figures, summarize

    linked = 0
    done: set[str] = set()
    for part in source.parts:
        if part.dest in done:  # an iterate loop's `default` is its last round's data
            continue
        done.add(part.dest)
        for f in part.files:
            linked += _link(f, root / part.dest / f.name)
    for src, path in source.files:
        linked += _stage_json(src, root / path) if src.suffix == ".json" else _link(src, root / path)
    (root / RECIPE_FILE).write_text(yaml.safe_dump(source.recipe, sort_keys=False, allow_unicode=True))

    summary = summarize(source.out.resolve())  # the same card from any working directory
    paths = {}
    for name, png in sorted(figures(summary).items()):
        path = f"{FIGURES}/{name if name.endswith('.png') else name + '.png'}"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(png)
        paths[name] = path
    report = card_markdown(summary, paths)
    render(source, repo_id, license=license, report_markdown=report).save(root / "README.md")
    return linked


def _stage_json(src: Path, dst: Path) -> int:
    """A manifest (or iterations.json) as roost.dataset.portable records it: hard-linked when it already
    is (1), else a copy with its absolute paths made portable (0): an output written by an
    older roost, or the training commands and model paths of an iterate loop."""
    import json

    from roost.dataset.portable import portable

    try:
        data = json.loads(src.read_text())
    except (OSError, ValueError):
        return _link(src, dst)
    clean = portable(data, src.parent)
    if clean == data:
        return _link(src, dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(clean, indent=2, ensure_ascii=False, default=str) + "\n")
    return 0


def _link(src: Path, dst: Path) -> int:
    """Hard link (1), or copy when the file systems differ (0)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return 1
    except OSError:
        shutil.copyfile(src, dst)
        return 0
