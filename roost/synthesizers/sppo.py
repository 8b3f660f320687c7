"""SPPO (self-play preference optimization): pairs with win probabilities, for SPPO's trainer
and TRL's DPOTrainer (`loss_type="sppo_hard"`).

For each prompt (uclaml/SPPO's scripts, see shared/reference/self-play-and-step-dpo.md (b)):
- K samples from the policy (default 5 at temperature 0.7, top_p 0.9, SPPO's settings) in
  one seeded request (`n=K`). SPPO hard-codes K=5; here any K >= 2 works;
- a K x K win-probability matrix P[i][j] = P(sample i beats sample j) from a pairwise
  preference model, one of:
  - `bradley_terry`: a scalar reward model, P[i][j] = sigmoid((r_i - r_j) / temperature)
    (what SPPO's compute_prob.py does with PairRM's scores, temperature 1);
  - `judge`: any chat model asked which of two samples is better, both orders averaged
    (roost.judges.pairwise); the policy itself by default. SPPO only knows PairRM;
  - `verifier`: Bradley-Terry on verifiable rewards (roost.scorers.verifier: 1 if math-verify
    finds the final `\\boxed{}` answer right, else 0, plus an optional format term and a
    tie-break term far below any reward difference), on problems with gold answers
    (`prompts: {path, answer_column, convention, instruction}`, roost.synthesizers.common.prompted).
    `all_scores` holds the verifier's rewards, the rows carry the verdicts (VERIFIER_COLUMNS),
    and a prompt whose graded samples all have the same reward (all right or all wrong) is a
    reject, `all_correct` / `all_wrong`: a tie-break alone makes no pair;
- win rate of i = the mean of row i over the usable samples, the 0.5 self term included
  (SPPO: `sum_j P[w][j] / 5`); chosen = the highest win rate, rejected = the lowest. Under
  Bradley-Terry the win rate rises with the reward, so this is SPPO's argmax/argmin of the
  scores; under a judge it is the Copeland-like average SPPO's estimator asks for;
- SPPO's columns: `chosen_probs` = P[w][l], `chosen_probs_win` = win rate of w,
  `chosen_probs_lose` = win rate of l; plus the whole matrix (`probability`, as SPPO's
  `_generated` set), every sample, its reward (Bradley-Terry) and token count.

Samples that are truncated, empty or broken (the shared RESPONSE_RULES), that the reward
model cannot score, or whose judge questions cannot be read (too long for the judge) are left
out of the matrix: their rows and columns are null, and the win rates are over the rest.
Prompts with fewer than two usable samples, with all win rates tied, or whose best and worst
samples are the same text, go to rejects with the reason.

Two forms of the same pairs:
- data/: TRL's explicit-prompt form (`prompt`; `chosen` / `rejected` = one assistant message),
  what DPOTrainer reads as is;
- sppo/ (written by `finish`): exactly SPPO's five columns, `chosen` / `rejected` as whole
  conversations (SPPO's trainer takes the prompt from `chosen[:-1]`), `chosen_probs`,
  `chosen_probs_win`, `chosen_probs_lose`. `roost iterate` trains on it with `subset: sppo`.

Prompts come from a dataset or from Magpie, as for reward_pairs (both are PromptedSynthesizers:
input, shard plan, system prompt and Magpie are shared).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Sequence, Union

import pyarrow as pa
from pydantic import Field

from roost.config import SamplingConfig, Strict
from roost.dataset.writer import Reject
from roost.engines.config import EngineConfig, RewardModelConfig
from roost.judges.pairwise import PairwiseJudgeConfig
from roost.report.panels import Panel
from roost.schemas import MESSAGES, PREFERENCE_ROWS, row_id
from roost.scorers.verifier import VERIFIER_COLUMNS, VerifierConfig, same_outcome, verifier_columns
from roost.synthesizers.base import SYNTHESIZERS, Shard, ShardOutput, SynthesizerConfig
from roost.synthesizers.common.prompted import RESPONSE_RULES, SAMPLED, PromptedSynthesizer, PromptSource

PROB_COLUMNS = ("chosen_probs", "chosen_probs_win", "chosen_probs_lose")

SPPO_ROWS = PREFERENCE_ROWS.extend([
    pa.field("prompt_id", pa.string()),  # the input row (or Magpie conversation) the prompt came from
    pa.field("chosen_probs", pa.float64()),  # P[chosen][rejected]
    pa.field("chosen_probs_win", pa.float64()),  # win rate of chosen: mean of its row, self term 0.5 included
    pa.field("chosen_probs_lose", pa.float64()),  # win rate of rejected
    pa.field("probability", pa.list_(pa.list_(pa.float64()))),  # K x K, P[i][j] = P(i beats j); null: left out
    pa.field("win_rates", pa.list_(pa.float64())),
    pa.field("all_responses", pa.list_(pa.string())),
    pa.field("all_scores", pa.list_(pa.float64())),  # rewards (bradley_terry, verifier); null for a judge
    pa.field("all_tokens", pa.list_(pa.int64())),
    pa.field("preference_model", pa.string()),
    pa.field("preference_model_revision", pa.string()),
    pa.field("preference_kind", pa.string()),  # bradley_terry / judge / verifier
    pa.field("model_revision", pa.string()),
    pa.field("sampling", SAMPLED),
])
VERIFIED_SPPO_ROWS = SPPO_ROWS.extend(VERIFIER_COLUMNS)  # the rows of a verifier-preference build

# uclaml/SPPO's training data, column for column (compute_prob.py's prepare_score).
SPPO_SUBSET = pa.schema([pa.field("chosen", MESSAGES), pa.field("rejected", MESSAGES),
                         *(pa.field(c, pa.float64()) for c in PROB_COLUMNS)])

TIE = 1e-12  # win rates closer than this are tied


# -- config --------------------------------------------------------------------------------------


class BradleyTerryPreference(Strict):
    """P(i beats j) = sigmoid((r_i - r_j) / temperature) from a scalar reward model."""

    kind: Literal["bradley_terry"] = "bradley_terry"
    reward_model: RewardModelConfig
    temperature: float = Field(1.0, gt=0)


class JudgePreference(PairwiseJudgeConfig):
    """A chat model as a pairwise judge (roost.judges.pairwise); no model: the policy judges."""

    kind: Literal["judge"] = "judge"


class VerifierPreference(VerifierConfig):
    """P(i beats j) = sigmoid((v_i - v_j) / temperature), v = the verifier's reward plus its
    tie-break term (roost.scorers.verifier)."""

    temperature: float = Field(1.0, gt=0)


class SppoConfig(SynthesizerConfig):
    kind: Literal["sppo"] = "sppo"
    prompts: PromptSource
    k: int = Field(5, ge=2, le=64)  # samples per prompt
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_p=0.9, max_tokens=2048)  # SPPO's
    preference: Annotated[Union[BradleyTerryPreference, JudgePreference, VerifierPreference],
                          Field(discriminator="kind")]


# -- the math (pure) -----------------------------------------------------------------------------

Matrix = list[list[float | None]]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def bradley_terry(rewards: Sequence[float | None], temperature: float = 1.0) -> Matrix:
    """P[i][j] = sigmoid((r_i - r_j) / T); P[j][i] = 1 - P[i][j]; None rows/columns for None rewards."""
    k = len(rewards)
    probs: Matrix = [[None] * k for _ in range(k)]
    for i, ri in enumerate(rewards):
        if ri is None:
            continue
        probs[i][i] = 0.5
        for j in range(i + 1, k):
            if rewards[j] is not None:
                p = _sigmoid((ri - rewards[j]) / temperature)
                probs[i][j], probs[j][i] = p, 1.0 - p
    return probs


def complete(probs: Matrix) -> tuple[Matrix, list[int]]:
    """The matrix over the largest set found by dropping, one at a time, the sample with the
    most missing entries (ties: the later one) until no entry among the rest is missing;
    dropped samples' rows and columns become None. Returns it and the dropped indices."""
    k = len(probs)
    keep = [i for i in range(k) if probs[i][i] is not None]
    dropped = []
    while True:
        missing = {i: sum(probs[i][j] is None for j in keep) for i in keep}
        worst = max(keep, key=lambda i: (missing[i], i), default=None)
        if worst is None or missing[worst] == 0:
            break
        keep.remove(worst)
        dropped.append(worst)
    out: Matrix = [[probs[i][j] if i in keep and j in keep else None for j in range(k)] for i in range(k)]
    return out, dropped


