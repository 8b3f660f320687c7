"""Reward-ranked preference pairs (iterative DPO with a reward model: RLHFlow, iLR-DPO, MPO).

For each prompt: K responses from the policy in one request (`n=K`), every response scored
by a reward model (or, UltraFeedback style, by an LLM judge's 1-5 score: `scorer: {kind: judge}`,
roost.judges.absolute; ties are then common and fall under `margin`; or, on problems with gold
answers, by a verifier: `scorer: {kind: verifier}`, see below), and the ranking turned into
pairs:
- `best_worst` (default): the best vs the worst response;
- `best_random`: the best vs a random other response (seeded, reproducible);
- `all_above_margin`: every pair whose score gap is above `margin`.
Ranking is by `reward - length_penalty * tokens` (iLR-DPO's guard against the drift to
verbose answers in iterative DPO); `chosen_tokens` / `rejected_tokens` are always recorded
so a trainer can regularize too. `score_gap` is the ranking-score gap; `difficulty` is
`easy` (large gap) or `hard` (small gap) by `difficulty.threshold`, or, by
`difficulty.quantile`, from the gap distribution of the whole build at its end (MPO).

Prompts come from a dataset (Parquet, `hf://`, a roost output: the conversation up to its
last user turn; shards are slices of it) or from Magpie run first in the same shard
(`prompts: {magpie: {...}}`; shards are quotas). Groups that cannot make a pair (every
response truncated or empty, too few scored, best and worst tied within `margin`) go to
rejects with that reason.

With `scorer: {kind: verifier}` (roost.scorers.verifier; iterative DPO on verifiable tasks,
Step-DPO's outcome-level baseline) the prompts are problems with gold answers (`prompts:
{path, answer_column, convention, instruction}`, roost.synthesizers.common.prompted) and a response's
reward is 1 if math-verify finds its final `\\boxed{}` answer right, else 0 (plus an optional
format term): K samples become right-vs-wrong pairs. A tie-break (length by default, or a
reward model) orders responses of equal reward; it never makes a pair by itself: `margin`
applies to the verifier's reward, so a group whose graded samples are all right or all wrong
is a reject, `all_correct` / `all_wrong`. `chosen_score` / `rejected_score` / `all_scores` /
`score_gap` hold the verifier's rewards, and the rows carry the verdicts (VERIFIER_COLUMNS:
gold answer, which response is right, the final answers, the group's solve rate).
`length_penalty` is refused with a verifier (its `tie_break: length` is the length rule).
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Annotated, Any, Literal, Union

import pyarrow as pa
from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from roost.config import SamplingConfig, Strict
from roost.dataset.writer import Reject
from roost.engines.config import EngineConfig, RewardModelConfig
from roost.report.panels import Panel
from roost.schemas import PREFERENCE_ROWS, row_id
from roost.scorers.verifier import VERIFIER_COLUMNS, VerifierConfig, same_outcome, verifier_columns
from roost.synthesizers.base import SYNTHESIZERS, Shard, ShardOutput, SynthesizerConfig
from roost.synthesizers.common.prompted import RESPONSE_RULES, SAMPLED, PromptedSynthesizer, PromptSource

PAIRS = PREFERENCE_ROWS.extend([
    pa.field("prompt_id", pa.string()),  # the input row (or Magpie conversation) the prompt came from
    pa.field("chosen_score", pa.float64()),  # reward of the chosen response
    pa.field("rejected_score", pa.float64()),
    pa.field("score_gap", pa.float64()),  # gap in ranking score (reward - length_penalty * tokens)
    pa.field("difficulty", pa.string()),  # easy / hard by score_gap (a quantile cut: labelled at the build's end)
    pa.field("chosen_tokens", pa.int64()),
    pa.field("rejected_tokens", pa.int64()),
    pa.field("all_scores", pa.list_(pa.float64())),  # every response's reward, null if not scored
    pa.field("all_tokens", pa.list_(pa.int64())),
    pa.field("all_responses", pa.list_(pa.string())),
    pa.field("pair_rule", pa.string()),
    pa.field("model_revision", pa.string()),
    pa.field("reward_model", pa.string()),
    pa.field("reward_model_revision", pa.string()),
    pa.field("sampling", SAMPLED),
])
VERIFIED_PAIRS = PAIRS.extend(VERIFIER_COLUMNS)  # the rows of a verifier-scored build


class Difficulty(Strict):
    threshold: float | None = Field(None, ge=0)  # score_gap >= threshold is easy
    quantile: float = Field(0.5, gt=0, lt=1)  # else: the build's gap quantile at its end
    subsets: bool = False  # also write easy/ and hard/ subsets (Hub configs) at the end


class JudgeScorer(Strict):
    """An absolute LLM judge (Prometheus style, 1-5) in the reward model's place."""

    kind: Literal["judge"] = "judge"
    model: EngineConfig | None = None  # None: the policy judges its own samples
    template: str | None = None  # a file with {instruction}, {response}, {rubric}
    rubric: str | None = None  # a rubric file
    max_tokens: int = Field(1024, ge=1)
    max_feedback_chars: int | None = Field(1000, ge=1)

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, value: Any) -> Any:
        return {"model": value} if isinstance(value, str) else value

    @field_validator("template", "rubric")
    @classmethod
    def _readable(cls, path: str | None, info: ValidationInfo) -> str | None:
        from roost.judges.absolute import load_rubric, load_template

        if path is not None:
            (load_template if info.field_name == "template" else load_rubric)(path)
        return path


