"""Write a dataset as Hub-style Parquet shards, atomically, with provenance and rejects.

Layout of an output directory:

    data/{split}-00000-of-00004.parquet      rows that passed (what `datasets` / the Hub load)
    rejects/{split}-00000-of-00004.parquet   rows kept out, each with stage and reason
    manifest.json                            what made it: model, revision, sampling, seed,
                                             recipe and its hash, roost version, counts

A shard is one unit of work. Its data file appears only by `os.replace` of a finished temp
file, so it is either absent or whole; its presence is what marks the shard done. The rejects
file is written first, so a finished shard always has its rejects beside it.
"""
from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from roost import __version__
from roost.runtime import stopping
from roost.schemas import REJECT, RowSchema

METADATA_KEY = b"roost"


@dataclass
class Reject:
    stage: str
    reason: str
    record: Any
    id: str | None = None
    detail: str | None = None
    duplicate_of: str | None = None

    def as_row(self) -> dict:
        return {
            "id": self.id,
            "stage": self.stage,
            "reason": self.reason,
            "detail": self.detail,
            "duplicate_of": self.duplicate_of,
            "record": json.dumps(self.record, ensure_ascii=False, default=str),
        }


@dataclass
class ShardStats:
    name: str
    rows: int
    rejects: int
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """The one way roost writes a file whole: the block writes the yielded hidden temp path
    beside `path`; when it ends, the temp file is fsynced and renamed onto `path`. A stop
    (roost.runtime.stopping.deferred) waits for the rename, an error removes the temp file, so
    readers see the old file or the new one, never half of one. Use it for files written by
    a library (`np.save`, `pq.write_table`); `atomic_write_bytes` for bytes in hand."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with stopping.deferred():  # a Ctrl-C now lands after the rename: never a temp file left
        try:
            yield tmp
            fsync_file(tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`data` as `path`, through `atomic_path`. The file gets the mode any new file gets (0666
    less the umask: 0644 under umask 022), as the Parquet shards beside it do; `tempfile.mkstemp`
    would make it 0600."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write_table(path: Path, table: pa.Table) -> None:
    """A whole table as one shard: hidden temp file, fsync, rename into place."""
    with stopping.deferred():
        sink = ShardSink(path, table.schema)
        try:
            sink.write(table)
        except BaseException:
            sink.abort()
            raise
        sink.close()


class ShardSink:
    """One shard written incrementally (row group by row group) into a hidden temp file and
    renamed into place on `close()`: bounded memory, and still never half-visible."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = Path(path)
        scratch = self.path.parent.parent / ".roost-tmp"
        scratch.mkdir(parents=True, exist_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = scratch / f"{self.path.name}.{uuid.uuid4().hex}.tmp"
        self.schema = schema
        with stopping.deferred():  # the temp file exists only while this object knows it
            self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table)
            self.rows += table.num_rows

    def close(self) -> None:
        with stopping.deferred():
            self._writer.close()
            fsync_file(self._tmp)
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        with stopping.deferred():
            try:
                self._writer.close()
            finally:
                self._tmp.unlink(missing_ok=True)


class ShardedOutput:
    """Rows streamed into `num_shards` files of `shard_size` rows (the last takes the rest)."""

    def __init__(self, path_for, num_shards: int, shard_size: int, schema: pa.Schema, chunk: int = 4096):
        self.path_for = path_for
        self.num_shards = num_shards
        self.shard_size = shard_size
        self.schema = schema
        self.chunk = chunk
        self.counts = [0] * num_shards
        self._buffer: list[dict] = []
        self._index = 0
        self._sink: ShardSink | None = None

    def add(self, row: dict) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.chunk:
            self._drain()

    def _drain(self) -> None:
        while self._buffer:
            if self._sink is None:
                self._sink = ShardSink(self.path_for(self._index), self.schema)
            last = self._index == self.num_shards - 1
            room = len(self._buffer) if last else self.shard_size - self._sink.rows
            take, self._buffer = self._buffer[:room], self._buffer[room:]
            self._sink.write(pa.Table.from_pylist(take, schema=self.schema))
            if not last and self._sink.rows >= self.shard_size:
                self._finish_shard()

    def _finish_shard(self) -> None:
        self._sink.close()
        self.counts[self._index] = self._sink.rows
        self._sink = None
        self._index += 1

    def close(self) -> list[int]:
        """Flush, and write every remaining shard index (empty if need be) so names are complete."""
        self._drain()
        while self._index < self.num_shards:
            if self._sink is None:
                self._sink = ShardSink(self.path_for(self._index), self.schema)
            self._finish_shard()
        return self.counts

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.parquet"


