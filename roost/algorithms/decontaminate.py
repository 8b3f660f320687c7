"""Benchmark decontamination by word n-gram overlap: which benchmark item a text copies.

Words
-----
Text is normalized and split by the one set of text rules (`roost.algorithms.text_rules`): NFKC,
casefold, then \\w+ runs, with every character of a script written without spaces (Han, kana,
Thai, ...) one word. That is lm-evaluation-harness's decontamination normalization (lowercase,
punctuation stripped, whitespace split) except that Chinese or Japanese text is a sequence of
characters rather than one giant "word", so a copied Chinese problem matches like an English
one. (Apostrophes split words here, "don't" -> "don", "t"; the harness deletes them.)

Overlap
-------
An item of at least `n` words matches a text through its word n-grams (13, as the harness).
Its *overlap* with the text is the share of the item's words that lie inside an n-gram of the
item also found in the text (token coverage, as Tulu 3's decontamination measures it): 1.0 for
a verbatim copy, however much text surrounds it; one changed word in the middle of a 40-word
item leaves ~0.97; edits every few words leave 0. The share is of the *item*, not of the text,
so a long row that quotes a whole test question still scores 1.0. A text is contaminated by the
item of highest overlap when that overlap is >= the caller's minimum.

Short items: an item of fewer than `n` words (but at least `min_words`) is one gram of its own
length, as the harness does: overlap 1.0 when the text contains all its words contiguously,
else 0. An item of fewer than `min_words` words is too short for containment to mean copying
("What is 2 + 2?"): it matches only a text whose whole word sequence equals it. Items with no
words are ignored. The counts of each kind are in `settings`.

Hashing
-------
Each distinct word is hashed once (blake2b, 8 bytes, stable across processes and machines);
an n-gram hash is a polynomial of its word hashes mod 2^64 with a final splitmix64 mix, computed
for a whole batch of texts at once in numpy (n vector operations per batch). The benchmark's
(gram hash, item, position) triples are one array sorted by hash, fronted by a byte map of the
hashes' low bits (16 bytes per gram, rounded up to a power of two) that turns away most of a
text's grams before the `searchsorted`. A text gram collides with one of the K benchmark grams
with probability K / 2^64 (4e-14 for a 10k-item set), and a collision adds one n-gram's words
to an item's overlap, not a match. Memory: 16 bytes per benchmark gram plus the byte map,
~40 bytes in all (`nbytes`: 26 MB for 10k items of ~75 words).
"""
from __future__ import annotations

import hashlib
import unicodedata
from itertools import chain
from typing import Sequence

import numpy as np

from roost.algorithms.text_rules import words

_P = np.uint64(0x9E3779B97F4A7C15)  # odd, so multiplication by it is invertible mod 2^64
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def tokens(text: str | None) -> list[str]:
    """The words n-grams are made of: `words(normalize_text(text))`, without collapsing the
    whitespace `words` skips anyway (that regex pass was 45% of the time)."""
    return words(unicodedata.normalize("NFKC", text).casefold()) if text else []


