"""Synthesizers: the plug-in shape of everything `roost build` can make.

A synthesizer is one module in this package: its `Config` (a pydantic model with
`kind: Literal["..."]`, which the build recipe's `synthesizer:` holds) and a class decorated
with `@SYNTHESIZERS.register` that declares
- `schema`: the row schema it writes (SFT, preference, ...);
- `plan()`: how its work splits into shards (a quota of rows each, or a slice of an input);
- `generate(shard)`: the rows, rejects and stats of one shard (engines are loaded here, once
  per process, never in `plan`);
- `provenance()`: what made the rows (sampling, templates, scoring models...);
- `subsets` (optional): other configs of the same output written beside `data/` per shard
  (e.g. process labels next to the pairs), from `ShardOutput.subsets`.
`roost.building.runner.Build` runs any of them; it names none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from roost.config import DatasetInput, Strict
from roost.dataset.writer import Reject
from roost.engines.base import derive_seed
from roost.errors import ConfigError, InputError
from roost.registry import Registry
from roost.report.panels import Panel
from roost.schemas import RowSchema

SYNTHESIZERS = Registry("roost.synthesizers", "synthesizer")


class SynthesizerConfig(Strict):
    kind: str


class InputRows:
    """A synthesizer's input, opened and checked once (readable, of a kind it accepts, not
    mostly bad rows), then read one shard's slice at a time. Bad rows come back with the
    reason. Subclasses read other shapes by overriding `_detect` and `_parse`."""

    def __init__(self, config: DatasetInput, accepts: tuple[str, ...], who: str):
        from roost.dataset.rows import check_share

        self.config = config
        self.source = config.open()
        self.shape = self._detect(self.source.schema)
        self.cols = self.shape.cols
        self.kind = self.shape.kind
        if self.kind not in accepts:
            raise InputError(f"{config.path}: {self.kind} rows, but the {who} synthesizer needs "
                             f"{' or '.join(accepts)} rows")
        self.total = self.source.count()
        sample = [row for batch in self.source.rows(0, 1000) for row in batch]
        check_share(sample, self.shape, config.max_bad_share, config.path, sampled=self.total > len(sample))

    def _detect(self, schema: pa.Schema):
        """The input's roost.dataset.rows.Shape."""
        return self.config.shape(schema)

    def _parse(self, row: dict):
        """(Parsed or None, problem or None) of one row."""
        from roost.dataset.rows import parse

        return parse(row, self.shape)

    def describe(self) -> dict:
        """What the input is, for the manifest: path, shape, content digest or Hub commit."""
        return {"path": self.config.path, "rows": self.total, "read_as": self.shape.line(), **self.shape.describe(),
                **self.source.identity()}

    def rows(self, start: int, stop: int):
        """(row, parsed or None, problem or None, id) for rows [start, stop)."""
        from roost.schemas import row_id

        for batch in self.source.rows(start, stop):
            for row in batch:
                parsed, problem = self._parse(row)
                value = row.get(self.cols.id)
                rid = str(value) if value not in (None, "") else (row_id(parsed.messages) if parsed else None)
                yield row, parsed, problem, rid


@dataclass(frozen=True)
class Shard:
    index: int
    count: int  # shards in the whole build
    seed: int  # derived from the recipe seed and the index: a shard never depends on another
    quota: int | None = None  # rows to make
    start: int | None = None  # or: the slice [start, stop) of the input to work through
    stop: int | None = None

    @property
    def label(self) -> str:
        return f"shard {self.index + 1}/{self.count}"


@dataclass
class ShardOutput:
    rows: list[dict]
    rejects: list[Reject]
    stats: dict[str, Any] = field(default_factory=dict)
    subsets: dict[str, list[dict]] = field(default_factory=dict)  # name -> rows (see Synthesizer.subsets)


class Synthesizer:
    kind: ClassVar[str]
    Config: ClassVar[type[SynthesizerConfig]]
    schema: ClassVar[RowSchema]
    # other configs of the same output, written per shard beside data/ (`<out>/<name>/`)
    subsets: ClassVar[dict[str, pa.Schema]] = {}
    # histograms `roost report` draws of the columns it writes, when they are present
    report_panels: ClassVar[tuple[Panel, ...]] = ()

    def __init__(self, config: SynthesizerConfig, recipe):
        self.config = config
        self.recipe = recipe  # roost.recipe.Recipe: the policy model, output plan, seed, iteration

    def check(self) -> None:
        """Raise a one-line UserError for what the user can fix (other models, inputs)."""

    def plan(self) -> list[Shard]:
        """Default: quotas of `output.shard_size` rows up to `output.num_rows`."""
        out = self.recipe.output
        if out.num_rows is None:
            raise ConfigError(f"field 'output.num_rows': required by the {self.kind} synthesizer")
        count = -(-out.num_rows // out.shard_size)
        return [self.shard(i, count, quota=min(out.shard_size, out.num_rows - i * out.shard_size))
                for i in range(count)]

    def slices(self, total: int) -> list[Shard]:
        """Shards over an input of `total` rows (capped by `output.num_rows`)."""
        out = self.recipe.output
        n = total if out.num_rows is None else min(total, out.num_rows)
        count = max(1, -(-n // out.shard_size))
        return [self.shard(i, count, start=i * out.shard_size, stop=min(n, (i + 1) * out.shard_size))
                for i in range(count)]

    def shard(self, index: int, count: int, **kw) -> Shard:
        return Shard(index, count, derive_seed(self.recipe.model.seed, "shard", index), **kw)

    def _policy(self):
        """The policy's engine: loaded on first use, once per process, shared by every shard."""
        from roost.engines import get_engine

        return get_engine(self.recipe.model)

    def _revision(self) -> str | None:
        """The policy's resolved revision, as every row records it."""
        if not hasattr(self, "_policy_rev"):
            self._policy_rev = self._policy().describe().get("revision")
        return self._policy_rev

    def generate(self, shard: Shard) -> ShardOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def inputs(self) -> dict[str, dict]:
        """name -> what each dataset the synthesizer reads is (InputRows.describe): path,
        shape, content digest or Hub commit. Recorded in the manifest and the fingerprint."""
        return {}

    def provenance(self) -> dict[str, Any]:
        return {}

    def finish(self, writer) -> dict[str, Any]:
        """After every shard is done: whole-build work (derived subsets, global statistics).
        Must be idempotent and leave data/ untouched. Returns what the manifest records."""
        return {}
