"""Exact checks of single reasoning steps, where a task allows one.

Rollouts judge a prefix only by whether a noisy policy still reaches the gold answer from it,
so a wrong step followed by a second, compensating error ("8 * 3 = 25", then "35 + 6 = 31")
can look right. Where a step can be checked on its own, a checker says so directly:

- `arithmetic` (built in): every `a op b = c` in the step holds (ops + - * x × / ÷,
  integers and decimals, thousands separators, chains such as `2 + 3 + 4 = 9` and running
  chains such as `7 + 5 = 12 - 4 = 8`); a step with no equation passes, as *unchecked*;
- `python: "module:function"`: a user's function `f(problem, step) -> ok or a reason`
  (None / True: ok; a string: the reason it fails; False: fails; or a `Verdict`).

`checker(spec)` gives a `Checker`: `checker(problem, step) -> Verdict`. A checker can only
refuse: a passing step may still be wrong in a way it cannot see (a misread number), which
is why the first-wrong-step search still runs rollouts below the first failing step.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Literal, Sequence


@dataclass(frozen=True)
class Verdict:
    ok: bool
    checked: int = 0  # claims checked in the step (equations, for `arithmetic`)
    reason: str | None = None  # why it fails

    @property
    def unchecked(self) -> bool:
        """Passed because there was nothing to check."""
        return self.ok and self.checked == 0

    @property
    def label(self) -> str:
        return "unchecked" if self.unchecked else "ok" if self.ok else "fail"


PASS_UNCHECKED = Verdict(True, 0)


# -- arithmetic: numbers ------------------------------------------------------------------------

_NUM = r"\$?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
_OP = r"[-+*/x×÷−]"
_SIDE = rf"-?{_NUM}(?:\s*{_OP}\s*{_NUM})*"
# a chain of sides joined by "=", the last number not glued to a word, a percent sign or a unit digit
_CHAIN = re.compile(rf"{_SIDE}(?:\s*=\s*{_SIDE})+(?![\w%])")
_TOKEN = re.compile(rf"({_NUM})|({_OP})")
_OPS: dict[str, Callable[[Fraction, Fraction], Fraction]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "−": lambda a, b: a - b,
    "*": lambda a, b: a * b, "x": lambda a, b: a * b, "×": lambda a, b: a * b,
    "/": lambda a, b: a / b, "÷": lambda a, b: a / b,
}
_PRODUCT = {"*", "x", "×", "/", "÷"}


def number(text: str) -> Fraction:
    """'1,204.5' / '$12' -> an exact value."""
    return Fraction(text.lstrip("$").replace(",", ""))


def decimals(text: str) -> int:
    return len(text.split(".", 1)[1]) if "." in text else 0


@dataclass(frozen=True)
class Side:
    text: str
    numbers: tuple[str, ...]
    ops: tuple[str, ...]

    @property
    def value(self) -> Fraction:
        """Evaluated with the usual precedence (products and quotients first)."""
        values = [number(n) for n in self.numbers]
        terms, signs, current = [], [], values[0]
        for op, v in zip(self.ops, values[1:]):
            if op in _PRODUCT:
                current = _OPS[op](current, v)  # ZeroDivisionError: the caller's reason
            else:
                terms.append(current)
                signs.append(op)
                current = v
        terms.append(current)
        total = terms[0]
        for op, v in zip(signs, terms[1:]):
            total = _OPS[op](total, v)
        return total


def parse_side(text: str) -> Side:
    text = text.strip()
    negative = text.startswith("-")
    numbers, ops = [], []
    for m in _TOKEN.finditer(text[1:] if negative else text):
        (numbers if m.group(1) else ops).append(m.group(0))
    if negative:
        numbers[0] = "-" + numbers[0]
    return Side(text, tuple(numbers), tuple(ops))


def _glued_to_more(text: str, start: int) -> bool:
    """The chain at `start` continues an expression the pattern did not take (`2x + 3 + 4 = 11`
    at '3'; a word glued to the number): checking its tail alone would be wrong."""
    if start and (text[start - 1].isalnum() or text[start - 1] in "._"):
        return True
    before = text[:start].rstrip()
    return bool(before) and (before[-1] in "+-*/×÷−^(" or re.search(r"(?:^|[\s\d])x$", before) is not None)


def equations(step: str) -> list[list[Side]]:
    """The chains `side = side [= side ...]` in a step with an operator in at least one side."""
    out = []
    for m in _CHAIN.finditer(step):
        if _glued_to_more(step, m.start()):
            continue
        sides = [parse_side(s) for s in m.group(0).split("=")]
        if any(s.ops for s in sides):
            out.append(sides)
    return out


# -- arithmetic: the rules (each returns a reason, or None) --------------------------------------


def close_enough(value: Fraction, written: str) -> bool:
    """The written result equals the value, or is it rounded to the decimals written (10 / 3 =
    3.33); a whole number written for a fraction is wrong (7 / 2 = 3)."""
    claimed = number(written)
    if claimed == value:
        return True
    places = decimals(written)
    return places > 0 and abs(value - claimed) <= Fraction(1, 2 * 10 ** places)


def rule_no_division_by_zero(left: Side, right: Side) -> str | None:
    for side in (left, right):
        try:
            side.value
        except ZeroDivisionError:
            return f"{side.text}: division by zero"
    return None


def rule_sides_equal(left: Side, right: Side) -> str | None:
    """`a op b = c` holds; for a running chain (`7 + 5 = 12 - 4 = 8`) the right side may instead
    start from the left side's value."""
    value = left.value
    if right.ops and (right.value == value or close_enough(value, right.numbers[0])):
        return None
    if not right.ops and close_enough(value, right.numbers[0]):
        return None
    if not left.ops and close_enough(right.value, left.numbers[0]):  # `3.33 = 10 / 3`
        return None
    shown = [f"{side.text} is {_show(side.value)}" for side in (left, right) if side.ops] or ["they differ"]
    return f"{left.text} = {right.text}: {', '.join(shown)}"