@dataclass(frozen=True)
class Choice:
    chosen: int
    rejected: int
    win_rates: list[float | None]
    chosen_probs: float  # P[chosen][rejected]
    chosen_probs_win: float
    chosen_probs_lose: float


def choose(probs: Matrix, texts: Sequence[str]) -> tuple[Choice | None, tuple[str, str] | None]:
    """SPPO's pair from a complete matrix over its usable samples (diagonal not None), or
    (None, (reason, detail)). Ties: the first highest, the first lowest (numpy's argmax/argmin)."""
    valid = [i for i in range(len(probs)) if probs[i][i] is not None]
    if len(valid) < 2:
        return None, ("too_few_valid", f"{len(valid)} of {len(probs)} samples usable")
    rates: list[float | None] = [None] * len(probs)
    for i in valid:
        rates[i] = sum(probs[i][j] for j in valid) / len(valid)  # type: ignore[misc]
    w = max(valid, key=lambda i: (rates[i], -i))
    lo = min(valid, key=lambda i: (rates[i], i))
    if rates[w] - rates[lo] <= TIE:
        return None, ("tied_win_rates", f"all {len(valid)} usable samples have win rate {rates[w]:.6f}")
    if texts[w] == texts[lo]:
        return None, ("identical_texts", f"the best ({w}) and worst ({lo}) samples are the same text")
    return Choice(w, lo, rates, probs[w][lo], rates[w], rates[lo]), None  # type: ignore[arg-type]


