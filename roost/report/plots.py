"""`figures`: the report's plots as PNG bytes, drawn with matplotlib's Agg renderer from a
Summary's tables (no data is read here)."""
from __future__ import annotations

import io
from typing import Callable

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from roost.report.columns import REMOVED_SIMILARITY, Panel
from roost.report.summary import Summary

DPI = 110
STYLE = {"font.size": 9.5, "axes.titlesize": 11, "axes.titleweight": "bold", "axes.spines.top": False,
         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "legend.frameon": False}
COLORS = {"chosen": "#2a9d8f", "rejected": "#e76f51", "kept": "#457b9d", "removed": "#e63946"}
MARK = "#1d3557"

# Figure stem -> heading, in the order the report shows them.
TITLES = {
    "lengths": "Instruction and response lengths",
    "deita": "Deita scores",
    "reward": "Reward scores",
    "score-gap": "Pair scores and the easy/hard cut",
    "sppo": "SPPO win probabilities",
    "solve-rate": "Step-DPO solve rates",
    "dedup-similarity": "Semantic dedup similarity",
    "stages": "Rows through the curation stages",
    "rejects": "Rejects by stage and reason",
    "iterations": "Per-iteration comparison",
}
_AFTER_HISTOGRAMS = ("stages", "rejects", "iterations")


def titles() -> dict[str, str]:
    """Figure stem -> title, in report order: TITLES, with any figure a stage's own panels name
    (roost.stages.base.Stage.report_panels) after the built-in histograms, titled by its first panel."""
    from roost.report.columns import all_panels

    extra: dict[str, str] = {}
    for panel in all_panels():
        if panel.figure not in TITLES:
            extra.setdefault(panel.figure, panel.title)
    head = {k: v for k, v in TITLES.items() if k not in _AFTER_HISTOGRAMS}
    return {**head, **extra, **{k: TITLES[k] for k in _AFTER_HISTOGRAMS}}


def _legend_name(measure: str) -> str:
    for part in ("chosen", "rejected"):
        if measure.startswith(part):
            return part
    return {"nearest_similarity": "kept rows", REMOVED_SIMILARITY: "removed (semantic_duplicate)"}.get(measure, measure)


def _color(measure: str, i: int) -> str:
    name = _legend_name(measure)
    for key, color in COLORS.items():
        if name.startswith(key):
            return color
    return f"C{i}"


def _png(fig: Figure) -> bytes:
    # Figures get the Agg canvas directly, not through pyplot: no display needed, no global backend switched.
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _grid(n: int, width: float = 5.2, height: float = 3.5, cols: int = 3) -> tuple[Figure, list]:
    cols = min(cols, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.3g}"


def _counts_axis(axis) -> None:
    axis.set_major_locator(MaxNLocator(integer=True))
    axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def _draw_panel(ax, panel: Panel, s: Summary) -> None:
    names = [m for m in panel.measures if m in s.histograms]
    overlay = len(names) > 1
    for i, name in enumerate(names):
        h = s.histograms[name]
        ax.stairs(h.counts, h.edges, fill=True, alpha=0.45 if overlay else 0.8, color=_color(name, i),
                  label=_legend_name(name) if overlay else None)
        if overlay:
            ax.stairs(h.counts, h.edges, color=_color(name, i), linewidth=1.2)
    value = s.thresholds.get(panel.marker) if panel.marker else None
    if value is not None:
        label = {"zero": "0", "semantic_dedup": f"threshold {value:g}",
                 "difficulty": f"easy/hard cut {value:.3g}"}[panel.marker]
        ax.axvline(value, color=MARK, linestyle="--", linewidth=1.4, label=label)
    above = sum(s.histograms[m].above for m in names)
    if above:
        edge = s.histograms[names[0]].edges[-1]
        ax.text(0.98, 0.97, f"last bar includes {above:,} longer than {_fmt(edge)}", transform=ax.transAxes,
                ha="right", va="top", fontsize=8, color="#555")
    ax.set_title(panel.title)
    ax.set_xlabel(panel.xlabel or s.labels.get(names[0], names[0]))
    ax.set_ylabel("rows")
    _counts_axis(ax.yaxis)
    if overlay or value is not None:
        ax.legend(loc="best", fontsize=8.5)


def _histogram_figures(s: Summary) -> dict[str, bytes]:
    by_figure: dict[str, list[Panel]] = {}
    for panel in s.panels():
        by_figure.setdefault(panel.figure, []).append(panel)
    out = {}
    for stem, panels in by_figure.items():
        fig, axes = _grid(len(panels))
        for ax, panel in zip(axes, panels):
            _draw_panel(ax, panel, s)
        out[stem] = _png(fig)
    return out


