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

from roost.schemas import check_messages


class SourceError(ValueError):
    """The input cannot be curated as a whole (missing file, missing columns)."""


@dataclass
class Source:
    description: dict[str, Any]
    schema: pa.Schema
    _files: list[str] = field(default_factory=list)
    _hub: tuple[str, str] | None = None

    def batches(self, batch_size: int = 8192) -> Iterator[list[dict]]:
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

    def count(self) -> int | None:
        if self._hub:
            return None
        return pads.dataset(self._files, format="parquet").count_rows()


def open_source(spec: str, *, split: str = "train") -> Source:
    """A directory roost wrote (its data/), a directory or glob of Parquet files, one Parquet
    file, or `hf://<dataset id>` for a Hub dataset (streamed)."""
    if spec.startswith("hf://"):
        return _open_hub(spec[len("hf://"):], split)
    path = Path(spec)
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
    return Source({"kind": "parquet", "path": spec, "files": len(files)}, schema, files)


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


@dataclass(frozen=True)
class Columns:
    messages: str = "messages"
    instruction: str = "instruction"
    response: str = "response"
    id: str = "id"

    def check(self, schema: pa.Schema) -> str:
        """Which form the input has: 'messages' or 'pair'; a clear error if neither."""
        names = set(schema.names)
        if self.messages in names:
            return "messages"
        if self.instruction in names:
            return "pair"
        raise SourceError(
            f"input has neither a '{self.messages}' column nor an '{self.instruction}' column "
            f"(columns: {', '.join(sorted(names)) or 'none'}); set input.messages_column or "
            f"input.instruction_column/response_column"
        )


def to_conversation(row: dict, form: str, cols: Columns) -> tuple[list[dict] | None, str | None]:
    """The row as a list of {role, content} messages, or (None, why it cannot be one)."""
    if form == "messages":
        messages = row.get(cols.messages)
        if messages is None:
            return None, f"'{cols.messages}' is null"
        if not isinstance(messages, list):
            return None, f"'{cols.messages}' is not a list"
        problem = check_messages(list(messages), name=cols.messages)
        if problem:
            return None, problem
        if not any(m["role"] == "user" for m in messages):
            return None, f"'{cols.messages}' has no user message"
        return [{"role": m["role"], "content": m["content"]} for m in messages], None
    instruction, response = row.get(cols.instruction), row.get(cols.response)
    if not isinstance(instruction, str) or not instruction.strip():
        return None, f"'{cols.instruction}' is null, empty or not a string"
    messages = [{"role": "user", "content": instruction}]
    if response is not None:
        if not isinstance(response, str):
            return None, f"'{cols.response}' is not a string"
        if response.strip():
            messages.append({"role": "assistant", "content": response})
    return messages, None
