"""`write_report`: one self-contained HTML page (figures inlined as data URIs, styles inline,
no scripts, nothing fetched) and the same figures as PNG files for the dataset card."""
from __future__ import annotations

import base64
import math
import struct
from pathlib import Path
from typing import Any

import jinja2

from roost import __version__
from roost.dataset.writer import atomic_write_bytes
from roost.errors import ConfigError
from roost.report.columns import REMOVED_SIMILARITY
from roost.report.plots import figures, titles
from roost.report.summary import SAMPLE_CHARS, Summary, summarize

REPORT_DIR = "report"
FIGURES_DIR = "figures"
TEXT_FIELDS = ("instruction", "response", "chosen", "rejected")


def figure_dir(out: Path) -> Path:
    """Where the PNGs of OUT's report go (the dataset card links them from there)."""
    return Path(out) / REPORT_DIR / FIGURES_DIR


def num(value: Any) -> str:
    """A number for a table: thousands separated, 4 significant digits for fractions."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or value.is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"


def _png_size(png: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png[16:24])  # the IHDR chunk: width, height


def _figure_measures(summary: Summary) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for panel in summary.panels():
        out.setdefault(panel.figure, []).extend(m for m in panel.measures if m in summary.stats)
    return out


def _caption(stem: str, summary: Summary) -> str:
    notes = summary.threshold_notes
    if stem == "lengths":
        return "Characters per text. Instruction: first user turn (a preference prompt's last user turn); " \
               "response: last assistant turn."
    if stem == "dedup-similarity":
        removed = summary.stats.get(REMOVED_SIMILARITY, {}).get("count") or 0
        return (f"Kept rows: cosine similarity to their nearest other row. Removed rows ({removed:,}): similarity to "
                f"the row they duplicate, from rejects/. Dashed: the {notes.get('semantic_dedup', 'threshold')}.")
    if stem == "score-gap":
        return "Scores the build's reward model gave the pair's answers, and their gap" + (
            f"; dashed: the {notes['difficulty']}." if "difficulty" in notes else ".")
    if stem == "reward":
        return "Rewards from curation's reward stage" + (
            "; the margin is chosen minus rejected (dashed: 0)." if "reward_margin" in summary.stats else ".")
    if stem == "stages":
        return "Rows into each curation stage, in order; removed rows are in rejects/ with their reason."
    if stem == "rejects":
        return "Rows kept out of the dataset (rejects/*.parquet), by the stage that removed them and why."
    if stem == "iterations":
        scores = any(not m.endswith("_chars") for it in summary.iterations for m in it["stats"])
        held = " Held-out accuracy of the base model and of each iteration's trained model." if summary.baseline else ""
        return "Per iteration: rows and rejects, median lengths" + (" and mean scores." if scores else ".") + held
    return ""


def render(summary: Summary, figs: dict[str, bytes]) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("roost.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = num
    env.filters["text"] = lambda value: "(none)" if value is None else value
    measures = _figure_measures(summary)
    items = []
    named = titles()
    for stem, png in figs.items():
        width, height = _png_size(png)
        items.append({"stem": stem, "title": named[stem], "caption": _caption(stem, summary),
                      "uri": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                      "width": width, "height": height, "measures": measures.get(stem, [])})
    its = summary.iterations
    iteration_measures = [m for m in summary.labels if any(m in it["stats"] for it in its)]
    return env.get_template("report.html.j2").render(
        summary=summary, name=Path(summary.path).name, figures=items, version=__version__,
        iteration_measures=iteration_measures, text_fields=TEXT_FIELDS, sample_chars=SAMPLE_CHARS)


def write_figures(out: Path, figs: dict[str, bytes]) -> dict[str, Path]:
    """The PNGs into OUT/report/figures/, replacing any a previous report made that no longer applies."""
    folder = figure_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    named = titles()
    for old in folder.glob("*.png"):
        if old.stem in named and old.stem not in figs:
            old.unlink()
    paths = {}
    for stem, png in figs.items():
        atomic_write_bytes(folder / f"{stem}.png", png)
        paths[stem] = folder / f"{stem}.png"
    return paths


def write_report(out: Path, html: Path | None = None) -> Path:
    """Summarize OUT, write its figures to OUT/report/figures/*.png and the page to `html`
    (default OUT/report/report.html); returns the page's path."""
    out = Path(out)
    summary = summarize(out)
    figs = figures(summary)
    html = Path(html) if html is not None else out / REPORT_DIR / "report.html"
    page = render(summary, figs).encode("utf-8")
    try:
        write_figures(out, figs)
        atomic_write_bytes(html, page)
    except OSError as e:
        raise ConfigError(f"{e.filename or html}: cannot write the report there ({e.strerror or e})") from None
    return html
