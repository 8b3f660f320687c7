"""Which measures a dataset's columns allow, as polars expressions over its Parquet scan.

Texts are the parts of a row people read: the instruction (the first user turn of an SFT
conversation, the last user turn of a preference prompt) and the response (the last
assistant turn; `chosen` and `rejected` for preference rows). Their lengths are counted in
characters. Scores are the numeric columns roost's synthesizers and stages write: each declares
its own with its panels (`report_panels` on the plug-in's class), so a new plug-in's columns are
drawn without editing this module.
"""
from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from roost.report.panels import Panel


@dataclass(frozen=True)
class Measure:
    name: str  # also the key of the summary's stats and histograms
    label: str  # axis label, with its unit
    expr: pl.Expr
    integer: bool = False  # lengths: histogram bins on whole numbers


def _is_messages(dtype: pl.DataType) -> bool:
    return (isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)
            and {"role", "content"} <= {f.name for f in dtype.inner.fields})


def _turn(column: str, role: str, last: bool) -> pl.Expr:
    contents = pl.col(column).list.eval(
        pl.element().struct.field("content").filter(pl.element().struct.field("role") == role))
    return contents.list.last() if last else contents.list.first()


def _text(schema: pl.Schema, column: str, role: str, last: bool) -> pl.Expr | None:
    dtype = schema.get(column)
    if dtype is None:
        return None
    if _is_messages(dtype):
        return _turn(column, role, last)
    if dtype == pl.String:
        return pl.col(column)
    return None


def row_kind(schema: pl.Schema) -> str:
    return "preference" if {"prompt", "chosen", "rejected"} <= set(schema.names()) else "sft"


def texts(schema: pl.Schema) -> dict[str, pl.Expr]:
    """name -> the text expression, for the parts this schema has."""
    if row_kind(schema) == "preference":
        found = {"instruction": _text(schema, "prompt", "user", last=True),
                 "chosen": _text(schema, "chosen", "assistant", last=True),
                 "rejected": _text(schema, "rejected", "assistant", last=True)}
    elif "messages" in schema:
        found = {"instruction": _text(schema, "messages", "user", last=False),
                 "response": _text(schema, "messages", "assistant", last=True)}
    else:  # instruction/response string columns
        found = {"instruction": _text(schema, "instruction", "user", last=False),
                 "response": _text(schema, "response", "assistant", last=True)}
    return {name: expr for name, expr in found.items() if expr is not None}


def _plugin_panels() -> list[Panel]:
    """The panels the curation stages, then the synthesizers, declare (`report_panels`)."""
    from roost.stages.base import STAGES
    from roost.synthesizers.base import SYNTHESIZERS

    return [panel for registry in (STAGES, SYNTHESIZERS) for kind in registry.kinds()
            for panel in registry.get(kind).report_panels]


def scores() -> dict[str, str]:
    """Score columns roost writes, in the order they are shown, with their axis labels."""
    return {column: label for panel in _plugin_panels() for column, label in panel.labels.items()}


def measures(schema: pl.Schema) -> list[Measure]:
    """Every measure this schema allows: text lengths first, then scores."""
    out = [Measure(f"{name}_chars", f"{name} length (characters)", expr.str.len_chars(), integer=True)
           for name, expr in texts(schema).items()]
    for name, label in scores().items():
        dtype = schema.get(name)
        if dtype is not None and dtype.is_numeric():
            out.append(Measure(name, label, pl.col(name).cast(pl.Float64).fill_nan(None)))
    return out


# The histograms of text lengths; a panel is drawn when all its measures exist. The plug-ins'
# panels follow (all_panels).
LENGTH_PANELS = (
    Panel("instruction_length", "Instruction length", "lengths", ("instruction_chars",)),
    Panel("response_length", "Response length", "lengths", ("response_chars",)),
    Panel("response_length", "Response length: chosen vs rejected", "lengths", ("chosen_chars", "rejected_chars"),
          xlabel="response length (characters)"),
)


def all_panels() -> list[Panel]:
    """Every histogram the report can draw, in the order it shows them."""
    return [*LENGTH_PANELS, *_plugin_panels()]


# Rows semantic dedup removed carry their similarity in the reject's detail: "cosine 0.9512 >= 0.9".
REMOVED_SIMILARITY = "removed_similarity"


def removed_similarity() -> pl.Expr:
    return pl.col("detail").str.extract(r"cosine (-?[0-9.]+)", 1).cast(pl.Float64, strict=False)


def panels(names: set[str]) -> list[Panel]:
    """The panels whose measures are present (the dedup panel needs only the kept rows' measure)."""
    found = []
    for p in all_panels():
        needed = set(p.measures) - {REMOVED_SIMILARITY}
        if needed <= names:
            found.append(p)
    return found
