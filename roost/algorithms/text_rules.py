"""The one set of text rules, used by Magpie (generated turns) and by curation (input rows).

Words are counted so that languages written without spaces count too: every character of a
script that does not separate words with spaces (Han, kana, Thai, Lao, Khmer, Myanmar,
Tibetan) is one word, and everything else is split into \\w+ runs. So "用一句话解释量子纠缠。"
is 10 words, not 1, and n-gram rules see its characters instead of one giant token.
"""
from __future__ import annotations

import re
import unicodedata

# Scripts written without spaces between words: one character ~ one word.
_NO_SPACE = (
    "\u0e00-\u0e7f"  # Thai
    "\u0e80-\u0eff"  # Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u309f"  # Hiragana
    "\u30a0-\u30ff"  # Katakana
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
)
_WORD = re.compile(rf"[{_NO_SPACE}]|[^\W{_NO_SPACE}]+", re.UNICODE)
_WS = re.compile(r"\s+", re.UNICODE)
_LEAD_IN_ENDINGS = (":", "：")


def words(text: str) -> list[str]:
    """Word tokens: \\w+ runs, and single characters of scripts written without spaces."""
    return _WORD.findall(text)


def normalize_text(text: str | None) -> str:
    """NFKC, casefold, runs of whitespace to one space, stripped: the key of exact dedup."""
    if not text:
        return ""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def broken_text(text: str) -> str | None:
    """Why the text is broken at the byte/tokenizer level (U+FFFD, control characters), or None."""
    if "\ufffd" in text:
        return "contains U+FFFD (invalid UTF-8)"
    bad = next((c for c in text if unicodedata.category(c) == "Cc" and c not in "\n\t\r"), None)
    return f"control character {bad!r}" if bad else None


def not_a_request(text: str, min_words: int = 1, reject_lead_in: bool = True) -> str | None:
    """Why an instruction is not a request (empty, no letters, too few words, or a dangling
    lead-in such as Magpie's 'Here is the text:'), or None."""
    text = text.strip()
    if not text:
        return "empty instruction"
    if not any(ch.isalpha() for ch in text):
        return "no letters"
    n = len(words(text))
    if n < min_words:
        return f"{n} words < {min_words}"
    if reject_lead_in and text.endswith(_LEAD_IN_ENDINGS):
        return "ends with ':'"
    return None


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Fraction of word n-grams that repeat an earlier n-gram (0 if fewer than 2 n-grams)."""
    tokens = [w.lower() for w in words(text)]
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)
