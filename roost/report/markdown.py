"""`card_markdown`: the report's tables as a markdown section for a Hugging Face dataset card."""
from __future__ import annotations

from roost.report.html import num
from roost.report.plots import titles
from roost.report.summary import STATS, Summary


def _cell(value) -> str:
    text = num(value) if isinstance(value, (int, float)) else ("" if value is None else str(value))
    return text.replace("|", "\\|").replace("\n", " ")


HELD_OUT = ("greedy_accuracy", "sampled_accuracy", "sampled_tokens")


def _table(header: list[str], rows: list[list]) -> list[str]:
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
               for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def _stats(summary: Summary, names: list[str]) -> list[str]:
    return _table(["measure", *STATS], [[name, *(summary.stats[name][s] for s in STATS)] for name in names])


def card_markdown(summary: Summary, figure_paths: dict[str, str]) -> str:
    """Markdown: counts, stages, rejects by reason, length and score statistics, iterations,
    and `![title](path)` for each figure path given (relative to the card)."""
    lines = ["## Dataset report", ""]
    counts = [["rows", summary.rows], ["rejects", summary.rejects]]
    counts += [[f"{name}/ rows", rows] for name, rows in summary.subsets.items()]
    lines += _table(["", "count"], counts)
    if summary.stages:
        lines += ["### Curation stages", ""]
        removed = [", ".join(f"{r}: {n:,}" for r, n in (st.get("removed") or {}).items()) for st in summary.stages]
        lines += _table(["stage", "rows in", "kept", "removed"],
                        [[st["name"], st["rows_in"], st["kept"], why] for st, why in zip(summary.stages, removed)])
    if summary.rejects_by_reason:
        lines += ["### Rejects by reason", ""]
        lines += _table(["stage", "reason", "rows"],
                        [[r["stage"], r["reason"], r["rows"]] for r in summary.rejects_by_reason])
    lengths = [m for m in summary.stats if m.endswith("_chars")]
    if lengths:
        lines += ["### Lengths (characters)", ""] + _stats(summary, lengths)
    scores = [m for m in summary.stats if m not in lengths]
    if scores:
        lines += ["### Scores", ""] + _stats(summary, scores)
    if summary.iterations:
        names = [m for m in summary.labels if any(m in it["stats"] for it in summary.iterations)]
        lines += ["### Per iteration", ""]
        lines += _table(["iteration", "rows", "rejects", *(f"{m} mean" for m in names)],
                        [[it["iteration"], it["rows"], it["rejects"],
                          *(it["stats"].get(m, {}).get("mean") for m in names)] for it in summary.iterations])
        if summary.baseline:
            base = summary.baseline
            lines += [f"Held-out {base['metric']} of each iteration's trained model (base model: {base['value']:.4f}):", ""]
            lines += _table(["iteration", f"held-out {base['metric']}", "gain", *HELD_OUT],
                            [[it["iteration"], it["eval"]["value"], it["eval"].get("gain"),
                              *(it["eval"]["metrics"].get(m) for m in HELD_OUT)]
                             for it in summary.iterations if it.get("eval")])
    named = titles()
    for name, path in figure_paths.items():
        lines += [f"![{named.get(name, name)}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"
