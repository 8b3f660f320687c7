"""Row filters, datatrove-style: a rule is one small method; the step owns the loop.

A `Filter` looks at one row and returns `None` to keep it or a `Drop` saying why not.
`FilterStep` runs a list of filters over rows, stops at the first drop, counts drops per
reason and turns every dropped row into a `Reject` for the rejects file. Nothing is lost.
(The curation runner, roost.curation.runner, is the same loop over whole datasets, columnar.)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from roost.dataset.writer import Reject


@dataclass(frozen=True)
class Drop:
    reason: str
    detail: str | None = None


class Filter:
    """Subclass, set `name`, implement `check`. Settings go in the constructor."""

    name: str = "filter"

    def check(self, row: Any) -> Drop | None:  # pragma: no cover - interface
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@dataclass
class FilterResult:
    kept: list[Any]
    rejects: list[Reject]
    counts: Counter = field(default_factory=Counter)


class FilterStep:
    def __init__(self, filters: Sequence[Filter], stage: str = "filter",
                 record: Callable[[Any], Any] = lambda row: row, row_id: Callable[[Any], str | None] | None = None):
        self.filters = list(filters)
        self.stage = stage
        self.record = record  # what the rejects file keeps of a dropped row
        self.row_id = row_id or (lambda row: row.get("id") if isinstance(row, dict) else None)

    def run(self, rows: Iterable[Any]) -> FilterResult:
        result = FilterResult([], [])
        for row in rows:
            drop = self.first_drop(row)
            if drop is None:
                result.kept.append(row)
                continue
            result.counts[drop.reason] += 1
            result.rejects.append(
                Reject(self.stage, drop.reason, self.record(row), id=self.row_id(row), detail=drop.detail)
            )
        return result

    def first_drop(self, row: Any) -> Drop | None:
        for f in self.filters:
            drop = f.check(row)
            if drop is not None:
                return drop
        return None