def _scorer_tag(value: Any) -> str:
    kind = value.get("kind", "judge") if isinstance(value, dict) else getattr(value, "kind", "judge")
    return {"judge": "JudgeScorer", "verifier": "VerifierConfig"}.get(kind, str(kind))


Scorer = Annotated[Union[Annotated[JudgeScorer, Tag("JudgeScorer")], Annotated[VerifierConfig, Tag("VerifierConfig")]],
                   Discriminator(_scorer_tag, custom_error_type="scorer_kind",
                                 custom_error_message="scorer.kind must be judge or verifier")]


class RewardPairsConfig(SynthesizerConfig):
    kind: Literal["reward_pairs"] = "reward_pairs"
    prompts: PromptSource
    k: int = Field(4, ge=2, le=64)  # responses per prompt
    sampling: SamplingConfig = SamplingConfig(temperature=0.8, top_p=1.0, max_tokens=1024)
    reward_model: RewardModelConfig | None = None
    scorer: Scorer | None = None  # instead of reward_model: an LLM judge's score, or a verifier's reward
    pair_rule: Literal["best_worst", "best_random", "all_above_margin"] = "best_worst"
    margin: float = Field(0.0, ge=0)  # gaps at or below this are ties
    length_penalty: float = Field(0.0, ge=0)  # rank by reward - length_penalty * tokens
    difficulty: Difficulty = Difficulty()

    @model_validator(mode="after")
    def _one_scorer(self) -> "RewardPairsConfig":
        if (self.reward_model is None) == (self.scorer is None):
            raise ValueError("set reward_model or scorer (an LLM judge), one of the two")
        if isinstance(self.scorer, VerifierConfig) and self.length_penalty:
            raise ValueError("length_penalty does not apply to a verifier: it would trade correctness for length; "
                             "use scorer.tie_break: length")
        return self


