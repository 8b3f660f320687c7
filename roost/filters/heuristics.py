"""Cheap row filters users expect before any model-based scoring.

Each is a `roost.filters.base.Filter`: `check(row)` returns None to keep or a `Drop` whose
reason names the rule (`too_short_instruction`, `repeated_ngrams`, `not_a_request`, ...) and
whose detail gives the measured value, so the rejects file says why.

Rows are chat rows (`messages`: list of {role, content}) or flat rows with `instruction` /
`response` columns; `first_instruction` / `last_response` read either.
"""
from __future__ import annotations

import re
from collections import Counter

from roost.filters.base import Drop, Filter


def first_instruction(row: dict) -> str:
    """Content of the first user message, else the `instruction` column, else ""."""
    for m in row.get("messages") or ():
        if m.get("role") == "user":
            return m.get("content") or ""
    v = row.get("instruction")
    return v if isinstance(v, str) else ""


def last_response(row: dict) -> str:
    """Content of the last assistant message, else the `response` column, else ""."""
    for m in reversed(row.get("messages") or ()):
        if m.get("role") == "assistant":
            return m.get("content") or ""
    v = row.get("response")
    return v if isinstance(v, str) else ""


class LengthFilter(Filter):
    """Bounds, in characters (after strip), on the first instruction and the last response.

    A bound of None is not checked. Reasons: too_short_instruction, too_long_instruction,
    too_short_response, too_long_response (a missing response counts as length 0)."""

    name = "length"

    def __init__(self, min_instruction_chars: int | None = 3, max_instruction_chars: int | None = 8192,
                 min_response_chars: int | None = 1, max_response_chars: int | None = 32768):
        self.min_instruction_chars = min_instruction_chars
        self.max_instruction_chars = max_instruction_chars
        self.min_response_chars = min_response_chars
        self.max_response_chars = max_response_chars

    def check(self, row: dict) -> Drop | None:
        for what, text, lo, hi in (
            ("instruction", first_instruction(row), self.min_instruction_chars, self.max_instruction_chars),
            ("response", last_response(row), self.min_response_chars, self.max_response_chars),
        ):
            n = len(text.strip())
            if lo is not None and n < lo:
                return Drop(f"too_short_{what}", f"{n} chars < {lo}")
            if hi is not None and n > hi:
                return Drop(f"too_long_{what}", f"{n} chars > {hi}")
        return None


_WORD = re.compile(r"\w+", re.UNICODE)


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Fraction of word n-grams that are repeats of an earlier n-gram (0 if fewer than 2)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 2:
        return 0.0
    counts = Counter(grams)
    repeats = sum(c - 1 for c in counts.values())
    return repeats / len(grams)


class RepeatedNgramFilter(Filter):
    """Drop rows whose text repeats itself: fraction of repeated word n-grams > max_fraction.

    `field`: "response" (default; catches degenerate looping generations), "instruction" or
    "both". Texts with fewer than `min_words` words are not judged."""

    name = "repeated_ngrams"

    def __init__(self, n: int = 3, max_fraction: float = 0.3, field: str = "response", min_words: int = 12):
        if field not in ("response", "instruction", "both"):
            raise ValueError("field must be response, instruction or both")
        self.n = n
        self.max_fraction = max_fraction
        self.field = field
        self.min_words = min_words

    def check(self, row: dict) -> Drop | None:
        texts = []
        if self.field in ("instruction", "both"):
            texts.append(("instruction", first_instruction(row)))
        if self.field in ("response", "both"):
            texts.append(("response", last_response(row)))
        for what, text in texts:
            if len(_WORD.findall(text)) < self.min_words:
                continue
            frac = repeated_ngram_fraction(text, self.n)
            if frac > self.max_fraction:
                return Drop("repeated_ngrams", f"{what}: {frac:.3f} of {self.n}-grams repeated > {self.max_fraction}")
        return None


class NotARequestFilter(Filter):
    """Drop instructions that are not a request: empty, no letters, fewer than `min_words`
    words, or a dangling lead-in ending with ':' (e.g. Magpie's 'Here is the text:')."""

    name = "not_a_request"

    def __init__(self, min_words: int = 2, reject_trailing_colon: bool = True):
        self.min_words = min_words
        self.reject_trailing_colon = reject_trailing_colon

    def check(self, row: dict) -> Drop | None:
        text = first_instruction(row).strip()
        if not text:
            return Drop("not_a_request", "empty instruction")
        if not any(ch.isalpha() for ch in text):
            return Drop("not_a_request", "no letters")
        words = len(_WORD.findall(text))
        if words < self.min_words:
            return Drop("not_a_request", f"{words} words < {self.min_words}")
        if self.reject_trailing_colon and text.endswith((":", "：")):
            return Drop("not_a_request", "ends with ':'")
        return None
