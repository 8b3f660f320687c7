"""Which languages rows are written in, from their text: a small, dependency-free detector by
writing system, for the dataset card's `language` (ISO 639-1 codes).

Each text is given the language of the script most of its letters are in: Han with kana is
Japanese (`ja`), Han without kana Chinese (`zh`), Hangul Korean (`ko`); Cyrillic is Russian
(`ru`), or Ukrainian (`uk`) with Ukrainian letters (ї є ґ і), or Serbian (`sr`) with Serbian
ones; Arabic script is Arabic (`ar`), or Persian (`fa`) / Urdu (`ur`) with their letters;
Greek, Hebrew, Thai, Devanagari (`hi`), Bengali, Tamil, Georgian and Armenian are their own.
A Han, kana or Hangul character counts as CJK_WEIGHT letters (one carries about a word, a
Latin letter a fifth of one), so a Chinese question with an English code answer stays Chinese.
Latin script is split by common short words (English, French, German, Spanish, Portuguese,
Italian, Dutch; two at least); a Latin text without them (code, names, noise) takes the most common
Latin language of the sample, else English.

`detect(texts)` returns the languages of at least `threshold` (default 10%) of the texts that
have letters, most common first.
"""
from __future__ import annotations

import bisect
import re
from collections import Counter
from typing import Iterable

CJK_WEIGHT = 3
THRESHOLD = 0.1
MAX_CHARS = 2000  # of each text: enough to tell its script

_RANGES = [  # (first, last, script)
    (0x0041, 0x005A, "latin"), (0x0061, 0x007A, "latin"), (0x00C0, 0x00D6, "latin"), (0x00D8, 0x00F6, "latin"),
    (0x00F8, 0x024F, "latin"), (0x1E00, 0x1EFF, "latin"),
    (0x0370, 0x03FF, "greek"), (0x1F00, 0x1FFF, "greek"),
    (0x0400, 0x04FF, "cyrillic"), (0x0500, 0x052F, "cyrillic"),
    (0x0530, 0x058F, "armenian"), (0x0590, 0x05FF, "hebrew"),
    (0x0600, 0x06FF, "arabic"), (0x0750, 0x077F, "arabic"), (0xFB50, 0xFDFF, "arabic"), (0xFE70, 0xFEFF, "arabic"),
    (0x0900, 0x097F, "devanagari"), (0x0980, 0x09FF, "bengali"), (0x0B80, 0x0BFF, "tamil"),
    (0x0E00, 0x0E7F, "thai"), (0x10A0, 0x10FF, "georgian"),
    (0x1100, 0x11FF, "hangul"), (0x3130, 0x318F, "hangul"), (0xAC00, 0xD7AF, "hangul"),
    (0x3040, 0x309F, "kana"), (0x30A0, 0x30FF, "kana"), (0x31F0, 0x31FF, "kana"), (0xFF66, 0xFF9D, "kana"),
    (0x3400, 0x4DBF, "han"), (0x4E00, 0x9FFF, "han"), (0xF900, 0xFAFF, "han"), (0x20000, 0x2FFFF, "han"),
]
_SCRIPT_LANGUAGE = {"greek": "el", "armenian": "hy", "hebrew": "he", "devanagari": "hi", "bengali": "bn",
                    "tamil": "ta", "thai": "th", "georgian": "ka", "hangul": "ko"}
_CJK = {"han", "kana", "hangul"}

_STOPWORDS = {
    "en": "the and is of to in that it you for with are this what how be on can do your not have".split(),
    "fr": "le la les des est et un une du que pour dans pas vous qui sur au avec ce il je ne".split(),
    "de": "der die das und ist nicht ein eine zu mit den von sie ich es wie auf für dem auch".split(),
    "es": "el la los las de que y en un una es por para con no se lo del cómo qué".split(),
    "pt": "o a os as de que e do da em um uma é para com não se no na como".split(),
    "it": "il lo la di che e è un una per non sono del della con come si nel gli anche".split(),
    "nl": "de het een en van is dat niet ik je op te zijn met voor wat hoe er maar ook".split(),
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


_RANGES.sort()
_STARTS = [first for first, _, _ in _RANGES]


def script_of(ch: str) -> str | None:
    """The writing system of one character (None: not a letter of a script listed here)."""
    code = ord(ch)
    if code < 0x80:
        return "latin" if ch.isalpha() else None
    i = bisect.bisect_right(_STARTS, code) - 1
    if i >= 0 and code <= _RANGES[i][1]:
        return _RANGES[i][2]
    return None


def language_of(text: str) -> str | None:
    """One text's language by its script (module doc); "latin" for Latin script, told apart by
    `detect`; None for a text without letters."""
    counts: Counter = Counter()
    for ch in text[:MAX_CHARS]:
        script = script_of(ch)
        if script is not None:
            counts[script] += 1
    if not counts:
        return None
    weighted = Counter({s: n * (CJK_WEIGHT if s in _CJK else 1) for s, n in counts.items()})
    weighted["chinese-japanese"] = weighted.pop("han", 0) + weighted.pop("kana", 0)
    script = max(sorted(weighted), key=lambda s: weighted[s])
    if script == "chinese-japanese":
        return "ja" if counts["kana"] >= 0.1 * (counts["han"] + counts["kana"]) else "zh"
    if script == "cyrillic":
        return _cyrillic(text[:MAX_CHARS])
    if script == "arabic":
        return _arabic(text[:MAX_CHARS])
    if script == "latin":
        return _latin(text[:MAX_CHARS]) or "latin"
    return _SCRIPT_LANGUAGE.get(script)


def detect(texts: Iterable[str], threshold: float = THRESHOLD) -> list[str]:
    """ISO 639-1 codes of the languages of at least `threshold` of the texts with letters,
    most common first (ties by code)."""
    found: Counter = Counter()
    for text in texts:
        if isinstance(text, str) and text:
            lang = language_of(text)
            if lang is not None:
                found[lang] += 1
    unsure = found.pop("latin", 0)
    if unsure:  # Latin text without telling words: the sample's Latin language, else English
        latin = [lang for lang, _ in found.most_common() if lang in _STOPWORDS]
        found[latin[0] if latin else "en"] += unsure
    total = sum(found.values())
    if not total:
        return []
    ranked = sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))
    return [lang for lang, n in ranked if n / total >= threshold]


def _latin(text: str) -> str | None:
    words = Counter(w.lower() for w in _WORD.findall(text))
    scores = {lang: sum(words[w] for w in stop) for lang, stop in _STOPWORDS.items()}
    best = max(scores.values())
    if best < 2:  # one short word ("a", "y", "e") says nothing
        return None
    tied = sorted(lang for lang, s in scores.items() if s == best)
    return "en" if "en" in tied else tied[0]


def _cyrillic(text: str) -> str:
    if any(c in text for c in "ђћџљњјЂЋЏЉЊЈ"):
        return "sr"
    if any(c in text for c in "їєґЇЄҐіІ"):
        return "uk"
    return "ru"


def _arabic(text: str) -> str:
    if any(c in text for c in "ےٹڈڑں"):
        return "ur"
    if any(c in text for c in "پچژگ") or "ی" in text:
        return "fa"
    return "ar"
