"""Config building blocks shared by recipes, synthesizers and stages (plain data only).

`canonical(config)` is the form every fingerprint hashes: only what changes the data.
Fields at their default are left out, so a new version that adds an option at its default
does not change the fingerprint of an existing recipe (its outputs still resume). Fields
marked `throughput()` (batch sizes, memory) never count.
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from roost.engines.base import Sampling


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def throughput(default: Any, **kwargs) -> Any:
    """A field that changes speed or memory, never the data: kept out of fingerprints."""
    return Field(default, json_schema_extra={"throughput": True}, **kwargs)


class SamplingConfig(Strict):
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    max_tokens: int = Field(512, ge=1, le=131072)

    def to_engine(self, *, n: int = 1, stop=(), stop_token_ids=()) -> Sampling:
        """The engine's `Sampling` for these settings (the one place the fields are copied)."""
        return Sampling(n=n, stop=tuple(stop), stop_token_ids=tuple(stop_token_ids), **self.model_dump())


def canonical(value: Any) -> Any:
    """JSON-able form of a config with defaults and throughput fields left out (see module doc)."""
    if isinstance(value, BaseModel):
        out = {}
        for name, info in type(value).model_fields.items():
            if (info.json_schema_extra or {}).get("throughput"):
                continue
            v = getattr(value, name)
            if not info.is_required() and name != "kind":
                default = info.get_default(call_default_factory=True)
                if _plain(default) == _plain(v):
                    continue
            out[name] = canonical(v)
        return out
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    return _plain(value)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def fingerprint(config: BaseModel, *, ignore: tuple[str, ...] = ("name",), contents: dict[str, str] | None = None) -> str:
    """sha256 of the canonical form; a recipe's `name` is a label, not a setting. `contents`:
    digests of files the recipe names whose bytes change the data (benchmark sets, templates),
    so editing such a file in place is a new recipe, not a finished one."""
    data = {k: v for k, v in canonical(config).items() if k not in ignore}
    if contents:
        data["_contents"] = contents
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str | None:
    """sha256 of a file, or of every file under a directory or glob (names and bytes); None
    when nothing is there (the stage that reads it says so)."""
    import glob

    p = Path(path)
    found = [p] if p.is_file() else (p.rglob("*") if p.is_dir() else map(Path, glob.glob(str(path))))
    files = sorted(f for f in found if f.is_file())
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.name}\0{_sha256(str(f.resolve()), stat.st_size, stat.st_mtime_ns)}\0".encode())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file misses the cache
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DatasetInput(Strict):
    """A dataset read as input: a roost output, Parquet, JSON Lines, JSON array or CSV file (or a
    directory or glob of them), or `hf://<id>` on the Hub (`?name=<config>&revision=<ref>` or
    the `config` / `revision` fields). Its shape (roost.dataset.rows) is detected from its columns;
    `format` and `columns` (part -> column name) say it outright."""

    path: str | None = None
    split: str = "train"
    config: str | None = None  # hf:// only: the dataset's config (gsm8k: "main")
    revision: str | None = None  # hf:// only: a branch, tag or commit (resolved to a commit once)
    format: Literal["auto", "messages", "sharegpt", "alpaca", "pair", "prompt", "preference"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict)  # e.g. {prompt: question, response: answer}
    max_bad_share: float = Field(0.5, ge=0, le=1)  # more rows than this that cannot be read: stop

    def shape(self, schema):
        """The input's roost.dataset.rows.Shape: what its rows are and the columns they are read from."""
        from roost.dataset.rows import detect
        from roost.errors import InputError

        try:
            return detect(schema, self.format, self.columns)
        except InputError as e:  # the one line names the file
            if str(e).startswith(str(self.path)):
                raise
            raise type(e)(f"{self.path}: {e}") from None

    def open(self):
        """The input as a roost.dataset.sources.Source."""
        from roost.dataset.sources import open_source

        return open_source(self.path, split=self.split, config=self.config, revision=self.revision)
