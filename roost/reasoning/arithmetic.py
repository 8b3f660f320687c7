"""Multi-step arithmetic word problems with exact answers and worked solutions, made up here.

So that every step-wise path (solutions, rollouts, rectification) runs offline, roost ships
its own problems: a person starts with some things, then a few events change the count
(finds, buys, gives away, loses, doubles...). Each event is one step of the worked solution,
one operation on small numbers:

    Ava has 7 shells. She finds 5 more shells. Then she gives away 4 shells. How many shells
    does Ava have now?

    Step 1: Ava starts with 7 shells and finds 5 more: 7 + 5 = 12.
    Step 2: She gives away 4: 12 - 4 = 8.
    The answer is \\boxed{8}.

Rows follow GSM8K's convention (`question`, and `answer` = the worked solution, then
`#### N`), so the GSM8K reader is exercised too. `solution(problem, wrong_step=j)` writes a
solution whose step j has a wrong result and whose later steps carry it on consistently:
the known truth for measuring how well the first wrong step is located.

The same seed always gives the same problems (`random.Random(seed)`, nothing else).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

NAMES = ["Ava", "Ben", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Max", "Nia", "Eli", "Ada", "Kai", "Rosa", "Omar", "Lina",
         "Theo", "Yara", "Hugo", "Maya", "Ravi"]
THINGS = ["apples", "shells", "stamps", "marbles", "books", "coins", "pencils", "stickers", "cards", "beads",
          "cookies", "plums", "rocks", "ribbons", "buttons"]
PRONOUN = {name: ("She" if name in {"Ava", "Mia", "Zoe", "Ivy", "Nia", "Ada", "Rosa", "Lina", "Yara", "Maya"} else "He")
           for name in NAMES}

# (operator, story of the event, how the worked step says it)
GAIN = [("+", "{P} finds {n} more {t}.", "{p} finds {n} more"), ("+", "{P} buys {n} more {t}.", "{p} buys {n} more"),
        ("+", "A friend gives {o} {n} {t}.", "{p} gets {n} from a friend")]
LOSS = [("-", "{P} gives away {n} {t}.", "{p} gives away {n}"), ("-", "{P} loses {n} {t}.", "{p} loses {n}"),
        ("-", "{P} uses {n} {t}.", "{p} uses {n}")]
TIMES = [("*", "{P} doubles the number of {t}.", "{p} doubles them"),
         ("*", "{P} triples the number of {t}.", "{p} triples them")]


@dataclass(frozen=True)
class Step:
    op: str  # + - *
    operand: int
    story: str  # the sentence in the problem
    says: str  # how the worked step describes it


@dataclass(frozen=True)
class Problem:
    name: str
    thing: str
    start: int
    steps: tuple[Step, ...]

    @property
    def question(self) -> str:
        parts = [f"{self.name} has {self.start} {self.thing}."]
        for i, step in enumerate(self.steps):
            parts.append(("Then " + step.story[0].lower() + step.story[1:]) if i else step.story)
        parts.append(f"How many {self.thing} does {self.name} have now?")
        return " ".join(parts)

    def values(self) -> list[int]:
        """The count after each step (values[0] = the start)."""
        out = [self.start]
        for step in self.steps:
            out.append(apply(out[-1], step))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]


def apply(value: int, step: Step) -> int:
    if step.op == "+":
        return value + step.operand
    if step.op == "-":
        return value - step.operand
    return value * step.operand


def make_problem(rng: random.Random, *, min_steps: int = 2, max_steps: int = 3, max_value: int = 60) -> Problem:
    """A problem whose every intermediate count stays in [1, max_value]."""
    while True:
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        start = rng.randint(2, 20)
        value, steps = start, []
        for _ in range(rng.randint(min_steps, max_steps)):
            kind = rng.choices(["gain", "loss", "times"], weights=[5, 4, 1])[0]
            op, story, says = rng.choice({"gain": GAIN, "loss": LOSS, "times": TIMES}[kind])
            operand = (2 if "doubles" in story else 3) if op == "*" else rng.randint(1, 12)
            if op == "-" and operand >= value:
                operand = rng.randint(1, value - 1) if value > 1 else 0
                if operand == 0:
                    continue
            fill = dict(P=PRONOUN[name], p=PRONOUN[name].lower(), o=("her" if PRONOUN[name] == "She" else "him"),
                        n=operand, t=thing)
            step = Step(op, operand, story.format(**fill), says.format(**fill))
            value = apply(value, step)
            steps.append(step)
        if len(steps) >= min_steps and all(1 <= v <= max_value for v in Problem(name, thing, start, tuple(steps)).values()):
            return Problem(name, thing, start, tuple(steps))


def solution(problem: Problem, *, wrong_step: int | None = None, error: int = 1) -> str:
    """The worked solution in Step-DPO's step format (without its "Let's think step by step."
    opener). `wrong_step` (1-based): that step's result is off by `error` (never 0 or the
    right value), and the later steps carry the wrong value on correctly."""
    lines, value = [], problem.start
    for k, step in enumerate(problem.steps, start=1):
        result = apply(value, step)
        if k == wrong_step:
            result += error or 1
        symbol = {"+": "+", "-": "-", "*": "*"}[step.op]
        if k == 1:
            intro = f"{problem.name} starts with {problem.start} {problem.thing} and {step.says.split(' ', 1)[1]}"
        else:
            intro = step.says[0].upper() + step.says[1:]
        lines.append(f"Step {k}: {intro}: {value} {symbol} {step.operand} = {result}.")
        value = result
    lines.append(f"The answer is \\boxed{{{value}}}.")
    return "\n".join(lines)


def gsm8k_row(problem: Problem) -> dict:
    """GSM8K's convention: the worked solution, then '#### N'."""
    return {"question": problem.question, "answer": f"{solution(problem)}\n#### {problem.answer}"}


def make_problems(n: int, seed: int = 0, **kw) -> list[Problem]:
    rng = random.Random(seed)
    return [make_problem(rng, **kw) for _ in range(n)]


def write_jsonl(path: str | Path, n: int, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for problem in make_problems(n, seed):
            f.write(json.dumps(gsm8k_row(problem)) + "\n")
    return path


if __name__ == "__main__":  # python -m roost.reasoning.arithmetic data/arithmetic_problems.jsonl 3000
    import sys

    out = write_jsonl(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3000, int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    print(f"wrote {out}")
