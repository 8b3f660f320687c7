"""Step-DPO: step-wise preference pairs for reasoning, the first wrong step found by rollouts.

Step-DPO (dvlab-research/Step-DPO) asks GPT-4o which step of a wrong solution is the first
wrong one. roost finds it with the policy alone, by Monte-Carlo rollouts (Math-Shepherd,
OmegaPRM), so the whole pipeline runs on one open model, offline. Per shard of problems:

1. problems: a question and a gold answer (GSM8K's `#### N`, MATH's `\\boxed{}`, or plain),
   parsed once; a problem without a usable gold answer goes to rejects;
2. solutions: `samples` per problem in one request (`n`), through the policy's chat
   template, the assistant turn started with Step-DPO's "Let's think step by step.\\nStep 1:";
   split into steps, the final answer checked with math-verify;
3. the first wrong step of each wrong solution, by binary search over its prefixes with
   `locate.rollouts` rollouts per prefix (roost.reasoning.steps); each round of every search
   of the shard is one request;
4. rectify: from the correct prefix s_1..s_{k-1} plus the "Step k:" header, `rectify.samples`
   continuations; each that reaches the gold answer gives its step k as `chosen` against the
   wrong step k as `rejected`, one pair per distinct chosen step (Step-DPO's merge);
5. rows: TRL's standard preference columns (`prompt` = the chat-templated problem with the
   correct prefix appended; `chosen` / `rejected` = strings: the rectified continuation and
   the wrong solution, each from step k to its end), the two steps k alone (`chosen_step`,
   `rejected_step`), Step-DPO's own columns, and the evidence (first wrong step, each p_k
   with its rollout count, the verdicts). `chosen` / `rejected` run to the end of the answer
   because a DPO trainer ends every string completion with the end-of-turn token (TRL's
   DPOTrainer appends EOS): a lone step k there teaches the model to stop after one step
   (measured: DPO+NLL on step-only rows left 200 of 500 held-out answers without a final
   answer; on these rows, none). The shared prefix keeps the preference at step k;
6. subsets: `step_dpo/` with exactly Step-DPO's eight columns, and `prm/`, the rollout
   labels of every graded solution in TRL's step-wise format (`prompt`, `completions`,
   `labels`): the steps before the first wrong one are good, it and the rest bad; every step
   of a correct solution is good.

Solutions that are truncated, whose steps are not numbered 1..n, or whose problem no sample
solved (no prefix is known to be recoverable) are not searched: they go to rejects with the
reason, as do located errors no continuation rectified.

`locate.step_check` (roost.reasoning.step_check): where a task allows checking a single step
(`arithmetic`: every `a op b = c` holds; or the user's `python: "module:function"`), rollouts
alone are not trusted. A noisy policy still reaches the gold answer from some wrong
prefixes, so with few rollouts the first wrong step is placed too late, and a lucky
continuation with a second, compensating error ("35 + 6 = 31" after "8 * 3 = 25") is kept as
`chosen`. With a checker:
- the first step of a wrong solution that fails the check bounds the search: the first wrong
  step is at most that one (the binary search runs in [0, j]; rollouts still decide below j,
  as a step may be wrong in a way the check cannot see, e.g. a misread number);
- a continuation whose chosen step or any later step fails the check is refused
  (`refused_continuations`; all refused: a `step_check_refused` reject);
- a solution with the right answer whose step fails the check gets PRM labels bad from that
  step on (`correct_answer_failed_check`);
- each row's `step_check` says what was checked; `chosen_unchecked` counts pairs whose chosen
  step had nothing to check (no equation).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from roost.config import SamplingConfig, Strict
from roost.dataset.writer import Reject
from roost.engines.base import derive_seed, render_chat
from roost.engines.config import EngineConfig
from roost.reasoning import prompting
from roost.reasoning.answers import grade
from roost.reasoning.problems import BadProblem, Problem, ProblemRows, Problems
from roost.reasoning.step_check import BuiltinKind, Checker, Verdict, checker, load_function
from roost.reasoning.steps import (
    Estimate,
    Search,
    continuation_steps,
    first_step_of,
    header_pattern,
    join_steps,
    locate,
    split_steps,
)
from roost.report.panels import Panel
from roost.schemas import RowSchema, row_id
from roost.synthesizers.base import SYNTHESIZERS, Shard, ShardOutput, Synthesizer, SynthesizerConfig
from roost.synthesizers.common.prompted import SAMPLED

ESTIMATE = pa.struct([("k", pa.int64()), ("p", pa.float64()), ("rollouts", pa.int64()), ("correct", pa.int64())])
STEP_CHECK = pa.struct([
    ("checker", pa.string()),  # "arithmetic", "python:module:function"
    ("first_failing_step", pa.int64()),  # of the wrong solution: the search's upper end (null: every step passed)
    ("first_failing_reason", pa.string()),
    ("chosen", pa.string()),  # ok / unchecked (nothing to check in it); the continuation's later steps all passed
    ("continuation_steps", pa.int64()),  # steps of full_chosen checked (the chosen step first)
    ("rejected", pa.string()),  # ok / unchecked / fail (a wrong step the check cannot see passes)
    ("rejected_reason", pa.string()),
])
STEP_DPO_COLUMNS = ("dataset", "prompt", "initial_reason_steps", "chosen", "rejected", "full_chosen", "full_rejected",
                    "answer")


def _check(row: dict) -> str | None:
    for name in ("prompt", "chosen", "rejected"):
        if not isinstance(row.get(name), str) or not row[name].strip():
            return f"{name}: empty or not a string"
    if row["chosen"].strip() == row["rejected"].strip():
        return "chosen and rejected are identical"
    if row.get("id") != row_id(row["prompt"], row["chosen"], row["rejected"]):
        return "id: does not match content"
    return None


STEP_PAIRS = RowSchema("preference", pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("prompt", pa.string(), nullable=False),  # chat-templated problem + the correct prefix + "Step k:"
    pa.field("chosen", pa.string(), nullable=False),  # a correct step k and the rest of its continuation
    pa.field("rejected", pa.string(), nullable=False),  # the wrong step k and the rest of the wrong solution
    pa.field("chosen_step", pa.string()),  # the correct step k alone (Step-DPO's `chosen`)
    pa.field("rejected_step", pa.string()),  # the wrong step k alone (Step-DPO's `rejected`)
    pa.field("method", pa.string()),
    pa.field("model", pa.string()),
    pa.field("iteration", pa.int64()),
    # Step-DPO's own columns (its `prompt`, the bare problem, is `problem` here)
    pa.field("dataset", pa.string()),
    pa.field("problem", pa.string()),
    pa.field("initial_reason_steps", pa.string()),
    pa.field("full_chosen", pa.string()),
    pa.field("full_rejected", pa.string()),
    pa.field("answer", pa.string()),
    # the evidence
    pa.field("problem_id", pa.string()),
    pa.field("first_wrong_step", pa.int64()),
    pa.field("num_steps", pa.int64()),
    pa.field("estimates", pa.list_(ESTIMATE)),  # p_k of the prefixes the search asked (k = steps kept)
    pa.field("solve_rate", pa.float64()),  # p_0: share of the problem's sampled solutions that were right
    pa.field("search", pa.string()),  # binary / linear
    pa.field("solution", pa.string()),  # the wrong solution, whole
    pa.field("solution_answer", pa.string()),  # its final answer, per the verifier
    pa.field("chosen_answer", pa.string()),  # the rectified continuation's final answer (verified)
    pa.field("rectified", pa.int64()),  # continuations that reached the gold answer...
    pa.field("rectify_samples", pa.int64()),  # ...of this many
    pa.field("model_revision", pa.string()),
    pa.field("sampling", SAMPLED),
]), _check)
# with locate.step_check: what the check said (other builds' rows are unchanged)
CHECKED_STEP_PAIRS = RowSchema("preference", STEP_PAIRS.arrow.append(pa.field("step_check", STEP_CHECK)), _check)

# what the step check did, per shard (with locate.step_check)
CHECK_STATS = ("failed_check",  # sampled solutions with a step that fails the check
               "correct_answer_failed_check",  # ...of them with the right final answer (PRM: bad from that step on)
               "search_bounded_by_check",  # searched wrong solutions whose search ran in [0, first failing step]
               "located_at_check",  # ...located at that step
               "judge_overruled_by_check",  # locate.method judge: the judge named a later step
               "refused_continuations",  # rectified continuations refused: the chosen step or a later one fails
               "refused_chosen_step", "refused_later_step",
               "chosen_unchecked")  # pairs whose chosen step had nothing to check (no equation)

# Step-DPO's columns, from ours: its prompt is the bare problem, its chosen / rejected the steps alone.
_STEP_DPO_SOURCE = {"prompt": "problem", "chosen": "chosen_step", "rejected": "rejected_step"}
STEP_DPO_SUBSET = pa.schema([pa.field(c, pa.string()) for c in STEP_DPO_COLUMNS])
PRM_SUBSET = pa.schema([pa.field("prompt", pa.string()), pa.field("completions", pa.list_(pa.string())),
                        pa.field("labels", pa.list_(pa.bool_()))])


# -- config --------------------------------------------------------------------------------------


class StepFormat(Strict):
    instruction: str = prompting.INSTRUCTION  # appended to the problem in the user turn
    opener: str = prompting.OPENER  # the assistant turn starts with this...
    header: str = prompting.HEADER  # ...and then "Step 1:"; steps are split at these headers

    @field_validator("header")
    @classmethod
    def _has_k(cls, value: str) -> str:
        header_pattern(value)
        return value


class StepCheck(Strict):
    """`step_check: arithmetic` (a built-in kind), or `step_check: {python: "module:function"}`
    with f(problem, step) -> None / True (ok), a reason (str) or False."""
    kind: BuiltinKind | None = None
    python: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _named(cls, value):
        return {"kind": value} if isinstance(value, str) else value

    @field_validator("python")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        if value is not None:
            load_function(value)
        return value

    @model_validator(mode="after")
    def _one(self):
        if (self.kind is None) == (self.python is None):
            raise ValueError("give a built-in kind (arithmetic) or python: 'module:function', not both or neither")
        return self

    def build(self) -> Checker:
        return checker(self.kind, python=self.python)


class Locate(Strict):
    # rollouts: the policy's own Monte-Carlo estimates; judge: an LLM reads the solution
    # against a reference solution, with Step-DPO's prompt (for users with a strong judge)
    method: Literal["rollouts", "judge"] = "rollouts"
    judge: EngineConfig | None = None  # method judge: the judge model
    judge_template: str | None = None  # a file with {problem}, {reference}, {solution}; default: Step-DPO's
    judge_max_tokens: int = Field(1024, ge=16)
    rollouts: int = Field(8, ge=1, le=256)  # M per prefix
    threshold: float = Field(0.0, ge=0, lt=1)  # p_k <= threshold: the prefix no longer leads to the answer
    search: Literal["binary", "linear"] = "binary"
    sampling: SamplingConfig | None = None  # default: the solutions' sampling
    max_errors_per_problem: int = Field(2, ge=1)  # distinct wrong solutions searched per problem
    # an exact check of single steps (roost.reasoning.step_check): bounds the search, refuses
    # continuations that fail it; none: rollouts alone (absent from fingerprints at the default)
    step_check: StepCheck | None = None

    @model_validator(mode="after")
    def _judge(self):
        if self.method == "judge" and self.judge is None:
            raise ValueError("method judge needs locate.judge (the judge model)")
        if self.judge_template is not None:
            from roost.reasoning.locate_judge import load_template

            load_template(self.judge_template)
        return self


class Rectify(Strict):
    samples: int = Field(8, ge=1, le=256)  # continuations from each correct prefix (Step-DPO: 20)
    sampling: SamplingConfig | None = None


class StepDpoConfig(SynthesizerConfig):
    kind: Literal["step_dpo"] = "step_dpo"
    problems: Problems
    format: StepFormat = StepFormat()
    samples: int = Field(4, ge=1, le=256)  # solutions per problem
    sampling: SamplingConfig = SamplingConfig(temperature=0.8, top_p=0.95, max_tokens=1024)  # Step-DPO's
    locate: Locate = Locate()
    rectify: Rectify = Rectify()


# -- the synthesizer -----------------------------------------------------------------------------


@dataclass
class Solution:
    problem: Problem
    text: str  # from "Step 1:" on
    steps: list[str]
    correct: bool
    answer: str | None
    truncated: bool
    search: Search | None = None
    failing: tuple[int, Verdict] | None = None  # the first step failing locate.step_check, and why
    prm_labels: list[bool] | None = None
    pairs: list[dict] = field(default_factory=list)


@SYNTHESIZERS.register
class StepDpo(Synthesizer):
    kind = "step_dpo"
    Config = StepDpoConfig
    schema = STEP_PAIRS
    report_panels = (Panel("solve_rate", "Step-DPO: problem solve rate", "solve-rate", ("solve_rate",),
                           labels={"solve_rate": "solve rate of the problem"}),)
    subsets = {"step_dpo": STEP_DPO_SUBSET, "prm": PRM_SUBSET}

    def __init__(self, config: StepDpoConfig, recipe):
        super().__init__(config, recipe)
        self._problems = None
        self._checker: Checker | None = None
        if config.locate.step_check is not None:
            self.schema = CHECKED_STEP_PAIRS

    def check(self) -> None:
        self.problem_rows()

    def problem_rows(self) -> ProblemRows:
        if self._problems is None:
            self._problems = ProblemRows(self.config.problems)
        return self._problems

    def inputs(self) -> dict[str, dict]:
        return {"problems": self.problem_rows().describe()}

    def plan(self) -> list[Shard]:
        return self.slices(self.problem_rows().total)

    def step_checker(self) -> Checker | None:
        spec = self.config.locate.step_check
        if spec is not None and self._checker is None:
            self._checker = spec.build()
        return self._checker

    # -- one shard ------------------------------------------------------------------------------

    def generate(self, shard: Shard) -> ShardOutput:
        problems, rejects = [], []
        for item in self.problem_rows().read(shard.start, shard.stop):
            if isinstance(item, BadProblem):
                rejects.append(Reject("problems", item.reason, item.row, id=item.id, detail=item.detail))
            else:
                problems.append(item)
        stats = Counter(problems=len(problems))
        if self.step_checker():  # every count of the check in the manifest, zeros too
            stats.update(dict.fromkeys(CHECK_STATS, 0))
        solutions = self._solve(problems, shard, stats)
        searches = self._searches(solutions, rejects, stats)
        if searches and self.config.locate.method == "judge":
            self._judge_locate(searches, shard, rejects, stats)
        elif searches:
            self._locate(searches, shard, stats)
            self._rectify([s for s in searches if s.search and s.search.first_wrong], shard, rejects, stats)
        rows, seen = [], set()
        for pair in (pair for s in solutions for pair in s.pairs):
            if pair["id"] in seen:  # two wrong solutions sharing the wrong step k and the fix: one pair
                stats["duplicate_pairs"] += 1
            else:
                seen.add(pair["id"])
                rows.append(pair)
        prm = [self._prm_row(s) for s in solutions if s.prm_labels is not None]
        step_dpo = [{c: row[_STEP_DPO_SOURCE.get(c, c)] for c in STEP_DPO_COLUMNS} for row in rows]
        stats.update(pairs=len(rows), prm_rows=len(prm))
        if self.step_checker():
            stats["chosen_unchecked"] = sum(row["step_check"]["chosen"] == "unchecked" for row in rows)
        return ShardOutput(rows, rejects, dict(stats), {"step_dpo": step_dpo, "prm": prm})

    def _solve(self, problems: list[Problem], shard: Shard, stats: Counter) -> list[Solution]:
        cfg = self.config
        if not problems:
            return []
        gens = self._policy().generate([self._prefix(p, [], 1) for p in problems], cfg.sampling.to_engine(n=cfg.samples),
                                       seed=derive_seed(shard.seed, "solutions"), progress=f"{shard.label} solutions")
        solutions = []
        for problem, gen in zip(problems, gens):
            for c in gen.completions:
                text = self._header(1) + c.text
                verdict = grade(problem.gold, c.text)
                solutions.append(Solution(problem, text, split_steps(text, cfg.format.header), verdict.correct,
                                          verdict.answer, c.truncated))
                stats["solution_tokens"] += c.n_tokens
        stats.update(solutions=len(solutions), correct=sum(s.correct for s in solutions))
        check = self.step_checker()
        for s in solutions:
            if check and s.steps:
                s.failing = check.first_failing(s.problem.question, s.steps)
                if s.failing:
                    stats["failed_check"] += 1
            if s.correct and s.steps:
                # the right answer, by a step that fails the check: bad from that step on
                j = s.failing[0] if s.failing else len(s.steps) + 1
                s.prm_labels = [k < j for k in range(1, len(s.steps) + 1)]
                if s.failing:
                    stats["correct_answer_failed_check"] += 1
        return solutions

    def _searches(self, solutions: list[Solution], rejects: list[Reject], stats: Counter) -> list[Solution]:
        """The wrong solutions worth searching (the rest go to rejects with the reason)."""
        cfg = self.config.locate
        by_problem: dict[str, list[Solution]] = {}
        for s in solutions:
            by_problem.setdefault(s.problem.id, []).append(s)
        out = []
        for group in by_problem.values():
            rate = sum(s.correct for s in group) / len(group)
            seen = set()
            for s in (s for s in group if not s.correct):
                problem = None
                if s.truncated:
                    problem = ("truncated", "the solution hit max_tokens")
                elif not s.steps:
                    problem = ("no_steps", f"no steps numbered 1..n under the header {self.config.format.header!r}")
                elif rate <= cfg.threshold:
                    problem = ("unsolved_problem", f"{sum(x.correct for x in group)} of {len(group)} solutions right: "
                                                   "no prefix is known to lead to the answer")
                elif s.text in seen or len(seen) >= cfg.max_errors_per_problem:
                    stats["wrong_not_searched"] += 1  # a duplicate, or over max_errors_per_problem: not a loss
                    continue
                if problem:
                    rejects.append(Reject("solutions", problem[0], {"problem": s.problem.question, "solution": s.text,
                                                                    "answer": s.answer}, id=s.problem.id, detail=problem[1]))
                    continue
                seen.add(s.text)
                bound = s.failing[0] if s.failing else None
                s.search = Search(len(s.steps), rate, cfg.threshold, cfg.search, bound=bound)
                if bound is not None:
                    stats["search_bounded_by_check"] += 1
                out.append(s)
        stats["searched"] = len(out)
        return out

    def _locate(self, searched: list[Solution], shard: Shard, stats: Counter) -> None:
        cfg = self.config.locate
        sampling = (cfg.sampling or self.config.sampling).to_engine(n=cfg.rollouts)
        rounds = [0]

        def estimate(asks: list[tuple[int, int]]) -> list[Estimate]:
            prompts = [self._prefix(searched[i].problem, searched[i].steps[:k], k + 1) for i, k in asks]
            gens = self._policy().generate(prompts, sampling, seed=derive_seed(shard.seed, "rollouts", rounds[0]),
                                           progress=f"{shard.label} rollouts {rounds[0] + 1}")
            rounds[0] += 1
            out = []
            for (i, k), gen in zip(asks, gens):
                right = sum(grade(searched[i].problem.gold, c.text).correct for c in gen.completions)
                stats["rollouts"] += len(gen.completions)
                stats["rollout_tokens"] += sum(c.n_tokens for c in gen.completions)
                out.append(Estimate(k, right / len(gen.completions), len(gen.completions), right))
            return out

        stats["rollout_requests"] += locate([s.search for s in searched], estimate)
        for s in searched:
            k = s.search.first_wrong
            stats["located"] += k is not None
            if k is not None:
                s.prm_labels = [i < k for i in range(1, len(s.steps) + 1)]
                if k == s.search.bound:
                    stats["located_at_check"] += 1

    def _judge_locate(self, searched: list[Solution], shard: Shard, rejects: list[Reject], stats: Counter) -> None:
        """Step-DPO's way: a judge model names the first wrong step (greedy, one request)."""
        from roost.engines import get_engine
        from roost.engines.base import Sampling
        from roost.reasoning.locate_judge import load_template, question, read_decision

        cfg = self.config.locate
        judge = get_engine(cfg.judge)
        template = load_template(cfg.judge_template)
        prompts = [render_chat(judge.tokenizer, [{"role": "user", "content": question(
            template, s.problem.question, s.problem.reference, self.config.format.opener + s.text)}],
            add_generation_prompt=True) for s in searched]
        gens = judge.generate(prompts, Sampling(max_tokens=cfg.judge_max_tokens, temperature=0.0),
                              seed=derive_seed(shard.seed, "judge"), progress=f"{shard.label} judge")
        stats["rollout_requests"] += 1
        for s, gen in zip(searched, gens):
            k, why = read_decision(gen.completions[0].text, len(s.steps))
            if k is None:
                rejects.append(Reject("locate", "judge_unreadable", {"problem": s.problem.question, "solution": s.text,
                                                                     "judge": gen.completions[0].text},
                                      id=s.problem.id, detail=why))
                s.search = None  # nothing located, nothing to rectify
                continue
            if s.search.bound is not None and s.search.bound < k:  # an earlier step fails the exact check
                k = s.search.bound
                stats["judge_overruled_by_check"] += 1
            s.search.mode, s.search.lo, s.search.hi = "judge", k - 1, k
            stats["located"] += 1

    def _rectify(self, located: list[Solution], shard: Shard, rejects: list[Reject], stats: Counter) -> None:
        cfg = self.config.rectify
        sampling = (cfg.sampling or self.config.sampling).to_engine(n=cfg.samples)
        prompts = [self._prefix(s.problem, s.steps[: s.search.first_wrong - 1], s.search.first_wrong) for s in located]
        gens = self._policy().generate(prompts, sampling, seed=derive_seed(shard.seed, "rectify"),
                                       progress=f"{shard.label} rectify")
        check = self.step_checker()
        for s, gen in zip(located, gens):
            k = s.search.first_wrong
            rejected = " " + s.steps[k - 1]
            verdicts = [(c, grade(s.problem.gold, c.text)) for c in gen.completions]
            good = [(c, v) for c, v in verdicts if v.correct]
            seen, refused = set(), 0
            for c, v in good:
                chosen = " " + first_step_of(c.text, self.config.format.header)
                if chosen.strip() in seen or chosen.strip() == rejected.strip() or not chosen.strip():
                    continue
                checked = None
                if check:
                    checked = self._check_continuation(check, s, k, c.text, stats)
                    if checked is None:
                        refused += 1
                        continue
                seen.add(chosen.strip())
                s.pairs.append(self._row(s, k, chosen, rejected, c.text, v.answer, len(good), len(verdicts), shard,
                                         checked))
            stats["rectified"] += bool(s.pairs)
            if not s.pairs:
                reason = "not_rectified" if not good else "step_check_refused" if refused else "no_new_step"
                detail = f"{len(good)} of {len(verdicts)} continuations from step {k} reached the answer"
                if refused:
                    detail += (f", {refused} refused by the step check ({check.name}), the rest with the rejected "
                               "step's text")
                elif good:
                    detail += ", each with the rejected step's text"
                rejects.append(Reject("rectify", reason, {"problem": s.problem.question, "solution": s.text,
                                                          "first_wrong_step": k}, id=s.problem.id, detail=detail))

    def _check_continuation(self, check: Checker, s: Solution, k: int, continuation: str, stats: Counter) -> dict | None:
        """The row's `step_check`, or None when the chosen step or a later one fails the check
        (the continuation is refused, counted)."""
        question = s.problem.question
        prefix = check.first_failing(question, s.steps[: k - 1])
        if prefix is not None:  # cannot happen: k is at most the first failing step
            raise AssertionError(f"step {prefix[0]} of the correct prefix fails the step check: {prefix[1].reason}")
        steps = continuation_steps(continuation, self.config.format.header)
        verdicts = [check(question, step) for step in steps]
        failed = next((i for i, v in enumerate(verdicts) if not v.ok), None)
        if failed is not None:
            stats["refused_continuations"] += 1
            stats["refused_chosen_step" if failed == 0 else "refused_later_step"] += 1
            return None
        rejected = check(question, s.steps[k - 1])
        j, why = s.failing if s.failing else (None, None)
        return {"checker": check.name, "first_failing_step": j, "first_failing_reason": why.reason if why else None,
                "chosen": verdicts[0].label, "continuation_steps": len(steps), "rejected": rejected.label,
                "rejected_reason": rejected.reason}

    # -- text -----------------------------------------------------------------------------------

    def _header(self, k: int) -> str:
        return self.config.format.header.format(k=k)

    def _prefix(self, problem: Problem, steps: list[str], k: int) -> str:
        """The policy's prompt: the chat-templated problem, the opener, the given steps and the
        header of step k (what generation continues)."""
        return self._chat(problem) + self._reason_steps(steps, k)

    def _reason_steps(self, steps: list[str], k: int) -> str:
        fmt = self.config.format
        return fmt.opener + (join_steps(steps, fmt.header) + "\n" if steps else "") + self._header(k)

    def _chat(self, problem: Problem) -> str:
        user = prompting.user_turn(problem.question, self.config.format.instruction)
        return render_chat(self._policy().tokenizer, [user], add_generation_prompt=True)

    def _row(self, s: Solution, k: int, chosen: str, rejected: str, continuation: str, answer: str | None,
             rectified: int, tried: int, shard: Shard, step_check: dict | None = None) -> dict:
        initial = self._reason_steps(s.steps[: k - 1], k)
        prompt = self._chat(s.problem) + initial
        full_chosen, full_rejected = " " + continuation.strip(), self._after_header(s.text, k)
        return {
            "id": row_id(prompt, full_chosen, full_rejected), "prompt": prompt, "chosen": full_chosen,
            "rejected": full_rejected, "chosen_step": chosen, "rejected_step": rejected,
            "method": "step_dpo", "model": self.recipe.model.model, "iteration": self.recipe.iteration,
            "dataset": self.problem_rows().dataset, "problem": s.problem.question, "initial_reason_steps": initial,
            "full_chosen": full_chosen, "full_rejected": full_rejected,
            "answer": s.problem.gold.text, "problem_id": s.problem.id, "first_wrong_step": k,
            "num_steps": len(s.steps), "estimates": [vars(e) for _, e in sorted(s.search.estimates.items())],
            "solve_rate": s.search.p0, "search": s.search.mode, "solution": s.text, "solution_answer": s.answer,
            "chosen_answer": answer, "rectified": rectified, "rectify_samples": tried,
            "model_revision": self._revision(),
            "sampling": {**self.config.sampling.model_dump(), "n": self.config.samples, "seed": shard.seed},
            **({"step_check": step_check} if step_check is not None else {}),
        }

    def _after_header(self, text: str, k: int) -> str:
        m = [m for m in header_pattern(self.config.format.header).finditer(text)][k - 1]
        return " " + text[m.end():].strip()

    def _prm_row(self, s: Solution) -> dict:
        fmt = self.config.format
        return {"prompt": s.problem.question, "completions": [f"{fmt.header.format(k=k)} {b}" for k, b in
                                                              enumerate(s.steps, start=1)], "labels": s.prm_labels}

    # -- models, provenance ---------------------------------------------------------------------

    def provenance(self) -> dict[str, Any]:
        cfg = self.config
        return {"sampling": {**cfg.sampling.model_dump(), "n": cfg.samples}, "format": cfg.format.model_dump(),
                "locate": cfg.locate.model_dump(exclude={"step_check"} if cfg.locate.step_check is None else None),
                "rectify": cfg.rectify.model_dump(),
                "problems": {"path": cfg.problems.path, "convention": self.problem_rows().convention,
                             "question_column": self.problem_rows().question,
                             "answer_column": self.problem_rows().answer},
                "verifier": _verifier(),
                **({"step_check": self.step_checker().describe()} if self.step_checker() else {})}

    def finish(self, writer) -> dict[str, Any]:
        return {"subsets": {name: f"{name}/{writer.split}-*.parquet" for name in self.subsets}}


def _verifier() -> dict[str, Any]:
    from importlib.metadata import version

    return {"name": "math-verify", "version": version("math-verify"), "final_answer": "last \\boxed{}"}
