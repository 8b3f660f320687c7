"""Running an evaluation: problems in parts, each part's outcomes written as it finishes,
then the summary.

Layout of OUT: `outcomes/part-<i>.parquet` (one row per problem: every answer, its grade,
its tokens; roost.evaluation.verifiable.OUTCOMES), `unusable.parquet` (rows without a
usable question or gold answer, with the reason), and `summary.json`, written last: a summary
on disk is always a whole one. A killed evaluation re-run into the same OUT keeps the
finished parts (each carries the recipe's fingerprint) and evaluates the rest; the seeds of a
part depend on the recipe's seed and the part's index only, so the outcomes are the same as an
uninterrupted run's.

A recipe with `open_ended:` also (or only: `problems` is optional then) measures the win rate
against a reference on open-ended prompts, under OUT/open_ended/ (roost.evaluation.winrate);
the summary gets an `open_ended` section.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from roost.errors import InputError, OutputMismatch
from roost.evaluation.config import EvalRecipe
from roost.evaluation.verifiable import OUTCOMES, majority, metric_names, summarize
from roost.reasoning.problems import BadProblem, Problem, ProblemRows
from roost.runtime import stopping

SUMMARY = "summary.json"


def _part(out: Path, i: int) -> Path:
    return out / "outcomes" / f"part-{i:05d}.parquet"


def run_eval(recipe: EvalRecipe, out: str | Path, *, say: Callable[[str], None] = lambda s: None) -> dict:
    from roost import __version__
    from roost.dataset.writer import _with_meta, atomic_write_bytes, atomic_write_table, read_roost_metadata
    from roost.engines import get_engine

    out = Path(out)
    key = recipe.fingerprint()
    check_resumable(recipe, out)
    if recipe.open_ended is not None:
        from roost.evaluation import winrate

        winrate.check_resumable(recipe, out)
    if recipe.problems is None:  # open-ended prompts only
        return _run_open_ended_only(recipe, out, key, say)
    source = ProblemRows(recipe.problems)
    start = recipe.problems.start
    stop = min(recipe.problems.stop or source.total, source.total)
    if start >= stop:
        raise InputError(f"{recipe.problems.path}: rows [{start}, {stop}) are empty (it has {source.total} rows)")
    bounds = [(lo, min(lo + recipe.chunk_size, stop)) for lo in range(start, stop, recipe.chunk_size)]
    engine, t0, bad = None, time.perf_counter(), []
    stopping.track("parts", lambda: sum(_part(out, i).exists() for i in range(len(bounds))), len(bounds))
    for i, (lo, hi) in enumerate(bounds):
        items = list(source.read(lo, hi))
        bad += [b for b in items if isinstance(b, BadProblem)]
        path = _part(out, i)
        if path.exists() and read_roost_metadata(path).get("fingerprint") == key:
            continue
        problems = [p for p in items if isinstance(p, Problem)]
        if problems:
            engine = engine or get_engine(recipe.model)
        rows = evaluate_problems(engine, recipe, problems, part=i)
        table = _with_meta(pa.Table.from_pylist(rows, schema=OUTCOMES), {"fingerprint": key, "rows": [lo, hi]})
        atomic_write_table(path, table)
        if problems:
            say(f"eval: part {i + 1}/{len(bounds)} ({len(problems)} problems)")
    rows = [r for i in range(len(bounds)) for r in pq.read_table(_part(out, i)).to_pylist()]
    if not rows:
        reasons = Counter(b.reason for b in bad)
        raise InputError(f"{recipe.problems.path}: none of rows [{start}, {stop}) is a usable problem "
                         f"({', '.join(f'{n} {r}' for r, n in reasons.items())})")
    if bad:
        atomic_write_table(out / "unusable.parquet", pa.Table.from_pylist(
            [{"id": b.id, "reason": b.reason, "detail": b.detail, "row": json.dumps(b.row, default=str)} for b in bad]))
    if recipe.open_ended is not None:
        section, oe_engine = winrate.run_open_ended(recipe, out, say=say)
        engine = engine or oe_engine
    summary = {
        "roost_version": __version__, "kind": "eval", "recipe_hash": key, "recipe": _recipe_record(recipe),
        "model": recipe.model.model, "engine": engine.describe() if engine else None,
        "set": {"path": recipe.problems.path, "rows": [start, stop], "convention": source.convention,
                "question_column": source.question, "answer_column": source.answer},
        **summarize(rows, samples=recipe.samples, ks=recipe.ks),
        "unusable": {"count": len(bad), "by_reason": dict(Counter(b.reason for b in bad)),
                     "ids": [b.id for b in bad[:50]]},
        "available_metrics": metric_names(recipe.samples, recipe.ks, recipe.greedy),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if recipe.open_ended is not None:
        summary = {**{k: v for k, v in summary.items() if k != "seconds"}, "open_ended": section,
                   "seconds": round(time.perf_counter() - t0, 1)}
    if engine is None:  # every part was done before: keep the engine record of the run that made them
        old = read_summary(out)
        summary["engine"] = old.get("engine") if old else None
    atomic_write_bytes(out / SUMMARY, json.dumps(summary, indent=2, default=str).encode())
    return summary


def _recipe_record(recipe: EvalRecipe) -> dict:
    """The recipe as the summary records it (no `open_ended: null` in a verifiable-only one)."""
    return recipe.model_dump(mode="json", exclude={"open_ended"} if recipe.open_ended is None else None)


def _run_open_ended_only(recipe: EvalRecipe, out: Path, key: str, say: Callable[[str], None]) -> dict:
    """An eval recipe without `problems`: the open-ended half alone (roost.evaluation.winrate)."""
    from roost import __version__
    from roost.dataset.writer import atomic_write_bytes
    from roost.evaluation import winrate

    t0 = time.perf_counter()
    section, engine = winrate.run_open_ended(recipe, out, say=say)
    old = read_summary(out) if engine is None else None
    summary = {
        "roost_version": __version__, "kind": "eval", "recipe_hash": key, "recipe": _recipe_record(recipe),
        "model": recipe.model.model, "engine": engine.describe() if engine else (old or {}).get("engine"),
        "open_ended": section, "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_bytes(out / SUMMARY, json.dumps(summary, indent=2, default=str).encode())
    return summary


def read_summary(out: str | Path) -> dict | None:
    path = Path(out) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def check_resumable(recipe: EvalRecipe, out: Path) -> None:
    from roost.dataset.writer import read_roost_metadata

    key = recipe.fingerprint()
    old = read_summary(out)
    parts = sorted((out / "outcomes").glob("part-*.parquet")) if (out / "outcomes").is_dir() else []
    theirs = old["recipe_hash"] if old else (read_roost_metadata(parts[0]).get("fingerprint") if parts else None)
    if theirs is not None and theirs != key:
        raise OutputMismatch(f"{out} holds an evaluation with other settings (hash {theirs}, this one {key}); "
                             "choose another --out or delete it")


def problem_prompt(tokenizer, recipe: EvalRecipe, problem: Problem) -> str:
    from roost.engines.base import render_chat
    from roost.reasoning.prompting import user_turn

    chat = render_chat(tokenizer, [user_turn(problem.question, recipe.format.instruction)], add_generation_prompt=True)
    return chat + recipe.format.assistant_prefix


def evaluate_problems(engine, recipe: EvalRecipe, problems: list[Problem], *, part: int) -> list[dict]:
    """One outcome row per problem: greedy and sampled solutions, graded."""
    from roost.engines.base import Sampling, derive_seed
    from roost.reasoning.answers import grade
    from roost.reasoning.steps import split_steps

    if not problems:
        return []
    prompts = [problem_prompt(engine.tokenizer, recipe, p) for p in problems]
    greedy = sampled = [None] * len(problems)
    if recipe.greedy:
        limit = recipe.max_tokens or recipe.sampling.max_tokens
        greedy = engine.generate(prompts, Sampling(max_tokens=limit, temperature=0.0),
                                 seed=derive_seed(recipe.seed, "eval", "greedy", part), progress="eval greedy")
    if recipe.samples:
        sampled = engine.generate(prompts, recipe.sampling.to_engine(n=recipe.samples),
                                  seed=derive_seed(recipe.seed, "eval", "samples", part), progress="eval samples")
    rows = []
    for problem, g, s in zip(problems, greedy, sampled):
        steps = split_steps(problem.reference, recipe.format.header)
        row = {"id": problem.id, "question": problem.question, "gold": problem.gold.text,
               "steps": len(steps) or None,
               "greedy_text": None, "greedy_answer": None, "greedy_correct": None, "greedy_tokens": None,
               "greedy_truncated": None, "sample_texts": [], "sample_answers": [], "sample_correct": [],
               "sample_tokens": [], "sample_truncated": [], "correct_samples": None, "majority_answer": None,
               "majority_correct": None}
        if g is not None:
            c = g.completions[0]
            v = grade(problem.gold, c.text)
            row.update(greedy_text=c.text, greedy_answer=v.answer, greedy_correct=v.correct, greedy_tokens=c.n_tokens,
                       greedy_truncated=c.truncated)
        if s is not None:
            verdicts = [grade(problem.gold, c.text) for c in s.completions]
            answers, correct = [v.answer for v in verdicts], [v.correct for v in verdicts]
            winner, ok = majority(answers, correct)
            row.update(sample_texts=[c.text for c in s.completions], sample_answers=answers, sample_correct=correct,
                       sample_tokens=[c.n_tokens for c in s.completions],
                       sample_truncated=[c.truncated for c in s.completions], correct_samples=sum(correct),
                       majority_answer=winner, majority_correct=ok)
        rows.append(row)
    return rows


def preflight(recipe: EvalRecipe, out: str | Path) -> None:
    """What a user can get wrong, checked before an engine starts: the model loads, the set has
    its columns and rows, the output holds no other evaluation."""
    from roost.engines import ensure_available
    from roost.engines.config import local_model_problem
    from roost.errors import ModelError

    ensure_available(recipe.model.model, recipe.model.revision)
    if Path(recipe.model.model).expanduser().exists() and (why := local_model_problem(recipe.model.model)):
        raise ModelError(f"model '{recipe.model.model}': {why}")
    if recipe.problems is not None:
        source = ProblemRows(recipe.problems)
        if recipe.problems.start >= source.total:
            raise InputError(f"{recipe.problems.path}: start {recipe.problems.start} is past its last row "
                             f"({source.total} rows)")
    if recipe.open_ended is not None:
        from roost.evaluation import winrate

        winrate.preflight(recipe)
        winrate.check_resumable(recipe, Path(out))
    check_resumable(recipe, Path(out))
