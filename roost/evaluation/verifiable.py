"""Verifiable evaluation: a model's answers to math problems graded against gold answers.

Per problem: one greedy solution and `samples` sampled ones, each graded with math-verify
(roost.reasoning.answers: the last `\\boxed{}` against the gold). The summary metrics are
the ones the seed papers report:

- `greedy_accuracy`: pass@1 of the greedy solution (Step-DPO's MATH / GSM8K numbers);
- `sampled_accuracy`: the mean share of right samples (pass@1 under sampling);
- `maj@k`: the majority answer of the k samples is right (self-consistency);
- `pass@k`: at least one of k samples is right, with the unbiased estimator of Chen et al.
  (2021): 1 - C(n-c, k) / C(n, k) for n samples of which c are right;
- mean answer tokens (greedy and sampled) and the share cut at `max_tokens`: the length
  drift iterative DPO is known for shows here;
- all of it again by the number of steps of the problem's reference solution.

Each accuracy comes with its standard error (sqrt(p(1-p)/n)): two numbers closer than about
two of those are not a difference.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

OUTCOMES = pa.schema([
    pa.field("id", pa.string()),
    pa.field("question", pa.string()),
    pa.field("gold", pa.string()),
    pa.field("steps", pa.int64()),  # steps of the reference solution (null: not in the step format)
    pa.field("greedy_text", pa.string()),
    pa.field("greedy_answer", pa.string()),
    pa.field("greedy_correct", pa.bool_()),
    pa.field("greedy_tokens", pa.int64()),
    pa.field("greedy_truncated", pa.bool_()),
    pa.field("sample_texts", pa.list_(pa.string())),
    pa.field("sample_answers", pa.list_(pa.string())),
    pa.field("sample_correct", pa.list_(pa.bool_())),
    pa.field("sample_tokens", pa.list_(pa.int64())),
    pa.field("sample_truncated", pa.list_(pa.bool_())),
    pa.field("correct_samples", pa.int64()),
    pa.field("majority_answer", pa.string()),
    pa.field("majority_correct", pa.bool_()),
])


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c right (Chen et al. 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority(answers: Sequence[str | None], correct: Sequence[bool]) -> tuple[str | None, bool]:
    """The most common final answer (ties: the one seen first) and whether it is right; no
    answer at all counts as a wrong vote for nothing."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None, False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return winner, next(ok for a, ok in zip(answers, correct) if a == winner)


@dataclass
class Tally:
    """Sums over problems, turned into the summary's metrics."""

    n: int = 0
    greedy_right: int = 0
    greedy_tokens: int = 0
    greedy_truncated: int = 0
    greedy_n: int = 0
    sample_right: float = 0.0  # sum over problems of the share of right samples
    sampled_n: int = 0
    maj_right: int = 0
    sample_tokens: float = 0.0
    sample_truncated: float = 0.0
    pass_k: dict | None = None

    def add(self, row: dict, ks: Sequence[int]) -> None:
        self.n += 1
        if row["greedy_correct"] is not None:
            self.greedy_n += 1
            self.greedy_right += row["greedy_correct"]
            self.greedy_tokens += row["greedy_tokens"]
            self.greedy_truncated += row["greedy_truncated"]
        samples = row["sample_correct"] or []
        if samples:
            m = len(samples)
            self.sampled_n += 1
            self.sample_right += sum(samples) / m
            self.maj_right += row["majority_correct"]
            self.sample_tokens += sum(row["sample_tokens"]) / m
            self.sample_truncated += sum(row["sample_truncated"]) / m
            self.pass_k = self.pass_k or {k: 0.0 for k in ks}
            for k in ks:
                self.pass_k[k] += pass_at_k(m, sum(samples), k)

    def metrics(self, samples: int) -> dict:
        out: dict = {"problems": self.n}
        if self.greedy_n:
            out.update(greedy_accuracy=self.greedy_right / self.greedy_n,
                       greedy_tokens=self.greedy_tokens / self.greedy_n,
                       greedy_truncated=self.greedy_truncated / self.greedy_n)
        if self.sampled_n:
            out.update(sampled_accuracy=self.sample_right / self.sampled_n, **{f"maj@{samples}": self.maj_right / self.sampled_n},
                       sampled_tokens=self.sample_tokens / self.sampled_n,
                       sampled_truncated=self.sample_truncated / self.sampled_n)
            out.update({f"pass@{k}": v / self.sampled_n for k, v in (self.pass_k or {}).items()})
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}


ACCURACIES = ("greedy_accuracy", "sampled_accuracy")


def stderrs(metrics: dict, samples: int) -> dict:
    """Standard errors of the accuracies (binomial over problems)."""
    out = {}
    for name in (*ACCURACIES, f"maj@{samples}"):
        if name in metrics and metrics["problems"]:
            p = metrics[name]
            out[name] = round(math.sqrt(max(p * (1 - p), 0.0) / metrics["problems"]), 6)
    return out


def summarize(rows: Sequence[dict], *, samples: int, ks: Sequence[int]) -> dict:
    """Overall metrics, their standard errors, and the metrics by number of steps."""
    total, by_steps = Tally(), {}
    for row in rows:
        total.add(row, ks)
        if row["steps"] is not None:
            by_steps.setdefault(row["steps"], Tally()).add(row, ks)
    metrics = total.metrics(samples)
    return {"metrics": metrics, "stderr": stderrs(metrics, samples),
            "by_steps": {str(k): t.metrics(samples) for k, t in sorted(by_steps.items())}}


def metric_names(samples: int, ks: Sequence[int], greedy: bool) -> list[str]:
    """The metrics a summary holds for these settings (what `loop.eval.metric` may name)."""
    names = ["greedy_accuracy", "greedy_tokens", "greedy_truncated"] if greedy else []
    if samples:
        names += ["sampled_accuracy", f"maj@{samples}", "sampled_tokens", "sampled_truncated",
                  *(f"pass@{k}" for k in ks)]
    return names
