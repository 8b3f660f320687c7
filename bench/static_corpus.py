"""Real text for the static-embedding benches and tests, built offline from what is on disk.

Sources (all human-written English, no model output):
  * docstrings of the Python standard library (every module, class and function docstring,
    split into paragraphs, prose only);
  * the long descriptions (README text in `*.dist-info/METADATA`) of the installed packages,
    split into paragraphs, prose only;
  * the user prompts and answers of data/seed_conversations.jsonl (template questions about
    stdlib objects: many near-twins that differ in one name, a hard case for precision);
  * the word problems of data/arithmetic_problems.jsonl (templated: same story, other numbers
    and names, like synthetic instructions).
Exact duplicates are dropped (exact dedup runs before semantic dedup in roost). Then
`plant_near_duplicates` adds edited copies of some texts: 1-3 edits each, drawn from a
synonym swap, an adjacent-word swap, a dropped or added filler word, a typo, a reordering of
two sentences, a case or punctuation change, a polite prefix. Those are the kinds of
differences between near-duplicate prompts in synthetic data.
"""
from __future__ import annotations

import ast
import email
import glob
import json
import random
import re
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SYNONYMS = {
    "returns": "gives back", "return": "give back", "use": "employ", "uses": "employs", "used": "employed",
    "function": "routine", "method": "function", "provides": "offers", "provide": "offer", "allows": "lets",
    "simple": "easy", "fast": "quick", "quickly": "rapidly", "large": "big", "small": "little",
    "library": "package", "package": "library", "create": "make", "creates": "makes", "created": "made",
    "show": "display", "shows": "displays", "explain": "describe", "describe": "explain", "example": "sample",
    "value": "result", "values": "results", "object": "instance", "objects": "instances", "file": "document",
    "error": "failure", "errors": "failures", "start": "begin", "starts": "begins", "end": "finish",
    "get": "obtain", "gets": "obtains", "set": "assign", "check": "verify", "checks": "verifies",
    "number": "count", "list": "sequence", "string": "text", "change": "modify", "changes": "modifies",
    "support": "handle", "supports": "handles", "provided": "given", "need": "require",
    "needs": "requires", "must": "has to", "should": "ought to", "can": "may", "many": "numerous",
    "buys": "purchases", "finds": "discovers", "gives": "hands", "now": "at this point", "friend": "pal",
}
FILLERS = ("also", "just", "really", "actually", "basically", "simply", "then", "now")
PREFIXES = ("Please ", "Quick question: ", "Hey, ", "I need help: ", "Can you tell me: ")


def _prose(p: str, lo: int = 40, hi: int = 800) -> bool:
    return lo <= len(p) <= hi and sum(c.isalpha() or c == " " for c in p) / len(p) > 0.85


def stdlib_docstrings() -> list[str]:
    std = sysconfig.get_paths()["stdlib"]
    out = []
    for f in sorted(glob.glob(std + "/**/*.py", recursive=True)):
        if "/test" in f or "site-packages" in f or "idlelib" in f:
            continue
        try:
            tree = ast.parse(Path(f).read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                for p in re.split(r"\n\s*\n", doc or ""):
                    p = " ".join(p.split())
                    if _prose(p) and not p.startswith((">>>", "..", "-", "*", ":")):
                        out.append(p)
    return out


def package_descriptions() -> list[str]:
    site = sysconfig.get_paths()["purelib"]
    out = []
    for f in sorted(glob.glob(site + "/*.dist-info/METADATA")):
        body = email.message_from_string(Path(f).read_text(encoding="utf-8", errors="replace")).get_payload()
        if not isinstance(body, str):
            continue
        body = re.sub(r"```.*?```", "", body, flags=re.S)
        for p in re.split(r"\n\s*\n", body):
            p = " ".join(p.split())
            if _prose(p, 60) and not p.startswith(("|", ">>>", "$", "..", "[!", "<")):
                out.append(p)
    return out


def repo_texts(arithmetic: int = 1000) -> list[str]:
    out = []
    for line in (REPO / "data" / "seed_conversations.jsonl").read_text().splitlines():
        out += [m["content"] for m in json.loads(line)["messages"]]
    lines = (REPO / "data" / "arithmetic_problems.jsonl").read_text().splitlines()[:arithmetic]
    out += [json.loads(line)["question"] for line in lines]
    return out


def real_texts(cache: Path | None = REPO / ".cache" / "bench" / "static_corpus.json") -> list[str]:
    """The unique real texts, in a fixed order (cached: parsing the stdlib takes a while)."""
    if cache is not None and cache.exists():
        return json.loads(cache.read_text())
    texts = list(dict.fromkeys(repo_texts() + stdlib_docstrings() + package_descriptions()))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(texts))
    return texts