class DatasetWriter:
    def __init__(self, root: str | Path, schema: RowSchema, *, split: str = "train", num_shards: int):
        self.root = Path(root)
        self.schema = schema
        self.split = split
        self.num_shards = num_shards

    def data_path(self, index: int) -> Path:
        return self.root / "data" / shard_name(self.split, index, self.num_shards)

    def rejects_path(self, index: int) -> Path:
        return self.root / "rejects" / shard_name(self.split, index, self.num_shards)

    def is_done(self, index: int) -> bool:
        return self.data_path(index).exists()

    def pending(self) -> list[int]:
        return [i for i in range(self.num_shards) if not self.is_done(i)]

    def write_shard(
        self,
        index: int,
        rows: Iterable[dict],
        rejects: Iterable[Reject],
        provenance: dict[str, Any],
        extra_stats: dict[str, Any] | None = None,
        subsets: dict[str, tuple[pa.Schema, list[dict]]] | None = None,
    ) -> ShardStats:
        """Validate rows, write subsets (other configs of the same output, e.g. PRM labels, in
        `<root>/<name>/`), then rejects, then data. Invalid rows join the rejects. The data
        file is written last: it marks the shard done, so a killed shard is redone whole."""
        good, bad = self.validate(rows)
        rejects = list(rejects) + bad
        seen: set[str] = set()
        unique = []
        for row in good:
            if row["id"] in seen:
                rejects.append(Reject("write", "duplicate_id_in_shard", row, id=row["id"]))
                continue
            seen.add(row["id"])
            unique.append(row)
        by_reason = dict(Counter(r.reason for r in rejects))
        stats = ShardStats(
            name=shard_name(self.split, index, self.num_shards),
            rows=len(unique),
            rejects=len(rejects),
            rejects_by_reason=by_reason,
            extra=extra_stats or {},
        )
        shard_meta = {"provenance": provenance, "shard": stats.__dict__}
        for name, (schema, subset_rows) in (subsets or {}).items():
            table = pa.Table.from_pylist(subset_rows, schema=schema)
            atomic_write_table(self.root / name / shard_name(self.split, index, self.num_shards), table)
        reject_table = pa.Table.from_pylist([r.as_row() for r in rejects], schema=REJECT)
        atomic_write_table(self.rejects_path(index), _with_meta(reject_table, shard_meta))
        table = pa.Table.from_pylist(unique, schema=self.schema.arrow)
        atomic_write_table(self.data_path(index), _with_meta(table, shard_meta))
        return stats

    def validate(self, rows: Iterable[dict]) -> tuple[list[dict], list[Reject]]:
        """Rows that pass the schema's checks, and a Reject for each that does not."""
        rows = list(rows)
        try:  # fast path: the whole batch converts, so only the per-row checks remain
            pa.Table.from_pylist(rows, schema=self.schema.arrow)
            problem = self.schema.semantic_problem
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            problem = self.schema.problem
        good, bad = [], []
        for row in rows:
            reason = problem(row)
            if reason:
                bad.append(Reject("schema", "invalid_row", row, id=row.get("id"), detail=reason))
            else:
                good.append(row)
        return good, bad

    def shard_stats(self, index: int) -> ShardStats:
        meta = read_roost_metadata(self.data_path(index))
        return ShardStats(**meta["shard"])

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_manifest(self.root, manifest)

    def read_manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.root)


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> None:
    """The one place a build's or curation's manifest.json is written. What is recorded (not
    what is fingerprinted: `recipe_hash` is the live recipe's) is made portable on the way:
    a curation whose input is a roost output gets that output's `input_provenance`, and no
    absolute path of this machine is written (roost.dataset.portable; `paths` says how they read)."""
    from roost.dataset import portable
    from roost.dataset.lineage import with_input_provenance

    manifest = {**portable.portable(with_input_provenance(manifest), root), "paths": portable.NOTE}
    atomic_write_bytes(Path(root) / "manifest.json", json.dumps(manifest, indent=2, default=str).encode())


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    path = Path(root) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def _with_meta(table: pa.Table, meta: dict) -> pa.Table:
    existing = table.schema.metadata or {}
    return table.replace_schema_metadata({**existing, METADATA_KEY: json.dumps(meta, default=str).encode()})


def read_roost_metadata(path: str | Path) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


def base_manifest(kind: str, recipe: dict, recipe_hash: str, **fields: Any) -> dict[str, Any]:
    return {
        "roost_version": __version__,
        "kind": kind,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe_hash": recipe_hash,
        "recipe": recipe,
        **fields,
    }


def summarize(stats: list[ShardStats]) -> dict[str, Any]:
    by_reason: Counter = Counter()
    for s in stats:
        by_reason.update(s.rejects_by_reason)
    return {
        "rows": sum(s.rows for s in stats),
        "rejects": sum(s.rejects for s in stats),
        "rejects_by_reason": dict(by_reason),
        "shards": {s.name: {"rows": s.rows, "rejects": s.rejects, "rejects_by_reason": s.rejects_by_reason, **s.extra} for s in stats},
    }