def sppo_subset(table: pa.Table) -> pa.Table:
    """SPPO's five columns from data/ rows: chosen / rejected as whole conversations."""
    prompts = table.column("prompt").to_pylist()
    cols = {name: [p + c for p, c in zip(prompts, table.column(name).to_pylist())] for name in ("chosen", "rejected")}
    cols.update({c: table.column(c).to_pylist() for c in PROB_COLUMNS})
    return pa.Table.from_pydict(cols, schema=SPPO_SUBSET)


# -- the synthesizer -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    text: str
    tokens: int
    problem: str | None  # why it is left out of the matrix (None: usable)
    finished: bool = True  # passed RESPONSE_RULES (usable text, not truncated)


@SYNTHESIZERS.register
class Sppo(PromptedSynthesizer):
    kind = "sppo"
    Config = SppoConfig
    schema = SPPO_ROWS
    report_panels = (Panel("sppo", "SPPO: chosen's win probability", "sppo", ("chosen_probs",),
                           labels={"chosen_probs": "P(chosen beats the other samples)"}),)

    def __init__(self, config: SppoConfig, recipe):
        super().__init__(config, recipe)
        self._judge = None
        if self.verifier_config() is not None:
            self.schema = VERIFIED_SPPO_ROWS  # verdict columns; other builds' rows are unchanged

    def verifier_config(self) -> VerifierPreference | None:
        return self.config.preference if self.config.preference.kind == "verifier" else None

    def check(self) -> None:
        from roost.engines import ensure_available

        pref = self.config.preference
        if pref.kind == "bradley_terry":
            from roost.scorers.reward import _hf_config, check_reward_head

            ensure_available(pref.reward_model.model, pref.reward_model.revision)
            check_reward_head(_hf_config(pref.reward_model), pref.reward_model.model, pref.reward_model.trust_remote_code)
        elif pref.kind == "judge":
            judge = pref.model or self.recipe.model
            ensure_available(judge.model, judge.revision)
            self._check_judge_tokenizer(judge)
        self._check_prompts()  # and a verifier's gold answers and tie-break model

    def _check_judge_tokenizer(self, judge: EngineConfig) -> None:
        """The judge's chat template and one-token answers, from its tokenizer alone."""
        from transformers import AutoTokenizer

        from roost.judges.pairwise import answer_token_ids, load_template

        tokenizer = AutoTokenizer.from_pretrained(judge.tokenizer or judge.model, trust_remote_code=judge.trust_remote_code,
                                                  revision=judge.revision if judge.tokenizer is None else None)
        answer_token_ids(tokenizer, load_template(self.config.preference.template))

    # -- one shard ------------------------------------------------------------------------------

    def generate(self, shard: Shard) -> ShardOutput:
        prompts, rejects, stats = self._prompts(shard)
        sampling = self.config.sampling.to_engine(n=self.config.k)
        gens = self._policy().chat([p.messages for p in prompts], sampling, seed=shard.seed,
                                   progress=f"{shard.label} samples")
        groups = [[self._sample(c) for c in gen.completions] for gen in gens]
        graded = self._graded(prompts, groups, shard)
        matrices, scores = self._matrices(prompts, groups, graded, shard)
        rows, unusable = [], Counter(s.problem for g in groups for s in g if s.problem)
        for p, group, probs, score, grades in zip(prompts, groups, matrices, scores, graded):
            probs, dropped = complete(probs)
            unusable["judge_unreadable"] += len(dropped)
            choice, problem = self._choose(group, probs, dropped, grades, p.gold)
            if problem:
                record = {"prompt": p.messages, "prompt_id": p.id, "responses": [s.text for s in group],
                          "problems": [s.problem for s in group], "scores": score, "probability": probs}
                if grades is not None:
                    record.update(gold_answer=p.gold.text, verdicts=[g.correct if g else None for g in grades])
                rejects.append(Reject("sppo", problem[0], record, detail=problem[1]))
            else:
                rows.append(self._row(p, group, probs, score, choice, shard, grades))
        stats.update(prompts=len(prompts), responses=sum(map(len, groups)), pairs=len(rows),
                     unusable_responses={k: v for k, v in unusable.items() if v})
        return ShardOutput(rows, rejects, stats)

    @staticmethod
    def _sample(c) -> Sample:
        text = c.text.strip()
        drop = RESPONSE_RULES.first_drop({"text": text, "finish_reason": c.finish_reason})
        return Sample(text, c.n_tokens, drop.reason if drop else None, drop is None)

    def _graded(self, prompts, groups, shard) -> list[list | None]:
        """The verifier's Graded of every usable sample (None: left out), or None per group
        when no verifier is the preference."""
        if self.verifier_config() is None:
            return [None] * len(groups)
        usable = [[(s.text, s.tokens) if s.problem is None else None for s in group] for group in groups]
        return self._grade(prompts, usable, f"{shard.label} verifier")

    def _matrices(self, prompts, groups, graded, shard) -> tuple[list[Matrix], list[list[float | None] | None]]:
        """The win matrix of every group (one batched preference call for the shard), and the
        rewards (Bradley-Terry, verifier) or None (judge). Samples the model could not score are marked."""
        pref = self.config.preference
        if pref.kind == "verifier":
            return ([bradley_terry([g.value if g else None for g in grades], pref.temperature) for grades in graded],
                    [[g.reward if g else None for g in grades] for grades in graded])
        if pref.kind == "judge":
            asked = [(p.messages, [s.text if s.problem is None else None for s in group])
                     for p, group in zip(prompts, groups)]
            return [m.probs for m in self._judge_model().win_matrices(asked)], [None] * len(groups)
        convs = [p.messages + [{"role": "assistant", "content": s.text}]
                 for p, group in zip(prompts, groups) for s in group if s.problem is None]
        rewards = iter(self._reward().score(convs, progress=f"{shard.label} rewards") if convs else [])
        scores = []
        for group in groups:
            values = []
            for n, s in enumerate(group):
                r = next(rewards) if s.problem is None else None
                if r is not None and r.value is None:
                    group[n] = Sample(s.text, s.tokens, "reward_null", s.finished)
                values.append(r.value if r is not None else None)
            scores.append(values)
        return [bradley_terry(v, pref.temperature) for v in scores], scores

    def _choose(self, group: list[Sample], probs: Matrix, dropped: list[int], graded=None, gold=None):
        if not any(s.finished for s in group):
            return None, ("all_truncated_or_empty", f"{len(group)} samples, none finished with usable text "
                                                    "(truncated, empty or broken)")
        usable = [g for g in graded or () if g is not None]
        if len(usable) >= 2 and len({g.reward for g in usable}) == 1:  # tie-breaks alone: no pair
            return None, same_outcome(usable, gold)
        choice, problem = choose(probs, [s.text for s in group])
        if problem and problem[0] == "too_few_valid":
            why = Counter(s.problem for s in group if s.problem)
            why.update({"judge_unreadable": len(dropped)} if dropped else {})
            problem = (problem[0], f"{problem[1]} ({', '.join(f'{k}: {v}' for k, v in sorted(why.items()))})")
        return choice, problem

    def _row(self, p, group, probs, score, choice: Choice, shard: Shard, graded=None) -> dict:
        chosen = [{"role": "assistant", "content": group[choice.chosen].text}]
        rejected = [{"role": "assistant", "content": group[choice.rejected].text}]
        rev = self._revisions()
        return {
            "id": row_id(p.messages, chosen, rejected), "prompt": p.messages, "chosen": chosen, "rejected": rejected,
            "method": "sppo", "model": self.recipe.model.model, "iteration": self.recipe.iteration,
            "prompt_id": p.id, "chosen_probs": choice.chosen_probs, "chosen_probs_win": choice.chosen_probs_win,
            "chosen_probs_lose": choice.chosen_probs_lose, "probability": probs, "win_rates": choice.win_rates,
            "all_responses": [s.text for s in group], "all_scores": score, "all_tokens": [s.tokens for s in group],
            "preference_model": rev["preference_model"], "preference_model_revision": rev["preference"],
            "preference_kind": self.config.preference.kind, "model_revision": rev["model"],
            "sampling": {**self.config.sampling.model_dump(), "n": self.config.k, "seed": shard.seed},
            **(verifier_columns(p.gold, graded, choice.chosen, choice.rejected) if graded is not None else {}),
        }

    # -- models -------------------------------------------------------------------------------

    def _reward(self):
        from roost.scorers.reward import get_reward_scorer

        return get_reward_scorer(self.config.preference.reward_model)

    def _judge_model(self):
        if self._judge is None:
            from roost.engines import get_engine
            from roost.judges.pairwise import PairwiseJudge, load_template

            pref = self.config.preference
            engine = get_engine(pref.model) if pref.model is not None else self._policy()
            template = load_template(pref.template) if pref.template else None
            self._judge = PairwiseJudge(engine, template, source=pref.template)
        return self._judge

    def _preference_describe(self) -> dict[str, Any]:
        pref = self.config.preference
        if pref.kind == "judge":
            return self._judge_model().describe()
        if pref.kind == "verifier":
            return {"kind": "verifier", "rule": "P[i][j] = sigmoid((v_i - v_j) / temperature), v = reward + tie-break",
                    "temperature": pref.temperature, "verifier": self._verifier().describe()}
        return {"kind": "bradley_terry", "rule": "P[i][j] = sigmoid((r_i - r_j) / temperature)",
                "temperature": pref.temperature, "reward_model": self._reward().describe()}

    def _revisions(self) -> dict[str, str | None]:
        if not hasattr(self, "_rev"):
            described = self._preference_describe()
            model = described.get("verifier") or described.get("reward_model", described)
            self._rev = {"model": self._revision(),
                         "preference_model": model.get("model"), "preference": model.get("revision")}
        return self._rev

    # -- whole build ----------------------------------------------------------------------------

    def finish(self, writer) -> dict[str, Any]:
        """The sppo/ subset (SPPO's own columns), shard for shard, and the build's win-rate means."""
        import pyarrow.parquet as pq

        from roost.dataset.writer import atomic_write_table

        sums, n = Counter(), 0
        for i in range(writer.num_shards):
            table = pq.read_table(writer.data_path(i), columns=["prompt", "chosen", "rejected", *PROB_COLUMNS])
            atomic_write_table(writer.root / "sppo" / writer.data_path(i).name, sppo_subset(table))
            n += table.num_rows
            for c in PROB_COLUMNS:
                sums[c] += sum(table.column(c).to_pylist())
        means = {f"mean_{c}": (sums[c] / n if n else None) for c in PROB_COLUMNS}
        return {"subsets": {"sppo": f"sppo/{writer.split}-*.parquet"}, "sppo": {"pairs": n, **means}}

    def provenance(self) -> dict[str, Any]:
        out = {"sampling": {**self.config.sampling.model_dump(), "n": self.config.k},
               "preference": self._preference_describe()}
        return {**out, **self._prompt_provenance()}