@SYNTHESIZERS.register
class RewardPairs(PromptedSynthesizer):
    kind = "reward_pairs"
    Config = RewardPairsConfig
    schema = PAIRS
    report_panels = (
        Panel("pair_scores", "Score at pairing: chosen vs rejected", "score-gap", ("chosen_score", "rejected_score"),
              xlabel="reward-model score (at pairing)",
              labels={"chosen_score": "reward-model score", "rejected_score": "reward-model score"}),
        Panel("score_gap", "Score gap, with the easy/hard cut", "score-gap", ("score_gap",), marker="difficulty",
              labels={"score_gap": "score gap (chosen - rejected)"}),
    )

    # -- plan ---------------------------------------------------------------------------------

    def __init__(self, config: RewardPairsConfig, recipe):
        super().__init__(config, recipe)
        if self.verifier_config() is not None:
            self.schema = VERIFIED_PAIRS  # verdict columns; other builds' rows are unchanged

    def verifier_config(self) -> VerifierConfig | None:
        return self.config.scorer if isinstance(self.config.scorer, VerifierConfig) else None

    def check(self) -> None:
        from roost.engines import ensure_available
        from roost.scorers.reward import _hf_config, check_reward_head

        rm = self.config.reward_model
        if rm is not None:
            ensure_available(rm.model, rm.revision)
            check_reward_head(_hf_config(rm), rm.model, rm.trust_remote_code)
        elif self.verifier_config() is None:
            judge = self.config.scorer.model or self.recipe.model
            ensure_available(judge.model, judge.revision)
        self._check_prompts()

    # -- one shard ----------------------------------------------------------------------------

    def generate(self, shard: Shard) -> ShardOutput:
        prompts, rejects, stats = self._prompts(shard)
        engine = self._policy()
        sampling = self.config.sampling.to_engine(n=self.config.k)
        gens = engine.chat([p.messages for p in prompts], sampling, seed=shard.seed,
                           progress=f"{shard.label} responses")
        groups, unusable = [], Counter()
        for gen in gens:
            group = []
            for c in gen.completions:
                text = c.text.strip()
                drop = RESPONSE_RULES.first_drop({"text": text, "finish_reason": c.finish_reason})
                group.append((text, c.n_tokens, drop is None))
                if drop is not None:
                    unusable[drop.reason] += 1
            groups.append(group)
        scored = self._score(prompts, groups, shard)
        rows = []
        for i, (p, group, rewards) in enumerate(zip(prompts, groups, scored)):
            made, problem = self._pairs(p.id, p.messages, group, rewards, random.Random(shard.seed * 1_000_003 + i),
                                        shard, gold=p.gold)
            if problem:
                record = {"prompt": p.messages, "prompt_id": p.id, "responses": [t for t, _, _ in group],
                          "scores": [self._score_of(r) if r else None for r in rewards],
                          "finish": [ok for *_, ok in group]}
                if p.gold is not None:
                    record.update(gold_answer=p.gold.text, verdicts=[r.correct if r else None for r in rewards])
                rejects.append(Reject("reward_pairs", problem[0], record, detail=problem[1]))
            rows.extend(made)
        stats.update(prompts=len(prompts), responses=sum(map(len, groups)),
                     scored=sum(r is not None for rewards in scored for r in rewards), pairs=len(rows),
                     unusable_responses=dict(unusable))
        return ShardOutput(rows, rejects, stats)

    def _score(self, prompts, groups, shard) -> list[list]:
        """Every usable response's Reward (a verifier's Graded), None for the rest, group by group."""
        usable = [[(text, n) if ok else None for text, n, ok in group] for group in groups]
        if self.verifier_config() is not None:
            return self._grade(prompts, usable, f"{shard.label} verifier")
        convs = [p.messages + [{"role": "assistant", "content": x[0]}] for p, group in zip(prompts, usable)
                 for x in group if x is not None]
        scores = iter(self._reward().score(convs, progress=f"{shard.label} rewards") if convs else [])
        return [[next(scores) if x is not None else None for x in group] for group in usable]

    def _score_of(self, reward) -> float | None:
        """The score a row records: the verifier's own reward (not its tie-broken rank), else the value."""
        return reward.reward if self.verifier_config() is not None else reward.value

    def _pairs(self, pid, prompt, group, rewards, rng, shard, gold=None) -> tuple[list[dict], tuple[str, str] | None]:
        cfg = self.config
        verified = self.verifier_config() is not None
        valid = [i for i, r in enumerate(rewards) if r is not None and r.value is not None]
        if not any(ok for *_, ok in group):
            return [], ("all_truncated_or_empty", f"{len(group)} responses, none finished with usable text "
                                                  "(truncated, empty or broken)")
        if len(valid) < 2:
            reasons = "; ".join(sorted({r.reason for r in rewards if r is not None and r.reason})) or "truncated or empty"
            return [], ("too_few_scored", f"{len(valid)} of {len(group)} responses scored ({reasons})")
        rank = {i: rewards[i].value - cfg.length_penalty * group[i][1] for i in valid}
        order = sorted(valid, key=lambda i: (-rank[i], i))
        best, worst = order[0], order[-1]
        # the gap `margin` applies to: the ranking score, or a verifier's own reward (a tie-break is no gap)
        basis = {i: rewards[i].reward for i in valid} if verified else rank

        def apart(a: int, b: int) -> bool:
            return basis[a] - basis[b] > cfg.margin and group[a][0] != group[b][0]

        if cfg.pair_rule == "best_worst":
            chosen_rejected = [(best, worst)]
        elif cfg.pair_rule == "best_random":
            others = [i for i in order[1:] if apart(best, i)]
            chosen_rejected = [(best, rng.choice(others))] if others else []
        else:
            chosen_rejected = [(a, b) for x, a in enumerate(order) for b in order[x + 1:] if apart(a, b)]
        chosen_rejected = [(a, b) for a, b in chosen_rejected if apart(a, b)]
        if not chosen_rejected:
            return [], ((verified and same_outcome([rewards[i] for i in valid], gold)) or
                        ("tie_within_margin", f"best {basis[best]:.4f} vs worst {basis[worst]:.4f}: gap "
                                              f"{basis[best] - basis[worst]:.4f} <= margin {cfg.margin}"))
        rows, seen = [], set()
        for a, b in chosen_rejected:
            chosen = [{"role": "assistant", "content": group[a][0]}]
            rejected = [{"role": "assistant", "content": group[b][0]}]
            rid = row_id(prompt, chosen, rejected)
            if rid in seen:
                continue
            seen.add(rid)
            gap = basis[a] - basis[b]
            threshold = cfg.difficulty.threshold
            rows.append({
                "id": rid, "prompt": prompt, "chosen": chosen, "rejected": rejected,
                "method": "reward_ranked", "model": self.recipe.model.model, "iteration": self.recipe.iteration,
                "prompt_id": pid,
                "chosen_score": self._score_of(rewards[a]), "rejected_score": self._score_of(rewards[b]),
                "score_gap": gap, "difficulty": None if threshold is None else ("easy" if gap >= threshold else "hard"),
                "chosen_tokens": group[a][1], "rejected_tokens": group[b][1],
                "all_scores": [self._score_of(r) if r is not None else None for r in rewards],
                "all_tokens": [t for _, t, _ in group], "all_responses": [t for t, _, _ in group],
                "pair_rule": cfg.pair_rule, "model_revision": self._revisions()["model"],
                "reward_model": self._scorer_name(), "reward_model_revision": self._revisions()["reward_model"],
                "sampling": {**cfg.sampling.model_dump(), "n": cfg.k, "seed": shard.seed},
                **(verifier_columns(gold, rewards, a, b) if verified else {}),
            })
        return rows, None

    def _scorer_name(self) -> str:
        """What scored, as the rows' `reward_model` records it."""
        cfg = self.config
        if self.verifier_config() is not None:
            return "math-verify"
        return (cfg.reward_model or cfg.scorer.model or self.recipe.model).model

    # -- models -------------------------------------------------------------------------------

    def _reward(self):
        """The reward model's scorer, or the judge's (`score(conversations)` -> Reward each), or
        the verifier (`score(conversations, golds, tokens)`)."""
        if self.verifier_config() is not None:
            return self._verifier()
        if self.config.scorer is not None:
            if getattr(self, "_judge_scorer", None) is None:
                from roost.engines import get_engine
                from roost.judges.absolute import AbsoluteJudge, JudgeRewardScorer, load_rubric, load_template

                cfg = self.config.scorer
                engine = get_engine(cfg.model) if cfg.model is not None else self._policy()
                self._judge_scorer = JudgeRewardScorer(AbsoluteJudge(
                    engine, load_template(cfg.template) if cfg.template else None,
                    load_rubric(cfg.rubric) if cfg.rubric else None, max_tokens=cfg.max_tokens,
                    max_feedback_chars=cfg.max_feedback_chars, template_source=cfg.template,
                    rubric_source=cfg.rubric, progress="judge"))
            return self._judge_scorer
        from roost.scorers.reward import get_reward_scorer

        return get_reward_scorer(self.config.reward_model)

    def _revisions(self) -> dict[str, str | None]:
        if not hasattr(self, "_rev"):
            self._rev = {"model": self._revision(),
                         "reward_model": self._reward().describe().get("revision")}
        return self._rev

    def finish(self, writer) -> dict[str, Any]:
        """The easy/hard cut over the whole build, and the subsets when asked.

        With `quantile` the cut is known only now, so the rows of `data/` were written with a
        null `difficulty`: each shard whose labels differ from the cut's is rewritten with them
        (whole, renamed into place, its Parquet metadata kept), so `data/` says what the
        manifest counts. Idempotent: a re-run finds the labels right and rewrites nothing."""
        import numpy as np
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from roost.dataset.writer import atomic_write_table

        cfg = self.config.difficulty
        paths = [writer.data_path(i) for i in range(writer.num_shards)]
        gaps = np.concatenate([pq.read_table(p, columns=["score_gap"]).column("score_gap").to_numpy(zero_copy_only=False)
                               for p in paths]) if paths else np.zeros(0)
        threshold = cfg.threshold if cfg.threshold is not None else (
            float(np.quantile(gaps, cfg.quantile)) if len(gaps) else None)
        out = {"threshold": threshold, "rule": "score_gap >= threshold is easy",
               "quantile": None if cfg.threshold is not None else cfg.quantile,
               "easy": int((gaps >= threshold).sum()) if threshold is not None else 0,
               "hard": int((gaps < threshold).sum()) if threshold is not None else 0}
        if threshold is None:
            return {"difficulty": out}
        for i, path in enumerate(paths):
            table = pq.read_table(path)
            easy = pc.fill_null(pc.greater_equal(table.column("score_gap"), threshold), False)
            label = pa.array(np.where(easy.to_numpy(zero_copy_only=False), "easy", "hard"), pa.string())
            column = table.schema.get_field_index("difficulty")
            if table.column(column).to_pylist() != label.to_pylist():
                table = table.set_column(column, table.schema.field(column), label)
                atomic_write_table(path, table)  # the schema's metadata (provenance, shard stats) goes along
            if cfg.subsets:
                for name, mask in (("easy", easy), ("hard", pc.invert(easy))):
                    atomic_write_table(writer.root / name / path.name, table.filter(mask))
        if cfg.subsets:
            out["subsets"] = {name: f"{name}/{writer.split}-*.parquet" for name in ("easy", "hard")}
        return {"difficulty": out}

    def provenance(self) -> dict[str, Any]:
        out = {"sampling": {**self.config.sampling.model_dump(), "n": self.config.k},
               "reward_model": self._reward().describe(), "pair_rule": self.config.pair_rule,
               "length_penalty": self.config.length_penalty, "margin": self.config.margin}
        return {**out, **self._prompt_provenance()}