def _rejects_figure(s: Summary, limit: int = 15) -> bytes | None:
    rows = s.rejects_by_reason
    if not rows:
        return None
    shown, rest = rows[:limit], rows[limit:]
    labels = [f"{r['stage']}: {r['reason']}" for r in shown] + ([f"{len(rest)} other reasons"] if rest else [])
    counts = [r["rows"] for r in shown] + ([sum(r["rows"] for r in rest)] if rest else [])
    fig = Figure(figsize=(9, 1.0 + 0.32 * len(labels)), layout="constrained")
    ax = fig.subplots()
    bars = ax.barh(labels[::-1], counts[::-1], color=COLORS["removed"], alpha=0.8)
    ax.bar_label(bars, labels=[f"{c:,}" for c in counts[::-1]], padding=3, fontsize=8.5)
    ax.set_xlabel("rejected rows")
    _counts_axis(ax.xaxis)
    ax.set_title(f"Rejects by stage and reason ({s.rejects:,} {'row' if s.rejects == 1 else 'rows'})")
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.12)
    return _png(fig)


def _stages_figure(s: Summary) -> bytes | None:
    if not s.stages:
        return None
    names = [st["name"] for st in s.stages]
    kept = [st.get("kept") or 0 for st in s.stages]
    removed = [(st.get("rows_in") or 0) - (st.get("kept") or 0) for st in s.stages]
    fig = Figure(figsize=(9, 1.0 + 0.36 * len(names)), layout="constrained")
    ax = fig.subplots()
    y = list(range(len(names)))[::-1]
    kept_bars = ax.barh(y, kept, color=COLORS["kept"], alpha=0.85, label="kept")
    ax.bar_label(kept_bars, labels=[f"{k:,}" for k in kept], label_type="center", color="white", fontsize=8.5)
    bars = ax.barh(y, removed, left=kept, color=COLORS["removed"], alpha=0.8, label="removed")
    ax.bar_label(bars, labels=[f"-{r:,}" if r else "" for r in removed], padding=3, fontsize=8.5)
    ax.set_yticks(y, names)
    ax.set_xlabel("rows (in order of the stages, top first)")
    ax.set_title("Rows kept and removed by each stage")
    ax.grid(axis="y", visible=False)
    ax.margins(x=0.1)
    _counts_axis(ax.xaxis)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8.5)
    return _png(fig)


def _iterations_figure(s: Summary) -> bytes | None:
    its = s.iterations
    if len(its) < 2 and not (s.baseline and any(it.get("eval") for it in its)):
        return None
    xs = [it["iteration"] for it in its]
    lengths = [m for m in s.labels if m.endswith("_chars")]
    scores = [m for m in s.labels if not m.endswith("_chars") and m != REMOVED_SIMILARITY
              and any(m in it["stats"] for it in its)]
    held_out = s.baseline is not None and any(it.get("eval") for it in its)
    fig, axes = _grid(2 + bool(scores) + held_out)
    ax = axes[0]
    width = 0.4 if any(it["rejects"] is not None for it in its) else 0.8
    ax.bar([x - width / 2 if width < 0.8 else x for x in xs], [it["rows"] for it in its], width, label="rows",
           color=COLORS["kept"])
    if width < 0.8:
        ax.bar([x + width / 2 for x in xs], [it["rejects"] or 0 for it in its], width, label="rejects",
               color=COLORS["removed"], alpha=0.8)
        ax.legend(fontsize=8.5)
    _counts_axis(ax.yaxis)
    ax.set_title("Rows per iteration")
    for i, (ax, names, stat, title, unit) in enumerate(
            [(axes[1], lengths, "p50", "Median length per iteration", "characters (median)"),
             *([(axes[2], scores, "mean", "Mean score per iteration", "mean")] if scores else [])]):
        for j, name in enumerate(names):
            ys = [it["stats"].get(name, {}).get(stat) for it in its]
            ax.plot(xs, ys, marker="o", label=name, color=_color(name, j))
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.legend(fontsize=8.5)
    if held_out:
        _held_out_axis(axes[-1], s)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.set_xticks(xs if ax is not axes[-1] or not held_out else [-1, *xs])
    if held_out:
        axes[-1].set_xticklabels(["base", *map(str, xs)])
    return _png(fig)


def _held_out_axis(ax, s: Summary) -> None:
    """The held-out metrics of the base model (x = -1) and of the model each iteration trained."""
    evaluated = [it for it in s.iterations if it.get("eval")]
    xs = [-1, *(it["iteration"] for it in evaluated)]
    runs = [s.baseline, *(it["eval"] for it in evaluated)]
    for j, name in enumerate(("greedy_accuracy", "sampled_accuracy")):
        ys = [r["metrics"].get(name) for r in runs]
        if any(y is not None for y in ys):
            ax.plot(xs, ys, marker="o", label=name, color=f"C{j}")
    ax.set_title(f"Held-out accuracy (loop metric: {s.baseline['metric']})")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8.5)


def figures(summary: Summary) -> dict[str, bytes]:
    """Figure stem -> PNG bytes, for the plots this summary's columns allow, in report order."""
    made: dict[str, bytes | None] = {}
    with matplotlib.rc_context(STYLE):
        drawers: dict[str, Callable[[Summary], bytes | None]] = {
            "stages": _stages_figure, "rejects": _rejects_figure, "iterations": _iterations_figure}
        made.update((k, f(summary)) for k, f in drawers.items())
        made.update(_histogram_figures(summary))
    return {stem: made[stem] for stem in titles() if made.get(stem)}
