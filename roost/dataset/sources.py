"""Where inputs are read from, in bounded batches: roost outputs, Parquet, JSON Lines, JSON
arrays and CSV files (one, a directory or a glob of them), and Hub datasets.

A `Source` can be iterated several times (curation makes three passes) and slices cheaply
(a build reads one shard's rows). Parquet is read file by file, batch by batch, never whole;
JSON and CSV files are read whole into Arrow. A Hub dataset is resolved to one commit, then
downloaded once into the Hugging Face cache and loaded as memory-mapped Arrow by `datasets`:
every shard slices the same table instead of streaming the set again from its first row.

`Source.identity()` is what the input *is*: a content digest of the local files, or the Hub
dataset's commit. Fingerprints include it, so an edited file or a moved branch is a new build.
"""
from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from roost.errors import InputError

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
TABLE_SUFFIXES = JSON_SUFFIXES + (".csv", ".tsv")
SUFFIXES = (".parquet",) + TABLE_SUFFIXES


class SourceError(InputError):
    """The input cannot be opened (missing or unreadable file, mixed columns, unknown dataset)."""


@dataclass
class Source:
    description: dict[str, Any]
    schema: pa.Schema
    _files: list[str] = field(default_factory=list)  # Parquet files, read batch by batch
    _table: pa.Table | None = None  # JSON/CSV files or a Hub dataset, in Arrow

    def batches(self, batch_size: int = 8192) -> Iterator[list[dict]]:
        if self._table is not None:
            yield from self.rows(0, self._table.num_rows, batch_size)
            return
        # File by file, batch by batch: a dataset scanner reads ahead many batches, which
        # grows memory with the input, and so does pre_buffer (it keeps what it read: measured
        # +270 MB per 400k rows); this holds one buffered read and one batch at a time.
        for path in self._files:
            with pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20) as f:
                for batch in f.iter_batches(batch_size=batch_size, use_threads=False):
                    if batch.num_rows:
                        yield batch.to_pylist()

    def local_files(self) -> list[str] | None:
        """The files the rows are read from, in reading order (None for a Hub dataset): what
        the resume cache fingerprints (roost.curation.cache)."""
        if "dataset" in self.description:
            return None
        return list(self._files) or list(self.description.get("read", []))

    def identity(self) -> dict[str, Any]:
        """What the input is, for fingerprints and the manifest: a sha256 over the local files'
        bytes in reading order (with their count and size), or the Hub dataset's id, config,
        split and commit. Files are hashed once per size and modification time."""
        if "dataset" in self.description:
            return {k: self.description[k] for k in ("dataset", "config", "split", "revision")}
        import hashlib
        import os

        from roost.config import _sha256

        digest, size, files = hashlib.sha256(), 0, self.local_files() or []
        for path in files:
            stat = os.stat(path)
            digest.update(f"{_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)}\n".encode())
            size += stat.st_size
        return {"sha256": digest.hexdigest()[:16], "files": len(files), "bytes": size}

    def count(self) -> int:
        if self._table is not None:
            return self._table.num_rows
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self._files)

    def rows(self, start: int, stop: int, batch_size: int = 8192) -> Iterator[list[dict]]:
        """Rows [start, stop) in input order, in batches: one shard's slice of the input."""
        if self._table is not None:
            for batch in self._table.slice(start, max(0, stop - start)).to_batches(max_chunksize=batch_size):
                if batch.num_rows:
                    yield batch.to_pylist()
            return
        offset = 0
        for path in self._files:
            n = pq.ParquetFile(path).metadata.num_rows
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            offset += n
            if lo >= hi:
                continue
            table = pq.read_table(path).slice(lo, hi - lo)
            for batch in table.to_batches(max_chunksize=batch_size):
                if batch.num_rows:
                    yield batch.to_pylist()
            if offset >= stop:
                return


def open_source(spec: str, *, split: str = "train", config: str | None = None,
                revision: str | None = None) -> Source:
    """A directory roost wrote (its data/), a file, directory or glob of Parquet / JSON Lines /
    JSON array / CSV files, or `hf://<id>[?name=<config>&revision=<ref>]` for a Hub dataset."""
    if spec.startswith("hf://"):
        return _open_hub(spec, split, config, revision)
    files = _local_files(spec, split)
    kinds = {_file_kind(f) for f in files}
    if kinds == {"parquet"}:
        return _not_empty(Source({"kind": "parquet", "path": spec, "files": len(files)},
                                 _one_schema(spec, {f: pq.read_schema(f) for f in files}), files))
    if "parquet" in kinds:
        raise SourceError(f"{spec}: mixes Parquet with {', '.join(sorted(kinds - {'parquet'}))} files; "
                          "point at one kind")
    tables = {f: _read_table(f) for f in files}
    schema = _one_schema(spec, {f: t.schema for f, t in tables.items()})
    table = pa.concat_tables([t.cast(schema) if t.schema != schema else t for t in tables.values()])
    kind = kinds.pop() if len(kinds) == 1 else "json"
    return _not_empty(Source({"kind": kind, "path": spec, "files": len(files), "read": list(tables)},
                             schema, _table=table))


