"""Gold answers and final answers of math problems, compared with HF's math-verify.

Gold answers come in a dataset's own convention:
- `gsm8k`: the `answer` column is a worked solution ending in `#### N`; the gold is N
  (thousands separators dropped);
- `math`: the `solution` column is a worked solution with the result in `\\boxed{...}`; the
  gold is the last boxed expression (braces matched, so `\\boxed{\\frac{1}{2}}` is whole);
- `plain`: the answer column holds the answer itself.
A gold answer is parsed once, when its problem is read; one math-verify cannot parse goes to
rejects, so no solution is ever graded against nothing.

A solution's final answer is its last `\\boxed{...}`; none means "no final answer", which is
a wrong solution, never a crash. Comparison is `math_verify.verify(gold, answer)` (gold
first: it is asymmetric). math-verify times out with `signal.alarm`, which works in the main
thread only: elsewhere (a Prefect worker thread) it runs without its timeout.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Literal

Convention = Literal["gsm8k", "math", "plain"]
_GSM8K = re.compile(r"####\s*(.+?)\s*$", re.S)


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), braces matched; None if none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip() or None
    return None


def gold_text(value: Any, convention: Convention) -> str | None:
    """The gold answer as written in the dataset's convention, or None if it has none."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if convention == "gsm8k":
        m = _GSM8K.search(text)
        return m.group(1).replace(",", "").strip() or None if m else None
    if convention == "math":
        return last_boxed(text)
    return text.strip() or None


def _timeouts() -> dict:
    main = threading.current_thread() is threading.main_thread()
    return {"parsing_timeout": 5 if main else None}


def parse_answer(text: str) -> list | None:
    """math-verify's parse of one answer expression (wrapped as LaTeX math); None if it finds
    no expression in it (it then returns only the raw string)."""
    from math_verify import parse

    parsed = parse(f"${text}$", **_timeouts())
    return parsed if len(parsed) >= 2 else None


@dataclass(frozen=True)
class Gold:
    text: str
    parsed: list


def read_gold(value: Any, convention: Convention) -> tuple[Gold | None, str | None]:
    """(Gold, None) or (None, why it cannot be used)."""
    text = gold_text(value, convention)
    if text is None:
        return None, {"gsm8k": "no '#### <answer>' line", "math": "no \\boxed{} answer",
                      "plain": "empty answer"}[convention]
    parsed = parse_answer(text)
    if parsed is None:
        return None, f"math-verify cannot parse the gold answer {text!r}"
    return Gold(text, parsed), None


@dataclass(frozen=True)
class Verdict:
    correct: bool
    answer: str | None  # the final answer found (None: none)
    reason: str | None = None  # why it is not correct, when it is not


def grade(gold: Gold, completion: str) -> Verdict:
    """Is the completion's final (last boxed) answer the gold one?"""
    from math_verify import verify

    answer = last_boxed(completion)
    if answer is None:
        return Verdict(False, None, "no_final_answer")
    parsed = parse_answer(answer)
    if parsed is None:
        return Verdict(False, answer, "unparsable_answer")
    main = threading.current_thread() is threading.main_thread()
    ok = verify(gold.parsed, parsed, timeout_seconds=5 if main else None)
    return Verdict(bool(ok), answer, None if ok else "wrong_answer")