class _WordHashes:
    """blake2b-64 of words, memoised; the memo is emptied when it passes `max_cache` words."""

    def __init__(self, max_cache: int = 1 << 18):
        self.cache: dict[str, bytes] = {}
        self.max_cache = max_cache

    def __call__(self, toks: list[list[str]]) -> np.ndarray:
        cache = self.cache
        if len(cache) > self.max_cache:
            cache.clear()
        flat = list(chain.from_iterable(toks))
        hashes = list(map(cache.get, flat))  # one C loop; misses are None
        if None in hashes:
            for k, h in enumerate(hashes):
                if h is None:
                    w = flat[k]
                    h = cache.get(w)
                    if h is None:
                        h = cache[w] = hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest()
                    hashes[k] = h
        return np.frombuffer(b"".join(hashes), dtype=np.uint64) if hashes else np.zeros(0, np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _grams(t: np.ndarray, lens: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes of every m-gram that lies inside one text of a concatenation: (hash, text, position).

    `t` holds the word hashes of the texts back to back, `lens` their word counts."""
    total = len(t)
    k = total - m + 1
    if k <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    with np.errstate(over="ignore"):
        acc = t[:k].copy()
        for j in range(1, m):
            acc = acc * _P + t[j:j + k]
        acc = _mix(acc)
    text = np.repeat(np.arange(len(lens), dtype=np.int64), lens)[:k]
    starts = np.cumsum(lens) - lens
    pos = np.arange(k, dtype=np.int64) - starts[text]
    ok = pos <= lens[text] - m
    return acc[ok], text[ok], pos[ok]


class _Table:
    """Sorted gram hashes with a byte map of their low bits in front: most grams of a text are
    in no item, and the map turns those away with one gather instead of a binary search."""

    def __init__(self, keys: np.ndarray):
        self.keys = keys
        bits = int(np.clip(np.ceil(np.log2(max(1, 16 * len(keys)))), 16, 27))
        self.mask = np.uint64((1 << bits) - 1)
        self.present = np.zeros(1 << bits, bool)
        self.present[(keys & self.mask).astype(np.int64)] = True

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.present.nbytes

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each hash, every index into `keys` holding it: (which hash, key index)."""
        keys = self.keys
        cand = np.flatnonzero(self.present[(hashes & self.mask).astype(np.int64)])
        if not len(cand) or not len(keys):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        h = hashes[cand]
        lo = np.searchsorted(keys, h, side="left")
        hit = keys[np.minimum(lo, len(keys) - 1)] == h
        cand, h, lo = cand[hit], h[hit], lo[hit]
        count = np.searchsorted(keys, h, side="right") - lo
        which = np.repeat(cand, count)
        first = np.repeat(lo, count)
        offset = np.arange(len(which)) - np.repeat(np.cumsum(count) - count, count)
        return which, first + offset


class NgramIndex:
    """The n-grams of a set of benchmark items; `match(texts)` finds each text's best item.

    See the module doc for words, overlap and short items."""

    def __init__(self, items: Sequence[str | None], n: int = 13, min_words: int = 8, chunk: int = 4096):
        if n < 1 or min_words < 1:
            raise ValueError("n and min_words must be >= 1")
        self.n = n
        self.min_words = min(min_words, n)
        self._hash = _WordHashes()
        items = list(items)
        # items by chunks, so that only one chunk's words are held as Python strings at a time:
        # items of >= n words give every (gram, item, position); items of min_words..n-1 words
        # one gram each, the whole item, by length; shorter ones their word sequence
        lens_parts, long_parts, short_parts = [], [], {}
        self._tiny: dict[str, int] = {}
        for s in range(0, len(items), chunk):
            toks = [tokens(t) for t in items[s:s + chunk]]
            lens = np.fromiter((len(ws) for ws in toks), dtype=np.int64, count=len(toks))
            t = self._hash(toks)
            h, item, pos = _grams(t, lens, n)
            long_parts.append((h, (item + s).astype(np.int32), pos.astype(np.int32)))
            for m in np.unique(lens[(lens >= self.min_words) & (lens < n)]).tolist():
                hm, im, pm = _grams(t, lens, m)
                sel = (lens[im] == m) & (pm == 0)
                short_parts.setdefault(m, []).append((hm[sel], im[sel] + s))
            for i in np.flatnonzero((lens > 0) & (lens < self.min_words)).tolist():
                self._tiny.setdefault(" ".join(toks[i]), s + i)
            lens_parts.append(lens)
        lens = self.item_words = np.concatenate(lens_parts) if lens_parts else np.zeros(0, np.int64)
        self.n_items = len(lens)
        h = np.concatenate([p[0] for p in long_parts]) if long_parts else np.zeros(0, np.uint64)
        order = np.argsort(h, kind="stable")
        self._grams = _Table(h[order])
        del h
        self._item = np.concatenate([p[1] for p in long_parts])[order] if long_parts else np.zeros(0, np.int32)
        self._pos = np.concatenate([p[2] for p in long_parts])[order] if long_parts else np.zeros(0, np.int32)
        del long_parts, order
        self._short: dict[int, tuple[_Table, np.ndarray]] = {}
        for m, parts in short_parts.items():
            hm, im = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            o = np.argsort(hm, kind="stable")
            self._short[m] = (_Table(hm[o]), im[o])
        long = lens >= n
        short = (lens >= self.min_words) & (lens < n)
        self.settings = {
            "n": n, "min_words": self.min_words,
            "words": "NFKC, casefold, \\w+ runs; one word per character of scripts written without spaces",
            "overlap": "share of the item's words inside an n-gram also in the text",
            "items": self.n_items, "items_ngram": int(long.sum()), "items_whole": int(short.sum()),
            "items_equal_only": int(((lens > 0) & (lens < self.min_words)).sum()),
            "items_empty": int((lens == 0).sum()), "grams": int(len(self._grams.keys)),
            "hash": "blake2b-64 words, polynomial mod 2^64 + splitmix64 n-grams",
        }

    @property
    def nbytes(self) -> int:
        """Memory held by the index's arrays (word-hash cache and short-item tables aside)."""
        return self._grams.nbytes + self._item.nbytes + self._pos.nbytes

    def match(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """(overlap, item) of each text's best item: overlap in [0, 1] (0 = nothing shared),
        item -1 when no item shares anything. Ties: the lowest item index."""
        toks = [tokens(t) for t in texts]
        lens = np.fromiter((len(ws) for ws in toks), dtype=np.int64, count=len(toks))
        t = self._hash(toks)
        rows, items, shares = [], [], []

        if len(self._grams.keys):
            h, text, pos = _grams(t, lens, self.n)
            which, at = self._grams.lookup(h)
            if len(which):
                r, i, p = text[which], self._item[at].astype(np.int64), self._pos[at].astype(np.int64)
                o = np.lexsort((p, i, r))
                r, i, p = r[o], i[o], p[o]
                new = np.ones(len(r), bool)
                new[1:] = (r[1:] != r[:-1]) | (i[1:] != i[:-1]) | (p[1:] != p[:-1])
                r, i, p = r[new], i[new], p[new]
                # words covered: union of [p, p + n) per (text, item); starts are sorted
                same = (r[1:] == r[:-1]) & (i[1:] == i[:-1])
                covered = np.full(len(r), self.n, dtype=np.int64)
                covered[:-1][same] = np.minimum(self.n, p[1:] - p[:-1])[same]
                group_start = np.ones(len(r), bool)
                group_start[1:] = ~same
                g = np.cumsum(group_start) - 1
                words_covered = np.bincount(g, weights=covered)
                gi = i[group_start]
                rows.append(r[group_start])
                items.append(gi)
                shares.append(words_covered / self.item_words[gi])
        for m, (table, item_of) in self._short.items():
            h, text, _ = _grams(t, lens, m)
            which, at = table.lookup(h)
            if len(which):
                rows.append(text[which])
                items.append(item_of[at].astype(np.int64))
                shares.append(np.ones(len(which)))
        if self._tiny:
            eq = [(j, self._tiny.get(" ".join(ws), -1)) for j, ws in enumerate(toks) if 0 < len(ws) < self.min_words]
            eq = [(j, i) for j, i in eq if i >= 0]
            if eq:
                rows.append(np.array([j for j, _ in eq], np.int64))
                items.append(np.array([i for _, i in eq], np.int64))
                shares.append(np.ones(len(eq)))

        best_share = np.zeros(len(toks))
        best_item = np.full(len(toks), -1, np.int64)
        if rows:
            r, i, s = np.concatenate(rows), np.concatenate(items), np.concatenate(shares)
            o = np.lexsort((i, -s, r))
            r, i, s = r[o], i[o], s[o]
            first = np.ones(len(r), bool)
            first[1:] = r[1:] != r[:-1]
            best_share[r[first]] = np.minimum(s[first], 1.0)
            best_item[r[first]] = i[first]
        return best_share, best_item
