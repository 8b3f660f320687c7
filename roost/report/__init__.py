"""`roost report`: a self-contained HTML page and PNG figures describing a roost output
(lengths, scores, dedup similarity, rejects, iterations, sample rows), and a markdown section
of the same numbers for a dataset card.

Names load on first use: the plug-ins import roost.report.panels (plain data) without pulling
in polars and matplotlib."""
from __future__ import annotations

_LAZY = {
    "write_report": "roost.report.html",
    "card_markdown": "roost.report.markdown",
    "figures": "roost.report.plots",
    "Histogram": "roost.report.summary",
    "Summary": "roost.report.summary",
    "summarize": "roost.report.summary",
}

__all__ = ["Histogram", "Summary", "card_markdown", "figures", "summarize", "write_report"]


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'roost.report' has no attribute {name!r}")
