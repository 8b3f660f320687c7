"""What made an output's input: a curation of a roost output records the model and recipe that
generated it, so the curated output (and its dataset card) says where its rows came from, not
only how they were filtered.

`input_provenance(path)` reads the input's own manifest.json (a build, a curation, or one
iteration of a loop) when the input is a roost output: the input's folder, its `data/`, a
subset folder or a shard file in one. A curation of a curation carries its input's
`input_provenance` along, so the chain ends at the build that generated the rows.

`manifest_models(manifest)` lists every model a manifest records with its revision (policy,
reward model, judge, scorers, embedding model), each with a role named by where it sits.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_GLOB = "*?["


def find_output(spec: str | Path, *, bases: tuple[Path, ...] = ()) -> Path | None:
    """The roost output folder (with a manifest.json roost wrote) that `spec` names or lies in:
    the folder itself, a folder in it (data/, easy/ ...), or a file in one of those. `bases`:
    folders to try a relative `spec` against besides the working directory."""
    text = str(spec)
    if "://" in text:
        return None
    if any(c in text for c in _GLOB):  # a glob: its literal folder
        text = text[: min(text.index(c) for c in _GLOB if c in text)]
        text = text.rsplit("/", 1)[0] if "/" in text else "."
    given = Path(text)
    tries = [given] if given.is_absolute() else [given, *(b / given for b in bases)]
    for path in tries:
        if not path.exists():
            continue
        for folder in ([path, path.parent] if path.is_dir() else [path.parent, path.parent.parent]):
            if _manifest(folder) is not None:
                return folder
    return None


def input_provenance(spec: str | Path, *, bases: tuple[Path, ...] = ()) -> dict[str, Any] | None:
    """What made the roost output `spec` names (None if it is not one)."""
    root = find_output(spec, bases=bases)
    if root is None:
        return None
    m = _manifest(root)
    recipe = m.get("recipe") if isinstance(m.get("recipe"), dict) else {}
    curated = m.get("kind") == "curated"
    out: dict[str, Any] = {
        "kind": "curated" if curated else "build",
        "row_kind": m.get("row_kind") or m.get("schema") or m.get("kind"),
        "recipe": {"name": recipe.get("name"), "hash": m.get("recipe_hash")},
        "status": m.get("status"),
        "rows": m.get("rows"),
        "roost_version": m.get("roost_version"),
        "created_at": m.get("created_at"),
    }
    if curated:
        out["stages"] = [s.get("name") for s in m.get("stages") or [] if isinstance(s, dict)]
        if m.get("input_provenance"):
            out["input_provenance"] = m["input_provenance"]
    else:
        out.update({k: m.get(k) for k in ("synthesizer", "model", "revision", "seed", "iteration")})
        if isinstance(m.get("difficulty"), dict):  # the easy/hard cut the build drew (the report marks it)
            out["difficulty"] = {k: m["difficulty"].get(k) for k in ("threshold", "quantile", "rule")}
    out["models"] = manifest_models(m)
    return out


def with_input_provenance(manifest: dict[str, Any]) -> dict[str, Any]:
    """A curated manifest with its input's provenance added, when the input is a roost output
    (others, and manifests that already say, are returned as they are)."""
    if manifest.get("kind") != "curated" or "input_provenance" in manifest:
        return manifest
    source = manifest.get("input")
    path = source.get("path") if isinstance(source, dict) else None
    if not isinstance(path, str) or "://" in path:
        return manifest
    found = input_provenance(path)
    return {**manifest, "input_provenance": found} if found else manifest


def generator(provenance: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The build at the end of an input-provenance chain, and the curations on the way to it."""
    curations = []
    while isinstance(provenance, dict) and provenance.get("kind") == "curated":
        curations.append(provenance)
        provenance = provenance.get("input_provenance")
    return (provenance if isinstance(provenance, dict) else None), curations


# -- the models a manifest records -------------------------------------------------------------

_ROLE_NAMES = {"": "policy", "reward_model": "reward model", "preference": "preference model / judge",
               "embedding": "embedding model"}


def manifest_models(manifest: dict[str, Any], prefix: str = "") -> list[dict[str, str]]:
    """Every model the manifest records with its revision, one entry per place: {role, model,
    revision}. The recipe (what was asked), the engine blocks (the same model again) and the
    input's provenance (another output's models) are left out."""
    found: list[dict[str, str]] = []
    _walk(manifest, (), found, prefix)
    return found


def _walk(value: Any, path: tuple, found: list, prefix: str) -> None:
    if isinstance(value, dict):
        if path[:1] in (("recipe",), ("input_provenance",)) or (path and path[-1] == "engine"):
            return  # the recipe asks; the rest of the manifest records what was resolved
        model = value.get("model")
        if isinstance(model, str) and ("revision" in value or (path and path[-1] == "embedding")):
            found.append({"role": prefix + _role(path), "model": model, "revision": str(value.get("revision") or "-")})
        for k, v in value.items():
            _walk(v, path + (k,), found, prefix)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            label = v.get("name") if isinstance(v, dict) and isinstance(v.get("name"), str) else i
            _walk(v, path + (label,), found, prefix)


def _role(path: tuple) -> str:
    keys = [str(p) for p in path if p != "settings"]
    if keys[:1] == ["stages"] and len(keys) >= 3:
        return f"{keys[1]} stage: {' '.join(k.replace('_', ' ') for k in keys[2:])}"
    name = "/".join(keys)
    return _ROLE_NAMES.get(name, name.replace("_", " "))


def _manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and "roost_version" in m and "kind" in m else None
