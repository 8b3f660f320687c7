"""Verifiable rewards: each response graded against its problem's gold answer (iterative DPO
on verifiable tasks; Step-DPO's outcome-level baseline), for reward_pairs' `scorer:` and
sppo's `preference:` (`kind: verifier`).

The reward of a response is

    1.0 if its final answer (the last `\\boxed{}`) is the gold one, by math-verify
    (roost.reasoning.answers), else 0.0;  + format_weight if it has a final `\\boxed{}` answer.

A right response always has one, so the rewards are 0 (no final answer), format_weight (a
wrong one) and 1 + format_weight (right): two different rewards are at least
`min(format_weight, 1)` apart (1 when format_weight is 0). Responses of equal reward are
ordered by a tie-break term inside a band of `TIE_BAND` times that distance, so a tie-break
orders responses of the same reward and never reorders different ones:
- `length` (default): shorter first, the term 1 / (1 + tokens);
- `reward_model`: a reward model's score (the `reward_model:` block), squashed monotonically
  into (0, 1) by (1 + s / (1 + |s|)) / 2 (no saturation at large scores, unlike a sigmoid);
  a response it cannot score gets 0;
- `none`: no term (equal rewards stay tied; the synthesizer's own tie rule decides).
`Graded.value` = reward + band * term is what ranks (reward_pairs) or goes into
Bradley-Terry (sppo); `Graded.reward` is the verifier's reward, which the rows keep
(`chosen_score`, `all_scores`), next to the verdicts (`VERIFIER_COLUMNS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import pyarrow as pa
from pydantic import Field, model_validator

from roost.config import Strict
from roost.engines.config import RewardModelConfig
from roost.reasoning.answers import Gold, grade
from roost.scorers.reward import Reward

TIE_BAND = 1e-3  # the tie-break band, as a share of the smallest difference between two rewards

# What a row made from verifier rewards records beside its pair (reward_pairs, sppo).
VERIFIER_COLUMNS = [
    pa.field("gold_answer", pa.string()),  # the problem's gold answer, as read from its answer column
    pa.field("chosen_correct", pa.bool_()),  # the chosen response's final answer is the gold one
    pa.field("rejected_correct", pa.bool_()),
    pa.field("chosen_answer", pa.string()),  # the final answers found (last \boxed{}; null: none)
    pa.field("rejected_answer", pa.string()),
    pa.field("all_verdicts", pa.list_(pa.bool_())),  # right / wrong per sample; null: not graded (cut, empty)
    pa.field("all_answers", pa.list_(pa.string())),
    pa.field("solve_rate", pa.float64()),  # share of the K samples that are right
]


class VerifierConfig(Strict):
    """`kind: verifier`: rewards from math-verify against the prompt's gold answer."""

    kind: Literal["verifier"] = "verifier"
    format_weight: float = Field(0.0, ge=0)  # added when the response has a final \boxed{} answer
    tie_break: Literal["length", "reward_model", "none"] = "length"
    reward_model: RewardModelConfig | None = None  # tie_break reward_model: the model whose score breaks ties

    @model_validator(mode="after")
    def _tie_model(self):
        if (self.tie_break == "reward_model") != (self.reward_model is not None):
            raise ValueError("tie_break: reward_model needs a reward_model block, and a reward_model block "
                             "needs tie_break: reward_model")
        return self

    def band(self) -> float:
        """Width of the tie-break term: TIE_BAND of the smallest difference between two rewards."""
        return TIE_BAND * (min(self.format_weight, 1.0) if self.format_weight > 0 else 1.0)


@dataclass(frozen=True)
class Graded(Reward):
    """A Reward whose `value` ranks (reward + band * tie-break term); the verifier's own
    reward and verdict beside it."""

    reward: float = 0.0
    correct: bool = False
    answer: str | None = None  # the final answer found (None: none)
    verdict: str | None = None  # why it is not right: no_final_answer / unparsable_answer / wrong_answer
    tie: float = 0.0  # the tie-break term, in [0, 1]


def verifier_reward(correct: bool, answer: str | None, format_weight: float) -> float:
    return float(correct) + format_weight * (answer is not None)


