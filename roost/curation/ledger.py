"""The ledger of a curation: per input row, whether it is still in or which stage removed it and
why, and the values of the columns stages add; and its records as tables, which the curation
cache stores (roost.curation.cache) and a resumed run replays."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from roost.stages.base import Stage


class Ledger:
    """Per input row: why it was removed (a code), the number its detail is made from, the row
    it duplicates, and the values of the columns stages add. Columnar: numpy arrays for
    numbers (NaN = null), a dict only for values that are lists or text."""

    def __init__(self, total: int):
        self.total = total
        self.codes: list[tuple[str, str]] = [("", "")]  # code 0: still in
        self.fate = np.zeros(total, dtype=np.int16)
        self.details: dict[int, str] = {}
        self.measure = np.full(total, np.nan)
        self.ref = np.full(total, -1, dtype=np.int64)  # position of the row it duplicates
        self.numbers: dict[str, np.ndarray] = {}
        self.objects: dict[str, dict[int, Any]] = {}
        self.types: dict[str, pa.DataType] = {}

    def code(self, stage: str, reason: str) -> int:
        if (stage, reason) not in self.codes:
            self.codes.append((stage, reason))
        return self.codes.index((stage, reason))

    def remove(self, pos: int, stage: str, reason: str, detail: str | None = None) -> None:
        self.fate[pos] = self.code(stage, reason)
        if detail:
            self.details[pos] = detail

    def counts(self, stage: str | None = None) -> dict[str, int]:
        hist = np.bincount(self.fate, minlength=len(self.codes))
        return {r: int(hist[c]) for c, (st, r) in enumerate(self.codes)
                if c and hist[c] and (stage is None or st == stage)}

    def declare(self, f: pa.Field) -> None:
        self.types[f.name] = f.type
        if pa.types.is_floating(f.type) or pa.types.is_integer(f.type):
            self.numbers[f.name] = np.full(self.total, np.nan)
        else:
            self.objects[f.name] = {}

    def put(self, name: str, positions: np.ndarray, values) -> None:
        if name in self.numbers:
            self.numbers[name][positions] = np.asarray(
                [np.nan if v is None else v for v in values] if isinstance(values, list) else values, dtype=np.float64)
        else:
            store = self.objects[name]
            for p, v in zip(positions.tolist(), values):
                store[p] = v

    def get(self, name: str, pos: int):
        if name in self.numbers:
            v = self.numbers[name][pos]
            if math.isnan(v):
                return None
            return int(v) if pa.types.is_integer(self.types[name]) else float(v)
        return self.objects[name].get(pos)


# -- the ledger's records as tables (the curation cache's entries), and back --------------------


def removed_table(removed: list[tuple[int, str, str, str | None]]) -> pa.Table:
    """Pass 1's removals (position, stage, reason, detail), in order."""
    cols = list(zip(*removed)) if removed else [(), (), (), ()]
    return pa.table({"position": pa.array(cols[0], pa.int64()), "stage": pa.array(cols[1], pa.string()),
                     "reason": pa.array(cols[2], pa.string()), "detail": pa.array(cols[3], pa.string())})


def apply_removed(ledger: Ledger, table: pa.Table) -> None:
    pos = table.column("position").to_pylist()
    for p, stage, reason, detail in zip(pos, *(table.column(c).to_pylist() for c in ("stage", "reason", "detail"))):
        ledger.remove(p, stage, reason, detail)


def rows_table(ledger: Ledger, stage: Stage, positions: np.ndarray, drops: list[tuple[int, str, str | None]]) -> pa.Table:
    """What a row filter or annotator did: the rows it saw, which it dropped and why, the values
    of its columns (numbers as the ledger holds them: float64, NaN for null)."""
    why = {p: (r, d) for p, r, d in drops}
    plist = positions.tolist()
    cols: dict[str, Any] = {
        "position": pa.array(positions, pa.int64()),
        "drop_reason": pa.array([why[p][0] if p in why else None for p in plist], pa.string()),
        "drop_detail": pa.array([why[p][1] if p in why else None for p in plist], pa.string()),
    }
    for f in stage.fields():
        if f.name in ledger.numbers:
            cols[f"field:{f.name}"] = pa.array(ledger.numbers[f.name][positions], pa.float64())
        else:
            store = ledger.objects[f.name]
            cols[f"field:{f.name}"] = pa.array([store.get(p) for p in plist], ledger.types[f.name])
    return pa.table(cols)


def apply_rows(ledger: Ledger, stage: Stage, table: pa.Table) -> np.ndarray:
    """Replay `rows_table` into the ledger; returns which of the rows the stage dropped."""
    positions = table.column("position").to_numpy()
    for f in stage.fields():
        col = table.column(f"field:{f.name}")
        ledger.put(f.name, positions, col.to_numpy() if f.name in ledger.numbers else col.to_pylist())
    reasons = table.column("drop_reason").to_pylist()
    details = table.column("drop_detail").to_pylist()
    dropped = np.zeros(len(positions), dtype=bool)
    for i, reason in enumerate(reasons):
        if reason is not None:
            ledger.remove(int(positions[i]), stage.name, reason, details[i])
            dropped[i] = True
    return dropped
