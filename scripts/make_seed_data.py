"""Regenerate data/seed_conversations.jsonl from the docstrings of Python's standard library.

The file is committed; this script documents where it came from. Each row is a real
question about a stdlib function paired with the first paragraph of its docstring, in the
conversational `messages` form. Tests and the demo use it to train the tiny model's tokenizer,
to teach the tiny model the turn structure of its chat template, and as seed data.
"""
from __future__ import annotations

import importlib
import inspect
import json
import random
from pathlib import Path

MODULES = [
    "textwrap", "json", "os.path", "shutil", "string", "re", "math", "statistics", "itertools",
    "functools", "collections", "heapq", "bisect", "random", "datetime", "calendar", "pathlib",
    "csv", "difflib", "fractions", "decimal", "operator", "copy", "pprint", "base64", "hashlib",
    "zlib", "gzip", "tempfile", "glob", "fnmatch", "unicodedata", "html", "urllib.parse", "uuid",
    "secrets", "time", "logging", "argparse", "subprocess", "threading", "queue", "contextlib",
    "dataclasses", "enum", "typing", "inspect", "ast", "tokenize", "sqlite3", "email.utils",
]
QUESTIONS = [
    "What does `{name}` do in Python?",
    "Explain the purpose of `{name}`.",
    "How would I use `{name}` from the standard library?",
    "Can you describe what `{name}` returns?",
    "Write a short explanation of `{name}` for a beginner.",
    "When should I reach for `{name}`?",
]


def first_paragraph(doc: str) -> str:
    para = inspect.cleandoc(doc).split("\n\n")[0]
    return " ".join(para.split())


def main() -> None:
    rng = random.Random(0)
    rows = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr)
            if not callable(obj) or not isinstance(getattr(obj, "__doc__", None), str):
                continue
            answer = first_paragraph(obj.__doc__)
            if len(answer) < 40 or len(answer) > 600:
                continue
            name = f"{module_name}.{attr}"
            question = rng.choice(QUESTIONS).format(name=name)
            rows.append({"messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": answer}]})
    rng.shuffle(rows)
    out = Path(__file__).resolve().parents[1] / "data" / "seed_conversations.jsonl"
    with out.open("w") as f:
        for row in rows[:800]:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {min(len(rows), 800)} rows to {out}")


if __name__ == "__main__":
    main()