def squash(score: float | None) -> float:
    """A reward model's score into (0, 1), monotonically; None (unscored) is 0."""
    return 0.0 if score is None else 0.5 + 0.5 * score / (1.0 + abs(score))


class Verifier:
    """Grades responses: `score(conversations, golds, tokens)` -> a Graded per conversation
    (its last message is the response)."""

    def __init__(self, config: VerifierConfig):
        self.config = config

    def score(self, conversations: Sequence[Sequence[dict]], golds: Sequence[Gold], tokens: Sequence[int], *,
              progress: str | None = None) -> list[Graded]:
        cfg = self.config
        verdicts = [grade(gold, conv[-1]["content"]) for gold, conv in zip(golds, conversations)]
        ties = self._ties(conversations, tokens, progress)
        band = cfg.band()
        out = []
        for v, tie in zip(verdicts, ties):
            reward = verifier_reward(v.correct, v.answer, cfg.format_weight)
            out.append(Graded(reward + band * tie, reward=reward, correct=v.correct, answer=v.answer,
                              verdict=v.reason, tie=tie))
        return out

    def _ties(self, conversations, tokens, progress) -> list[float]:
        kind = self.config.tie_break
        if kind == "length":
            return [1.0 / (1.0 + n) for n in tokens]
        if kind == "none" or not conversations:
            return [0.0] * len(conversations)
        scores = self._reward_model().score(conversations, progress=progress and f"{progress} tie-break")
        return [squash(r.value) for r in scores]

    def _reward_model(self):
        from roost.scorers.reward import get_reward_scorer

        return get_reward_scorer(self.config.reward_model)

    def check(self) -> None:
        """The tie-break reward model exists and has a reward head (before any engine starts)."""
        rm = self.config.reward_model
        if rm is not None:
            from roost.engines import ensure_available
            from roost.scorers.reward import _hf_config, check_reward_head

            ensure_available(rm.model, rm.revision)
            check_reward_head(_hf_config(rm), rm.model, rm.trust_remote_code)

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        out = {"kind": "verifier", **math_verify(), "model": "math-verify", "revision": math_verify()["version"],
               "reward": "1.0 right / 0.0 wrong + format_weight * (has a final \\boxed{} answer)",
               "format_weight": cfg.format_weight, "tie_break": cfg.tie_break, "tie_band": cfg.band()}
        if cfg.reward_model is not None:
            out["tie_break_reward_model"] = self._reward_model().describe()
        return out


def math_verify() -> dict[str, Any]:
    """What grades: math-verify's version and the final-answer rule."""
    from importlib.metadata import version

    return {"name": "math-verify", "version": version("math-verify"), "final_answer": "last \\boxed{}"}


def same_outcome(graded: Sequence[Graded], gold: Gold) -> tuple[str, str] | None:
    """("all_correct" | "all_wrong", detail) when every graded response is right, or every
    one wrong (no right-vs-wrong pair to make); None for a mixed group."""
    right = sum(g.correct for g in graded)
    if right == len(graded):
        return "all_correct", f"all {len(graded)} graded responses reach the gold answer {gold.text!r}"
    if right == 0:
        answers = sorted({g.answer for g in graded if g.answer is not None})
        return "all_wrong", (f"none of {len(graded)} graded responses reaches the gold answer {gold.text!r} "
                             f"(final answers: {', '.join(answers) or 'none'})")
    return None


def verifier_columns(gold: Gold, graded: Sequence[Graded | None], chosen: int, rejected: int) -> dict[str, Any]:
    """The VERIFIER_COLUMNS of a row: the pair's verdicts and the whole group's."""
    return {"gold_answer": gold.text, "chosen_correct": graded[chosen].correct,
            "rejected_correct": graded[rejected].correct, "chosen_answer": graded[chosen].answer,
            "rejected_answer": graded[rejected].answer,
            "all_verdicts": [g.correct if g is not None else None for g in graded],
            "all_answers": [g.answer if g is not None else None for g in graded],
            "solve_rate": sum(g is not None and g.correct for g in graded) / len(graded)}
