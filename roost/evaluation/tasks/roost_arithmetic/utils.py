"""Data and scoring of the `roost_arithmetic` lm-eval task (loaded by lm-eval from this folder)."""
from __future__ import annotations

import json
from pathlib import Path


def load_dataset(start: int = 2000, stop: int = 2100, data_file: str | None = None, **_metadata):
    """Rows [start, stop) of the shipped data/arithmetic_problems.jsonl (path resolved now, from
    roost's install) as a one-split DatasetDict. Extra keywords are lm-eval's task metadata."""
    import datasets

    from roost.tiny.math_model import SHIPPED_PROBLEMS

    path = Path(data_file) if data_file else SHIPPED_PROBLEMS
    with open(path) as f:
        rows = [json.loads(line) for line in f][int(start):int(stop)]
    if not rows:
        raise ValueError(f"{path} has no rows in [{start}, {stop})")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def gold(doc: dict) -> str:
    return doc["answer"].split("####")[-1].strip()


def process_results(doc: dict, results: list[str]) -> dict:
    """exact_match: the last \\boxed{} of the completion is the `#### N` gold, as an integer
    (what roost.tiny.math_model.final_answer compares)."""
    from roost.reasoning.answers import last_boxed

    return {"exact_match": float(_integer(last_boxed(results[0])) == int(gold(doc)))}


def _integer(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
