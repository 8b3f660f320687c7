"""Cheap row rules users expect before any model-based scoring.

Each is a `roost.algorithms.base.Filter` over a parsed row (`roost.dataset.rows.Parsed`): `check(row)`
returns None to keep or a `Drop` whose reason names the rule (`too_short_instruction`,
`repeated_ngrams`, `not_a_request`, `broken_text`, ...) and whose detail gives the measured
value. The text rules themselves live in `text_rules`, shared with Magpie.
"""
from __future__ import annotations

from roost.algorithms import text_rules
from roost.algorithms.base import Drop, Filter
from roost.dataset.rows import Parsed


def _responses(row: Parsed) -> list[tuple[str, str]]:
    if row.kind == "preference":
        return [("chosen", row.view("chosen")), ("rejected", row.view("rejected"))]
    return [("response", row.view("response"))]


class LengthFilter(Filter):
    """Bounds, in characters (after strip), on the first instruction and the answer(s)
    (last response; chosen and rejected of a preference row). None is not checked."""

    name = "length"

    def __init__(self, min_instruction_chars: int | None = 3, max_instruction_chars: int | None = 8192,
                 min_response_chars: int | None = 1, max_response_chars: int | None = 32768):
        self.min_instruction_chars = min_instruction_chars
        self.max_instruction_chars = max_instruction_chars
        self.min_response_chars = min_response_chars
        self.max_response_chars = max_response_chars

    def check(self, row: Parsed) -> Drop | None:
        checks = [("instruction", "instruction", row.view("first_instruction"),
                   self.min_instruction_chars, self.max_instruction_chars)]
        checks += [("response", what, text, self.min_response_chars, self.max_response_chars)
                   for what, text in _responses(row)]
        for rule, what, text, lo, hi in checks:
            n = len(text.strip())
            label = "" if what == rule else f"{what}: "
            if lo is not None and n < lo:
                return Drop(f"too_short_{rule}", f"{label}{n} chars < {lo}")
            if hi is not None and n > hi:
                return Drop(f"too_long_{rule}", f"{label}{n} chars > {hi}")
        return None


class RepeatedNgramFilter(Filter):
    """Text that repeats itself: the fraction of repeated word n-grams > max_fraction.
    `field`: "response" (default: degenerate looping answers), "instruction" or "both".
    Texts with fewer than `min_words` words (see text_rules.words) are not judged."""

    name = "repeated_ngrams"

    def __init__(self, n: int = 3, max_fraction: float = 0.3, field: str = "response", min_words: int = 12):
        if field not in ("response", "instruction", "both"):
            raise ValueError("field must be response, instruction or both")
        self.n = n
        self.max_fraction = max_fraction
        self.field = field
        self.min_words = min_words

    def check(self, row: Parsed) -> Drop | None:
        texts = []
        if self.field in ("instruction", "both"):
            texts.append(("instruction", row.view("first_instruction")))
        if self.field in ("response", "both"):
            texts += _responses(row)
        for what, text in texts:
            if len(text_rules.words(text)) < self.min_words:
                continue
            frac = text_rules.repeated_ngram_fraction(text, self.n)
            if frac > self.max_fraction:
                return Drop("repeated_ngrams", f"{what}: {frac:.3f} of {self.n}-grams repeated > {self.max_fraction}")
        return None


class NotARequestFilter(Filter):
    """The first instruction is not a request: empty, no letters, fewer than `min_words`
    words (counted right for languages written without spaces), or a dangling lead-in."""

    name = "not_a_request"

    def __init__(self, min_words: int = 2, reject_trailing_colon: bool = True):
        self.min_words = min_words
        self.reject_trailing_colon = reject_trailing_colon

    def check(self, row: Parsed) -> Drop | None:
        why = text_rules.not_a_request(row.view("first_instruction"), self.min_words, self.reject_trailing_colon)
        return Drop("not_a_request", why) if why else None


class BrokenTextFilter(Filter):
    """Any message with U+FFFD or a control character (a NUL byte, say): broken text."""

    name = "broken_text"

    def check(self, row: Parsed) -> Drop | None:
        answers = (row.chosen or []) + (row.rejected or []) if row.kind == "preference" else []
        for i, m in enumerate(row.prompt + answers if answers else row.messages):
            why = text_rules.broken_text(m["content"])
            if why:
                return Drop("broken_text", f"{m['role']} message {i}: {why}")
        return None
