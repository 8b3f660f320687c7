"""Where curation reads from, in bounded batches: roost outputs, Parquet files, Hub datasets.

A `Source` can be iterated several times (curation makes three passes) and never holds more
than one batch of rows in memory.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from roost.errors import InputError


class SourceError(InputError):
    """The input cannot be opened (missing file, no Parquet files, unreachable dataset)."""


@dataclass
class Source:
    description: dict[str, Any]
    schema: pa.Schema
    _files: list[str] = field(default_factory=list)
    _hub: tuple[str, str] | None = None
    _table: pa.Table | None = None  # JSON Lines input, read whole

    def batches(self, batch_size: int = 8192) -> Iterator[list[dict]]:
        if self._table is not None:
            yield from self.rows(0, self._table.num_rows, batch_size)
            return
        if self._hub:
            yield from _hub_batches(*self._hub, batch_size)
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
        """The files the rows are read from, in reading order (None for a Hub stream): what
        the resume cache fingerprints (roost.stage_cache)."""
        if self._hub:
            return None
        return [self.description["path"]] if self._table is not None else list(self._files)

    def count(self) -> int | None:
        if self._table is not None:
            return self._table.num_rows
        if self._hub:
            return None
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self._files)

    def rows(self, start: int, stop: int, batch_size: int = 8192) -> Iterator[list[dict]]:
        """Rows [start, stop) in input order, in batches: one shard's slice of the input."""
        if self._table is not None:
            for batch in self._table.slice(start, max(0, stop - start)).to_batches(max_chunksize=batch_size):
                if batch.num_rows:
                    yield batch.to_pylist()
            return
        if self._hub:
            import itertools

            it = (row for batch in _hub_batches(*self._hub, batch_size) for row in batch)
            rows = list(itertools.islice(it, start, stop))
            for i in range(0, len(rows), batch_size):
                yield rows[i:i + batch_size]
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


def open_source(spec: str, *, split: str = "train") -> Source:
    """A directory roost wrote (its data/), a directory or glob of Parquet files, one Parquet
    file, a JSON Lines file (`.jsonl`, read whole), or `hf://<dataset id>` for a Hub dataset
    (streamed)."""
    if spec.startswith("hf://"):
        return _open_hub(spec[len("hf://"):], split)
    path = Path(spec)
    if path.suffix == ".jsonl" and path.is_file():
        return _open_jsonl(path)
    if path.is_dir():
        files = sorted(glob.glob(str(path / "data" / f"{split}-*.parquet"))) or sorted(
            glob.glob(str(path / "**" / "*.parquet"), recursive=True)
        )
        files = [f for f in files if "/rejects/" not in f and "/.roost-tmp/" not in f]
    elif any(ch in spec for ch in "*?["):
        files = sorted(glob.glob(spec, recursive=True))
    elif path.exists():
        files = [str(path)]
    else:
        raise SourceError(f"{spec}: no such file or directory (use hf://<id> for a Hub dataset)")
    if not files:
        raise SourceError(f"{spec}: no Parquet files found")
    schema = pads.dataset(files, format="parquet").schema
    return _not_empty(Source({"kind": "parquet", "path": spec, "files": len(files)}, schema, files))


def _not_empty(source: Source) -> Source:
    """An input with no rows is refused like a missing one: a run over it could only make nothing."""
    if source.count() == 0:
        files = source.description.get("files")
        raise SourceError(f"{source.description['path']}: no rows, the input is empty"
                          + (f" ({files} file(s) read)" if files else ""))
    return source


def _open_jsonl(path: Path) -> Source:
    import pyarrow.json as pajson

    try:
        table = pajson.read_json(path)
    except pa.ArrowInvalid as e:
        raise SourceError(f"{path}: not valid JSON Lines ({str(e).splitlines()[0]})") from None
    return _not_empty(Source({"kind": "jsonl", "path": str(path)}, table.schema, _table=table))


def _open_hub(dataset_id: str, split: str) -> Source:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split, streaming=True)
    except Exception as e:
        raise SourceError(f"hf://{dataset_id}: cannot open split {split!r}: {e}") from None
    features = ds.features
    schema = features.arrow_schema if features is not None else pa.schema([])
    return Source({"kind": "hub", "dataset": dataset_id, "split": split}, schema, _hub=(dataset_id, split))


def _hub_batches(dataset_id: str, split: str, batch_size: int) -> Iterator[list[dict]]:
    import datasets

    ds = datasets.load_dataset(dataset_id, split=split, streaming=True)
    batch: list[dict] = []
    for row in ds:
        batch.append(row)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
