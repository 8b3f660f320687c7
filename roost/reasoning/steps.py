"""Solutions as steps, and the first wrong step found by Monte-Carlo rollouts.

A solution in the step format ("Step 1: ...\\nStep 2: ...\\nThe answer is \\\\boxed{8}.") is split
at its step headers; the text after the last header (final answer included) is the last step.

The value of a prefix: p_k = the share of M rollouts, sampled from the problem plus the
first k steps, that reach the gold answer (Math-Shepherd's and OmegaPRM's estimate). For a
wrong solution of n steps, p_n = 0 (it is finished, and wrong); p_0 is the problem's own
solve rate (its N solutions). The first wrong step is the first k with p_k <= threshold
after p_{k-1} > threshold.

`locate` finds it by binary search over k (OmegaPRM): with p_lo > threshold >= p_hi, ask
mid; about log2(n) rounds of rollouts instead of n. Every search of a shard advances one
round at a time, and a round's rollouts go to the engine as one request (`estimate` gets
all of them). Binary search finds *a* boundary; when p is not monotone in k it may not be
the first one, which the linear scan (`search="linear"`, every prefix in one round) always
finds, at n/log2(n) times the rollouts. `estimate` is the only thing that touches a model,
so the search is tested with scripted values too.

`bound`: where an exact check of single steps (roost.reasoning.step_check) fails step j, the
prefix of j steps holds an error whatever the rollouts say, so the search runs in [0, j]
instead of [0, n] (p_j is taken as 0, not estimated). Rollouts still decide below j: an
earlier step may be wrong in a way the check cannot see.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence


def header_pattern(header: str) -> re.Pattern:
    """'Step {k}:' -> a regex matching any step header ('Step 12:'), at a line start."""
    if "{k}" not in header:
        raise ValueError("the step header needs a {k} placeholder, e.g. 'Step {k}:'")
    before, after = header.split("{k}", 1)
    return re.compile(r"(?:^|\n)" + re.escape(before) + r"(\d+)" + re.escape(after))


def split_steps(text: str, header: str = "Step {k}:") -> list[str]:
    """The steps of a solution, each without its header, numbered 1, 2, ... in order;
    [] if it has no step headers, or they are not numbered 1..n in order."""
    pattern = header_pattern(header)
    matches = list(pattern.finditer(text))
    if not matches or [int(m.group(1)) for m in matches] != list(range(1, len(matches) + 1)):
        return []
    bodies = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        bodies.append(text[m.end():end].strip())
    return bodies


def join_steps(steps: Sequence[str], header: str = "Step {k}:") -> str:
    return "\n".join(f"{header.format(k=k)} {body}" for k, body in enumerate(steps, start=1))


def first_step_of(continuation: str, header: str = "Step {k}:") -> str:
    """The body of the step a continuation starts (the text before the next step header)."""
    m = header_pattern(header).search(continuation)
    return (continuation[: m.start()] if m else continuation).strip()


def continuation_steps(continuation: str, header: str = "Step {k}:") -> list[str]:
    """The steps of a continuation that starts inside a step (after its header): the body of
    that step, then every later step's body (the final answer is in the last)."""
    matches = list(header_pattern(header).finditer(continuation))
    ends = [m.start() for m in matches] + [len(continuation)]
    starts = [0] + [m.end() for m in matches]
    return [continuation[a:b].strip() for a, b in zip(starts, ends)]


@dataclass
class Estimate:
    k: int  # prefix length in steps
    p: float
    rollouts: int
    correct: int


@dataclass
class Search:
    """One wrong solution's search for its first wrong step."""

    n: int  # steps
    p0: float  # the problem's solve rate (prefix of 0 steps)
    threshold: float
    mode: Literal["binary", "linear"] = "binary"
    estimates: dict[int, Estimate] = field(default_factory=dict)
    lo: int = 0  # p_lo > threshold
    hi: int = 0  # p_hi <= threshold
    rounds: int = 0
    bound: int | None = None  # the first step an exact check failed (1..n): the search's upper end

    def __post_init__(self):
        if self.bound is not None and not 1 <= self.bound <= self.n:
            raise ValueError(f"bound {self.bound} outside 1..{self.n}")
        self.hi = self.top

    @property
    def top(self) -> int:
        """The shortest prefix known to be wrong without rollouts: the bound, or the whole solution."""
        return self.n if self.bound is None else self.bound

    @property
    def solvable(self) -> bool:
        return self.p0 > self.threshold

    def wanted(self) -> list[int]:
        """Prefix lengths to estimate in the next round ([] when done)."""
        if not self.solvable or self.hi - self.lo <= 1:
            return []
        if self.mode == "linear":
            return [k for k in range(1, self.top) if k not in self.estimates]
        return [(self.lo + self.hi) // 2]

    def record(self, estimate: Estimate) -> None:
        self.estimates[estimate.k] = estimate

    def advance(self) -> None:
        """After a round: narrow the interval (binary) or settle on the first boundary (linear)."""
        self.rounds += 1
        if self.mode == "linear":
            p = {0: self.p0, **{k: e.p for k, e in self.estimates.items()}, self.top: 0.0}
            self.hi = next(k for k in range(1, self.top + 1) if p[k] <= self.threshold and p[k - 1] > self.threshold)
            self.lo = self.hi - 1
            return
        mid = (self.lo + self.hi) // 2
        if self.estimates[mid].p > self.threshold:
            self.lo = mid
        else:
            self.hi = mid

    @property
    def first_wrong(self) -> int | None:
        """1-based index of the first wrong step, once found."""
        return self.hi if self.solvable and self.hi - self.lo <= 1 else None


def locate(searches: Sequence[Search],
           estimate: Callable[[list[tuple[int, int]]], list[Estimate]]) -> int:
    """Run every search to the end. `estimate([(search index, k), ...])` returns the estimates
    of one round, in order. Returns the number of rounds (engine requests) made."""
    rounds = 0
    while True:
        asks = [(i, k) for i, s in enumerate(searches) for k in s.wanted()]
        if not asks:
            return rounds
        for (i, _), e in zip(asks, estimate(asks)):
            searches[i].record(e)
        for i in sorted({i for i, _ in asks}):
            searches[i].advance()
        rounds += 1
