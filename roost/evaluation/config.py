"""`roost eval` recipes: which model, on which problems, sampled how."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from roost.config import SamplingConfig, Strict, fingerprint, throughput
from roost.engines.config import EngineConfig, RewardModelConfig
from roost.judges.pairwise import PairwiseJudgeConfig
from roost.reasoning import prompting
from roost.reasoning.problems import Problems
from roost.synthesizers.common.prompted import PromptSource


class EvalSet(Problems):
    """Problems with gold answers; rows [start, stop) of the input (held-out problems are
    usually a slice: `start: 2000, stop: 2500`)."""

    start: int = Field(0, ge=0)
    stop: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _range(self):
        if self.stop is not None and self.stop <= self.start:
            raise ValueError(f"stop ({self.stop}) must be greater than start ({self.start})")
        return self


class EvalFormat(Strict):
    """How a problem is put to the model (Step-DPO's evaluation prompt by default)."""

    instruction: str = prompting.INSTRUCTION  # appended to the problem in the user turn
    assistant_prefix: str = prompting.OPENER + prompting.HEADER.format(k=1)  # the assistant turn starts so
    header: str = prompting.HEADER  # reference solutions' steps are counted at this header


class EvalSettings(Strict):
    """What is evaluated and how, for any model (`roost eval`'s recipe, `roost iterate`'s `loop.eval`)."""

    problems: EvalSet
    format: EvalFormat = EvalFormat()
    greedy: bool = True  # one greedy solution per problem (pass@1)
    samples: int = Field(4, ge=0, le=256)  # sampled solutions per problem (sampled accuracy, maj@k, pass@k)
    sampling: SamplingConfig = SamplingConfig(temperature=0.8, top_p=0.95, max_tokens=512)
    max_tokens: int | None = Field(None, ge=1)  # greedy solutions' limit; default: sampling.max_tokens
    pass_k: list[int] | None = None  # default: [1, samples]
    seed: int = 0
    chunk_size: int = throughput(500, ge=1)  # problems per resumable part

    @model_validator(mode="after")
    def _something(self):
        if not self.greedy and not self.samples:
            raise ValueError("greedy is off and samples is 0: nothing to evaluate")
        bad = [k for k in self.pass_k or [] if k < 1 or k > self.samples]
        if bad:
            raise ValueError(f"pass_k: {bad[0]} is not between 1 and samples ({self.samples})")
        return self

    @property
    def ks(self) -> list[int]:
        if self.pass_k is not None:
            return sorted(set(self.pass_k))
        return sorted({1, self.samples}) if self.samples else []



# -- open-ended prompts: win rate against a reference (roost.evaluation.winrate) ------------------


class OpenEndedPrompts(PromptSource):
    """The prompts: a dataset (`path`: SFT or preference rows; the conversation up to its last
    user turn is the prompt; the assistant turn after it, or the chosen answer, is its gold
    answer), as a synthesizer's `prompts:` reads it. Magpie prompts are not a fixed set."""

    @model_validator(mode="after")
    def _fixed_set(self):
        if self.magpie is not None:
            raise ValueError("an evaluation reads a fixed set of prompts: give prompts.path, not prompts.magpie")
        return self


class ModelReference(Strict):
    """Another model answers the same prompts (e.g. the base model before training), with the
    same sampling and the same seeds."""

    model: EngineConfig


class RewardModelJudge(Strict):
    """P(model beats reference) = sigmoid((r_model - r_reference) / temperature), Bradley-Terry
    over a scalar reward model (sppo's `bradley_terry` preference)."""

    kind: Literal["reward_model"] = "reward_model"
    reward_model: RewardModelConfig
    temperature: float = Field(1.0, gt=0)


class PairwiseJudgeSpec(PairwiseJudgeConfig):
    """The pairwise judge (roost.judges.pairwise); no model: the evaluated model judges."""

    kind: Literal["pairwise"] = "pairwise"


class OpenEnded(Strict):
    """`open_ended:` of an eval recipe: the model's answer to each prompt against a reference's
    (another model's, or the dataset's own `gold` answers), judged per prompt."""

    prompts: OpenEndedPrompts
    reference: Union[Literal["gold"], ModelReference] = "gold"
    judge: Annotated[Union[RewardModelJudge, PairwiseJudgeSpec], Field(discriminator="kind")]
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=512)  # greedy by default
    max_prompts: int | None = Field(None, ge=1)  # the first N rows of prompts (default: all)

    @property
    def gold(self) -> bool:
        return self.reference == "gold"


class EvalRecipe(EvalSettings):
    name: str = "eval"
    model: EngineConfig
    problems: EvalSet | None = None  # verifiable problems (roost.evaluation.verifiable)
    open_ended: OpenEnded | None = None  # open-ended prompts (roost.evaluation.winrate)

    @model_validator(mode="wrap")
    @classmethod
    def _one_half(cls, data, handler):
        if isinstance(data, dict) and data.get("problems") is None and data.get("open_ended") is None:
            from pydantic_core import PydanticCustomError, ValidationError

            raise ValidationError.from_exception_data(cls.__name__, [{
                "type": PydanticCustomError("missing", "required: give problems (verifiable problems with gold "
                                                       "answers) or open_ended (win rate on open-ended prompts), "
                                                       "or both"),
                "loc": ("problems",), "input": data}])
        return handler(data)

    def fingerprint(self) -> str:
        """The settings, and for a local model directory its content: a model retrained into the
        same path is a new evaluation, never the old one's outcomes."""
        from pathlib import Path

        from roost.engines.common import resolve_revision

        path = Path(self.model.model).expanduser()
        return fingerprint(self, contents={"model": resolve_revision(str(path), None)} if path.is_dir() else None)


class LoopEval(EvalSettings):
    """`loop.eval` of `roost iterate`: after each training, the new model on held-out problems;
    the loop stops when `metric` gains less than `min_gain` over the model before it."""

    metric: str = "sampled_accuracy"  # greedy_accuracy, sampled_accuracy, maj@<samples>, pass@<k>
    min_gain: float = 0.0

    @model_validator(mode="after")
    def _metric(self):
        from roost.evaluation.verifiable import metric_names

        known = [m for m in metric_names(self.samples, self.ks, self.greedy) if "accuracy" in m or "@" in m]
        if self.metric not in known:
            raise ValueError(f"unknown metric {self.metric!r} for these settings; one of {', '.join(known)}")
        return self

    def recipe_for(self, model: EngineConfig) -> EvalRecipe:
        fields = self.model_dump(exclude={"metric", "min_gain"}, exclude_unset=True)
        return EvalRecipe(model=model, **fields)