def _local_files(spec: str, split: str) -> list[str]:
    path = Path(spec)
    if path.is_dir():
        files = sorted(glob.glob(str(path / "data" / f"{split}-*.parquet"))) or sorted(
            f for f in glob.glob(str(path / "**" / "*"), recursive=True) if f.endswith(SUFFIXES))
        files = [f for f in files if "/rejects/" not in f and "/.roost-tmp/" not in f and "/.cache/" not in f]
        if not files:
            raise SourceError(f"{spec}: no Parquet, JSON Lines, JSON or CSV files found")
        return files
    if any(ch in spec for ch in "*?["):
        files = sorted(f for f in glob.glob(spec, recursive=True) if Path(f).is_file())
        if not files:
            raise SourceError(f"{spec}: no files match")
        return files
    if not path.exists():
        raise SourceError(f"{spec}: no such file or directory (use hf://<id> for a Hub dataset)")
    return [spec]


def _file_kind(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in JSON_SUFFIXES:
        return "json"
    with open(path, "rb") as fh:  # no telling suffix: Parquet files start with their magic bytes
        if fh.read(4) == b"PAR1":
            return "parquet"
    raise SourceError(f"{path}: not a file roost reads (Parquet, .jsonl, .json, .csv, .tsv)")


def _read_table(path: str) -> pa.Table:
    try:
        if _file_kind(path) == "csv":
            return _read_csv(path)
        return _read_json(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        if isinstance(e, SourceError):
            raise
        raise SourceError(f"{path}: not valid {_format_name(path)} ({_why(e)})") from None


def _format_name(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return {".jsonl": "JSON Lines", ".ndjson": "JSON Lines", ".json": "JSON", ".csv": "CSV", ".tsv": "TSV"}.get(
        suffix, _file_kind(path).upper())


def _read_csv(path: str) -> pa.Table:
    """Every cell a string (a prompt of digits stays text, ids keep their zeros); quoted
    newlines stay in their cell; a broken quote or a row of the wrong width names its line."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter="\t" if path.lower().endswith(".tsv") else ",", strict=True)
        try:
            header = next(reader, None)
            if not header:
                raise SourceError(f"{path}: no header row (the first line names the columns)")
            rows = []
            for row in reader:
                if len(row) != len(header):
                    raise SourceError(f"{path}: line {reader.line_num}: {len(row)} fields, the header has {len(header)}")
                rows.append(row)
        except csv.Error as e:
            raise SourceError(f"{path}: cannot read it as CSV (line {reader.line_num}: {e})") from None
    columns = list(zip(*rows)) if rows else [()] * len(header)
    return pa.table({name: pa.array(col, pa.string()) for name, col in zip(header, columns)})


def _read_json(path: str) -> pa.Table:
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):  # a JSON array of rows (Alpaca's and ShareGPT's own releases)
        with open(path, encoding="utf-8-sig") as fh:
            rows = json.load(fh)
        if not all(isinstance(r, dict) for r in rows):
            raise SourceError(f"{path}: a JSON array, but not of objects (one row per object)")
        return pa.Table.from_pylist(rows)
    import pyarrow.json as pajson

    return pajson.read_json(path)


def _one_schema(spec: str, schemas: dict[str, pa.Schema]) -> pa.Schema:
    """The files' common schema; files whose columns differ are refused, naming two of them."""
    (first, schema), *rest = schemas.items()
    schema = schema.remove_metadata()
    for name, other in rest:
        if set(other.names) != set(schema.names):
            raise SourceError(f"{spec}: files with different columns: {Path(first).name} ({', '.join(schema.names)}) "
                              f"and {Path(name).name} ({', '.join(other.names)}); point at one kind of file")
        try:
            schema = pa.unify_schemas([schema, other.remove_metadata()], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SourceError(f"{spec}: {Path(first).name} and {Path(name).name} hold different types "
                              f"({str(e).splitlines()[0]})") from None
    return schema


def _not_empty(source: Source) -> Source:
    """An input with no rows is refused like a missing one: a run over it could only make nothing."""
    if source.count() == 0:
        files = source.description.get("files")
        raise SourceError(f"{source.description['path']}: no rows, the input is empty"
                          + (f" ({files} file(s) read)" if files else ""))
    return source


# -- the Hub ---------------------------------------------------------------------------------

def hub_spec(spec: str, config: str | None = None, revision: str | None = None) -> tuple[str, str | None, str | None]:
    """(dataset id, config, revision) of `hf://id?name=<config>&revision=<ref>` (the query's
    values, else the fields')."""
    url = urlsplit(spec)
    dataset_id = (url.netloc + url.path).strip("/")
    query = dict(parse_qsl(url.query))
    unknown = sorted(set(query) - {"name", "config", "revision"})
    if unknown or not dataset_id:
        raise SourceError(f"{spec}: write hf://<owner>/<name>?name=<config>&revision=<branch, tag or commit>"
                          + (f" (unknown {', '.join(unknown)})" if unknown else ""))
    return dataset_id, query.get("name", query.get("config", config)), query.get("revision", revision)


def resolve_revision(dataset_id: str, revision: str | None) -> tuple[str, list[str] | None]:
    """(the commit a branch, tag or commit of a Hub dataset names, the repository's files
    there); offline, a full commit id stands for itself (files unknown: None)."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:  # the commit the cache last saw the ref at
        if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
            return revision, None
        ref = Path(constants.HF_HUB_CACHE) / f"datasets--{dataset_id.replace('/', '--')}" / "refs" / (revision or "main")
        if ref.is_file():
            return ref.read_text().strip(), None
        raise SourceError(f"hf://{dataset_id}: cannot open revision {revision or 'main'!r} offline (HF_HUB_OFFLINE "
                          "is set and the cache holds no copy of it)")
    try:
        info = HfApi().dataset_info(dataset_id, revision=revision)
    except Exception as e:  # no such dataset or revision, no network: say which
        raise SourceError(f"hf://{dataset_id}: cannot resolve revision {revision or 'main'!r} ({_why(e)})") from None
    return info.sha, [s.rfilename for s in info.siblings or []]


def _open_hub(spec: str, split: str, config: str | None, revision: str | None) -> Source:
    dataset_id, config, revision = hub_spec(spec, config, revision)
    commit, files = resolve_revision(dataset_id, revision)
    table = _hub_table(dataset_id, config, split, commit, files)
    description = {"kind": "hub", "path": spec, "dataset": dataset_id, "config": config, "split": split,
                   "revision": commit}
    if revision and revision != commit:
        description["ref"] = revision
    return _not_empty(Source(description, table.schema, _table=table))


def _hub_table(dataset_id: str, config: str | None, split: str, commit: str, files: list[str] | None) -> pa.Table:
    """The split as memory-mapped Arrow: the repository's files at `commit` downloaded once
    into the Hugging Face cache (only the config's, where its card names them), then loaded
    by `datasets` into its Arrow cache."""
    import datasets

    folder = _download(dataset_id, config, commit, files)
    try:
        ds = datasets.load_dataset(folder, name=config, split=split)
    except Exception as e:  # no such config or split: datasets names what there is
        raise SourceError(f"hf://{dataset_id}: cannot open config {config!r} split {split!r} ({_why(e)})") from None
    return ds.data.table if hasattr(ds.data, "table") else ds.data


def _download(dataset_id: str, config: str | None, commit: str, files: list[str] | None) -> str:
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        patterns = None
        if files is None or "README.md" in files:
            try:
                card = hf_hub_download(dataset_id, "README.md", repo_type="dataset", revision=commit)
                patterns = _config_patterns(Path(card).read_text(encoding="utf-8"), config)
            except Exception:  # no card (offline: not cached): every file
                patterns = None
        return snapshot_download(dataset_id, repo_type="dataset", revision=commit, ignore_patterns=[".git*"],
                                 allow_patterns=None if patterns is None else ["README.md", *patterns])
    except Exception as e:
        raise SourceError(f"hf://{dataset_id}@{commit[:12]}: cannot download ({_why(e)})") from None


def _why(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _config_patterns(card: str, config: str | None) -> list[str] | None:
    """The data files the card's `configs:` block names for `config` (the default one when
    None), or None to take every file (a card with no configs: datasets' own layout rules)."""
    import yaml

    if not card.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(card.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not isinstance(configs, list) or not configs:
        return None
    chosen = next((c for c in configs if isinstance(c, dict) and (c.get("config_name") == config or (
        config is None and (c.get("default") or len(configs) == 1)))), None)
    if chosen is None:
        return None  # let datasets say which configs there are
    files = chosen.get("data_files")
    entries = files if isinstance(files, list) else [files]
    patterns = []
    for entry in entries:
        paths = entry.get("path") if isinstance(entry, dict) else entry
        patterns += paths if isinstance(paths, list) else [paths]
    return [p for p in patterns if isinstance(p, str)] or None