ARITHMETIC_RULES: tuple[Callable[[Side, Side], str | None], ...] = (rule_no_division_by_zero, rule_sides_equal)


def _show(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def arithmetic(problem: str, step: str) -> Verdict:
    """Every equation of the step holds (`problem` is not needed: the step says it all)."""
    chains = equations(step)
    for sides in chains:
        for left, right in zip(sides, sides[1:]):
            for rule in ARITHMETIC_RULES:
                reason = rule(left, right)
                if reason:
                    return Verdict(False, len(chains), reason)
    return Verdict(True, len(chains))


# -- checkers: built in, or the user's -----------------------------------------------------------

CheckFn = Callable[[str, str], Verdict]
BUILTIN: dict[str, CheckFn] = {"arithmetic": arithmetic}
BuiltinKind = Literal["arithmetic"]
assert set(BuiltinKind.__args__) == set(BUILTIN)  # the config's Literal names exactly the registry


def load_function(spec: str) -> Callable:
    """'package.module:function' -> the function (ValueError with the reason otherwise)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r}: expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{spec!r}: cannot import {module_name!r} ({e})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"{spec!r}: {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ValueError(f"{spec!r}: not callable")
    return fn


def as_verdict(result, spec: str) -> Verdict:
    """What a user's checker returned, read as a verdict."""
    if isinstance(result, Verdict):
        return result
    if result is None or result is True:
        return Verdict(True, 1)
    if result is False:
        return Verdict(False, 1, f"refused by {spec}")
    if isinstance(result, str):
        return Verdict(False, 1, result or f"refused by {spec}")
    raise TypeError(f"step check {spec}: returned {type(result).__name__}; expected None/True (ok), "
                    "a reason (str), False or a Verdict")


@dataclass
class Checker:
    name: str  # "arithmetic" or "python:module:function"
    fn: CheckFn
    spec: str | None = None  # the user's "module:function"

    def __call__(self, problem: str, step: str) -> Verdict:
        if self.spec is None:
            return self.fn(problem, step)
        return as_verdict(self.fn(problem, step), self.spec)

    def first_failing(self, problem: str, steps: Sequence[str]) -> tuple[int, Verdict] | None:
        """(1-based index, verdict) of the first step that fails, or None."""
        for k, step in enumerate(steps, start=1):
            verdict = self(problem, step)
            if not verdict.ok:
                return k, verdict
        return None

    def describe(self) -> dict:
        if self.spec is None:
            rules = ARITHMETIC_RULES if self.name == "arithmetic" else ()
            return {"kind": self.name, "rules": [r.__name__ for r in rules]}
        out = {"kind": "python", "function": self.spec}
        try:
            source = inspect.getsource(inspect.getmodule(self.fn))
            out["source_sha256"] = hashlib.sha256(source.encode()).hexdigest()
        except (OSError, TypeError):
            pass
        return out


def checker(kind: str | None = None, *, python: str | None = None) -> Checker:
    if python is not None:
        return Checker(f"python:{python}", load_function(python), python)
    if kind not in BUILTIN:
        raise ValueError(f"unknown step check {kind!r} (built in: {', '.join(BUILTIN)})")
    return Checker(kind, BUILTIN[kind])
