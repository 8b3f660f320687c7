"""Locating the first wrong step with an LLM judge, as Step-DPO does with GPT-4o.

The judge gets the problem, a correct reference solution and the wrong solution, writes a
short analysis, then "Final Decision:" and a verdict per step ("Step 1: correct; Step 2:
neutral; ..."). As in Step-DPO's `prepare_for_correction.py`, the first step judged neutral
or incorrect is the first wrong one. An answer without a readable decision gives no step and
the reason, never a guess. The prompt (after Step-DPO's) is a file users can replace; it
needs {problem}, {reference} and {solution}.
"""
from __future__ import annotations

import re
from pathlib import Path

from roost.errors import ConfigError

TEMPLATE_FILE = Path(__file__).resolve().parents[1] / "judges" / "templates" / "step_dpo_locate.txt"
PLACEHOLDERS = ("problem", "reference", "solution")
_VERDICT = re.compile(r"step\s*(\d+)\s*[:\-]\s*(correct|neutral|incorrect)", re.I)


def load_template(path: str | None = None) -> str:
    """The template text (None: the default file), checked for its placeholders."""
    target = Path(path).expanduser() if path else TEMPLATE_FILE
    try:
        text = target.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read judge template {target} ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    missing = [p for p in PLACEHOLDERS if "{" + p + "}" not in text]
    if missing:
        raise ConfigError(f"judge template {target} has no {', '.join('{' + p + '}' for p in missing)} placeholder")
    return text


def question(template: str, problem: str, reference: str, solution: str) -> str:
    values = {"problem": problem, "reference": reference, "solution": solution}
    return re.sub(r"\{(problem|reference|solution)\}", lambda m: values[m.group(1)], template)


def read_decision(text: str, num_steps: int) -> tuple[int | None, str | None]:
    """(first wrong step, None) or (None, why the answer cannot be read)."""
    at = text.lower().rfind("final decision")
    if at < 0:
        return None, "no 'Final Decision' in the judge's answer"
    verdicts = _VERDICT.findall(text[at:])
    if not verdicts:
        return None, "no 'Step k: correct|neutral|incorrect' after 'Final Decision'"
    for number, verdict in verdicts:
        if verdict.lower() in ("neutral", "incorrect"):
            k = int(number)
            if not 1 <= k <= num_steps:
                return None, f"the judge names step {k}, the solution has {num_steps}"
            return k, None
    return None, "the judge found every step correct"
