"""Row filters, datatrove-style: a rule is one small method; the step owns the loop.

A `Filter` looks at one row and returns `None` to keep it or a `Drop` saying why not.
`FilterStep` runs a list of filters over rows, stops at the first drop, counts drops per
reason and turns every dropped row into a `Reject` for the rejects file. Nothing is lost.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from roost.writer import Reject


@dataclass(frozen=True)
class Drop:
    reason: str
    detail: str | None = None


class Filter:
    """Subclass, set `name`, implement `check`. Settings go in the constructor."""

    name: str = "filter"

    def check(self, row: dict) -> Drop | None:  # pragma: no cover - interface
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@dataclass
class FilterResult:
    kept: list[dict]
    rejects: list[Reject]
    counts: Counter = field(default_factory=Counter)


class FilterStep:
    def __init__(self, filters: Sequence[Filter], stage: str = "filter", id_field: str = "id"):
        self.filters = list(filters)
        self.stage = stage
        self.id_field = id_field

    def run(self, rows: Iterable[dict]) -> FilterResult:
        result = FilterResult([], [])
        for row in rows:
            drop = self.first_drop(row)
            if drop is None:
                result.kept.append(row)
                continue
            reason = drop.reason
            result.counts[reason] += 1
            result.rejects.append(
                Reject(self.stage, reason, row, id=row.get(self.id_field), detail=drop.detail)
            )
        return result

    def first_drop(self, row: dict) -> Drop | None:
        for f in self.filters:
            drop = f.check(row)
            if drop is not None:
                return drop
        return None
