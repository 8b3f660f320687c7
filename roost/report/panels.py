"""What a report panel is (plain data, no plotting): a histogram of measures sharing bin edges.
Stages declare the panels of the columns they write (`Stage.report_panels`); roost.report.columns
gathers them with the built-in ones."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Panel:
    """One histogram plot: measures sharing bin edges, drawn over each other."""

    key: str
    title: str
    figure: str  # file stem of the figure it belongs to
    measures: tuple[str, ...]
    marker: str | None = None  # a threshold the panel marks: key of Summary.thresholds
    xlabel: str | None = None  # default: the first measure's label
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)  # score column -> axis label
