"""Math problems with gold answers, read from a dataset: what Step-DPO builds pairs from, what
verifiable rewards grade against, and what `roost eval` measures a model on.

A problem input names its convention (`gsm8k`: `question` + `answer` ending `#### N`; `math`:
`problem` + `solution` with a `\\boxed{}`; `plain`: the answer itself; `auto` picks by the
columns present). Each row's gold answer is parsed once, when it is read; a row without a
usable one comes back with the reason, for the caller to count and keep (never dropped).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from roost.config import Strict
from roost.errors import InputError
from roost.reasoning.answers import Gold, read_gold
from roost.schemas import row_id

CONVENTIONS = {"gsm8k": ("question", "answer"), "math": ("problem", "solution")}


def detect_convention(names, convention: str = "auto") -> tuple[str, str, str]:
    """(convention, its question column, its answer column) for a set of column names: `auto`
    takes the first convention whose two columns are there, else `plain` (question, answer)."""
    if convention == "auto":
        convention = next((k for k, (q, a) in CONVENTIONS.items() if q in names and a in names), "plain")
    question, answer = CONVENTIONS.get(convention, ("question", "answer"))
    return convention, question, answer


class Problems(Strict):
    path: str  # Parquet / JSON Lines / JSON / CSV file, dir or glob, hf://<dataset>, a roost output
    split: str = "train"
    config: str | None = None  # hf:// only: the dataset's config (gsm8k: "main")
    revision: str | None = None  # hf:// only: a branch, tag or commit
    convention: Literal["auto", "gsm8k", "math", "plain"] = "auto"
    question_column: str | None = None  # default: question (gsm8k), problem (math)
    answer_column: str | None = None  # default: answer (gsm8k, plain), solution (math)
    id_column: str = "id"
    dataset: str | None = None  # a name for the set (Step-DPO's `dataset` column); default: the file's name


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    gold: Gold
    reference: str  # the dataset's own solution (what a judge compares against)


@dataclass(frozen=True)
class BadProblem:
    """A row that cannot be used, and why (`no_question`, `no_gold_answer`, `unparsable_gold_answer`)."""

    id: str
    reason: str
    detail: str
    row: dict


class ProblemRows:
    """The problem input, opened and checked once; one slice read at a time."""

    def __init__(self, config: Problems):
        from roost.dataset.sources import open_source

        self.config = config
        self.source = open_source(config.path, split=config.split, config=config.config, revision=config.revision)
        names = set(self.source.schema.names)
        self.convention, self.question, self.answer = self._columns(names)
        total = self.source.count()
        self.total = total if total is not None else sum(len(b) for b in self.source.batches())
        if self.total == 0:
            raise InputError(f"{config.path}: no rows")
        self.dataset = config.dataset or Path(config.path.removeprefix("hf://")).stem or config.path

    def _columns(self, names: set[str]) -> tuple[str, str, str]:
        c = self.config
        convention, q_default, a_default = detect_convention(names, c.convention)
        question, answer = c.question_column or q_default, c.answer_column or a_default
        missing = [col for col in (question, answer) if col not in names]
        if missing:
            raise InputError(f"{c.path}: no {' or '.join(repr(m) for m in missing)} column for {convention} problems "
                             f"(columns: {', '.join(sorted(names))}); set problems.question_column / answer_column")
        return convention, question, answer

    def describe(self) -> dict:
        return {"path": self.config.path, "rows": self.total, "convention": self.convention,
                "read_as": f"{self.convention} problems from {self.question!r}, answers from {self.answer!r}",
                "question_column": self.question, "answer_column": self.answer, **self.source.identity()}

    def read(self, start: int, stop: int) -> Iterator[Problem | BadProblem]:
        """A Problem, or a BadProblem with its reason, per row of [start, stop)."""
        for batch in self.source.rows(start, stop):
            for row in batch:
                question = row.get(self.question)
                value = row.get(self.config.id_column)
                pid = str(value) if value not in (None, "") else row_id(question, row.get(self.answer))
                if not isinstance(question, str) or not question.strip():
                    yield BadProblem(pid, "no_question", f"empty {self.question!r}", row)
                    continue
                gold, why = read_gold(row.get(self.answer), self.convention)
                if gold is None:
                    reason = "no_gold_answer" if row.get(self.answer) in (None, "") else "unparsable_gold_answer"
                    yield BadProblem(pid, reason, why, row)
                    continue
                reference = str(row.get(self.answer)).split("####")[0].strip() or gold.text
                yield Problem(pid, question.strip(), gold, reference)

    def questions(self, start: int = 0, stop: int | None = None) -> Iterator[str]:
        """The question text of every row of [start, stop) (overlap checks)."""
        for batch in self.source.rows(start, self.total if stop is None else min(stop, self.total)):
            for row in batch:
                if isinstance(q := row.get(self.question), str):
                    yield q