def _edit(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    op = rng.choice(["synonym", "synonym", "swap", "drop", "filler", "typo", "reorder", "case", "punct", "prefix"])
    if op == "synonym":
        idx = [i for i, w in enumerate(words) if w.lower().strip(".,;:?!") in SYNONYMS]
        if idx:
            i = rng.choice(idx)
            core = words[i].strip(".,;:?!")
            rep = SYNONYMS[core.lower()]
            if core[:1].isupper():
                rep = rep[:1].upper() + rep[1:]
            words[i] = words[i].replace(core, rep)
            return " ".join(words)
        op = "swap"
    if op == "swap" and len(words) > 3:
        i = rng.randrange(1, len(words) - 2)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif op == "drop" and len(words) > 6:
        del words[rng.randrange(1, len(words) - 1)]
    elif op == "filler":
        words.insert(rng.randrange(1, len(words)), rng.choice(FILLERS))
    elif op == "typo":
        i = rng.randrange(len(words))
        w = words[i]
        if len(w) > 3:
            j = rng.randrange(len(w) - 1)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    elif op == "reorder":
        sents = re.split(r"(?<=[.!?]) ", text)
        if len(sents) > 1:
            i = rng.randrange(len(sents) - 1)
            sents[i], sents[i + 1] = sents[i + 1], sents[i]
            return " ".join(sents)
    elif op == "case":
        return text.lower() if rng.random() < 0.5 else text[:1].lower() + text[1:]
    elif op == "punct":
        return text.rstrip(".?!") if text[-1:] in ".?!" else text + "."
    elif op == "prefix":
        return rng.choice(PREFIXES) + text[:1].lower() + text[1:]
    return " ".join(words)


def near_duplicate(text: str, rng: random.Random) -> str:
    """An edited copy of `text` (1-3 edits), different from it."""
    for _ in range(10):
        out = text
        for _ in range(rng.choice([1, 1, 2, 2, 3])):
            out = _edit(out, rng)
        if out != text:
            return out
    return text + " Thanks."


def plant_near_duplicates(texts: list[str], frac: float = 0.12, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """texts + edited copies of a random `frac` of them, shuffled; and the planted (source,
    copy) index pairs in the returned list."""
    rng = random.Random(seed)
    src = rng.sample(range(len(texts)), int(len(texts) * frac))
    copies = [near_duplicate(texts[i], rng) for i in src]
    allt = texts + copies
    order = list(range(len(allt)))
    rng.shuffle(order)
    pos = {old: new for new, old in enumerate(order)}
    out, planted = [], []
    for old in order:
        out.append(allt[old])
    for k, i in enumerate(src):
        planted.append((pos[i], pos[len(texts) + k]))
    # a copy may equal another text exactly: keep texts unique (exact dedup runs first)
    uniq, keep_idx = {}, []
    for i, t in enumerate(out):
        if t not in uniq:
            uniq[t] = len(keep_idx)
            keep_idx.append(i)
    remap = {old: uniq[out[old]] for old in range(len(out))}
    planted = [(remap[a], remap[b]) for a, b in planted if remap[a] != remap[b]]
    return [out[i] for i in keep_idx], planted
