"""Rules that keep broken Magpie turns out of the data, each with its reason.

A generated turn is a row `{"text", "finish_reason"}`. Rules follow
`roost.algorithms.base.Filter`; the text rules are the ones curation uses (`text_rules`).
"""
from __future__ import annotations

from roost.algorithms import text_rules
from roost.algorithms.base import Drop, Filter
from roost.algorithms.text_rules import normalize_text as normalize  # noqa: F401  (tests, callers)


class Truncated(Filter):
    """Hit max_tokens before the end-of-turn marker: the text is cut mid-thought."""

    def __init__(self, reason: str = "truncated"):
        self.name = reason

    def check(self, row):
        return Drop(self.name, "no end-of-turn before max_tokens") if row["finish_reason"] == "length" else None


class Empty(Filter):
    def __init__(self, reason: str = "empty"):
        self.name = reason

    def check(self, row):
        return Drop(self.name) if not row["text"].strip() else None


class BrokenText(Filter):
    """Undecodable bytes (U+FFFD) or control characters: a tokenizer-level failure."""

    def __init__(self, reason: str = "broken_text"):
        self.name = reason

    def check(self, row):
        why = text_rules.broken_text(row["text"])
        return Drop(self.name, why) if why else None


class TooShort(Filter):
    name = "too_short"

    def __init__(self, min_chars: int):
        self.min_chars = min_chars

    def check(self, row):
        n = len(row["text"].strip())
        return Drop(self.name, f"{n} < {self.min_chars} chars") if n < self.min_chars else None


class NotARequest(Filter):
    """Not a request: no letters, or a lead-in ending in ':' that announces content that never
    came (Magpie's own filter). The same rule curation's `not_a_request` applies."""

    name = "not_a_request"

    def check(self, row):
        why = text_rules.not_a_request(row["text"], min_words=1)
        return Drop(self.name, why) if why else None


class TemplateLeak(Filter):
    """Template markers in the text mean the model ran past its turn."""

    name = "template_leak"

    def __init__(self, markers: tuple[str, ...]):
        self.markers = tuple(m for m in markers if m)

    def check(self, row):
        hit = next((m for m in self.markers if m in row["text"]), None)
        return Drop(self.name, f"contains {hit!r}") if hit else None


class DuplicateInstruction(Filter):
    """Exact (normalized) repeat of an instruction already accepted in this shard."""

    name = "duplicate_instruction"

    def __init__(self):
        self._seen: set[str] = set()

    def check(self, row):
        key = normalize(row["text"])
        if key in self._seen:
            return Drop(self.name)
        self._seen.add(key)
        return None

    def settings(self):
        return {}
