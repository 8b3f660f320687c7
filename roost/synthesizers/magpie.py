"""Magpie: an aligned model writes the user turn itself, then answers it.

For each conversation: render the pre-query template (everything before a user message),
let the model complete it up to its end-of-turn marker -> the instruction; render the
conversation through the chat template with a generation prompt -> the response; repeat
for `n_turns`. Identical prompts are sent once with vLLM's `n` (the engine groups them),
and every stage of a shard is a single engine call, so generation runs at engine speed.

Broken turns (truncated, empty, not a request, template leaks, duplicates) are dropped
with their reason; the shard tops itself up for `max_rounds` rounds to reach its quota.
Every engine call gets a seed derived from the shard's seed, the round, the turn and the
stage, so a shard's rows do not depend on what ran before it in the process.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from roost.algorithms.base import FilterStep
from roost.config import SamplingConfig, Strict
from roost.dataset.writer import Reject
from roost.engines.base import Completion, Engine, derive_seed, generate_grouped, render_chat
from roost.schemas import SFT_ROWS, row_id
from roost.synthesizers.base import SYNTHESIZERS, Shard, ShardOutput, Synthesizer, SynthesizerConfig
from roost.synthesizers.common import instruction_rules as rules
from roost.synthesizers.common.magpie_prompts import MULTI_TURN_PROMPT, TASK_PROMPTS, language_prompt
from roost.synthesizers.common.templates import first_turn_template, pre_query, turn_markers


class WeightedPrompt(Strict):
    text: str = Field(min_length=1)
    weight: float = Field(1.0, gt=0.0)


class MagpieConfig(SynthesizerConfig):
    kind: Literal["magpie"] = "magpie"
    n_turns: int = Field(1, ge=1, le=16)
    # One prompt, or a weighted mix {key: {text, weight}} (or {key: text}, weight 1).
    system_prompt: str | dict[str, WeightedPrompt | str] | None = None
    include_system_prompt: bool = False
    task: Literal["math", "code", "translation"] | None = None
    language: str | None = Field(None, min_length=2)
    pre_query_template: str = "auto"
    instruction: SamplingConfig = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=512)
    response: SamplingConfig = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=1024)
    extra_stop: list[str] = Field(default_factory=list)
    min_instruction_chars: int = Field(8, ge=1)
    max_rounds: int = Field(3, ge=1, le=20)

    @field_validator("system_prompt")
    @classmethod
    def _non_empty_mix(cls, v):
        if isinstance(v, dict) and not v:
            raise ValueError("a system prompt mix needs at least one entry")
        return v


@dataclass
class Conversation:
    system_key: str | None
    system_text: str | None
    messages: list[dict] = field(default_factory=list)
    pre_query_template: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0


class Magpie:
    """The method over one engine: `generate` makes conversations, `generate_prompts` makes
    only the user side (conversations ending in a user turn, for preference synthesizers)."""

    def __init__(self, config: MagpieConfig, engine: Engine, *, model_id: str):
        self.config = config
        self.engine = engine
        self.model_id = model_id
        self.tokenizer = engine.tokenizer
        self.markers = turn_markers(self.tokenizer)
        self.instruction_sampling = config.instruction.to_engine(
            stop=self.markers.stop + tuple(config.extra_stop), stop_token_ids=self.markers.stop_token_ids)
        self.response_sampling = config.response.to_engine(
            stop=self.markers.stop, stop_token_ids=self.markers.stop_token_ids)
        self.system_prompts = self._system_prompt_choices()
        self._generated_tokens = 0

    def generate(self, quota: int, seed: int, *, label: str = "", prompts_only: bool = False) -> ShardOutput:
        """Up to `quota` finished conversations, plus the rejects met on the way. With
        `prompts_only`, the last user turn gets no answer."""
        started = time.perf_counter()
        rng = random.Random(seed)
        self._generated_tokens = 0
        convs_done: list[Conversation] = []
        rejects: list[Reject] = []
        dedup = rules.DuplicateInstruction()
        rounds = 0
        while len(convs_done) < quota and rounds < self.config.max_rounds:
            rounds += 1
            convs = [self._new_conversation(rng) for _ in range(quota - len(convs_done))]
            for turn in range(self.config.n_turns):
                step_seed = derive_seed(seed, rounds, turn)
                convs = self._user_turn(convs, turn, rejects, dedup, step_seed, f"{label} turn {turn + 1} instructions")
                if prompts_only and turn == self.config.n_turns - 1:
                    break
                convs = self._assistant_turn(convs, rejects, step_seed, f"{label} turn {turn + 1} responses")
            convs_done.extend(convs)
        rows = [self._row(c, seed) for c in convs_done]
        stats = {
            "rounds": rounds,
            "seconds": round(time.perf_counter() - started, 3),
            "input_tokens": sum(c.input_tokens for c in convs_done),
            "output_tokens": sum(c.output_tokens for c in convs_done),
            "generated_tokens": self._generated_tokens,  # including turns that were rejected
            "system_prompt_keys": dict(Counter(c.system_key for c in convs_done if c.system_key)),
        }
        return ShardOutput(rows, rejects, stats)

    def provenance(self) -> dict[str, Any]:
        return {
            "sampling": {"instruction": self.instruction_sampling.record(), "response": self.response_sampling.record()},
            "first_turn_template": first_turn_template(
                self.tokenizer, self.model_id, None, self.config.pre_query_template
            ),
            "system_prompts": {k: {"text": t, "weight": w} for k, t, w in self.system_prompts},
        }

    # -- turns ----------------------------------------------------------------------------

    def _user_turn(self, convs, turn, rejects, dedup, seed, label) -> list[Conversation]:
        prompts = [self._instruction_prompt(c, turn) for c in convs]
        completions = generate_grouped(self.engine, prompts, self.instruction_sampling, seed=seed, progress=label)
        self._generated_tokens += sum(c.n_tokens for c in completions)
        step = FilterStep(
            [
                rules.Truncated(),
                rules.Empty(),
                rules.BrokenText(),
                rules.TooShort(self.config.min_instruction_chars),
                rules.NotARequest(),
                rules.TemplateLeak(self.markers.stop),
                *([dedup] if turn == 0 else []),
            ],
            stage="magpie.instruction",
            record=lambda item: self._record(item["conv"], item["completion"], turn),
            row_id=lambda item: None,
        )
        items = [{"text": c.text.strip(), "finish_reason": c.finish_reason, "conv": conv, "prompt": p, "completion": c}
                 for conv, p, c in zip(convs, prompts, completions)]
        result = step.run(items)
        rejects.extend(result.rejects)
        for item in result.kept:
            conv = item["conv"]
            if turn == 0:
                conv.pre_query_template = item["prompt"]
            conv.messages.append({"role": "user", "content": item["text"]})
            conv.input_tokens += item["completion"].n_tokens
        return [item["conv"] for item in result.kept]

    def _assistant_turn(self, convs, rejects, seed, label) -> list[Conversation]:
        prompts = [render_chat(self.tokenizer, self._training_messages(c), add_generation_prompt=True) for c in convs]
        gens = self.engine.generate(prompts, self.response_sampling, seed=seed, progress=label) if prompts else []
        completions = [g.completions[0] for g in gens]
        self._generated_tokens += sum(c.n_tokens for c in completions)
        step = FilterStep(
            [rules.Truncated("response_truncated"), rules.Empty("empty_response"), rules.BrokenText("broken_response")],
            stage="magpie.response",
            record=lambda item: self._record(item["conv"], item["completion"], None),
            row_id=lambda item: None,
        )
        items = [{"text": c.text.strip(), "finish_reason": c.finish_reason, "conv": conv, "completion": c}
                 for conv, c in zip(convs, completions)]
        result = step.run(items)
        rejects.extend(result.rejects)
        for item in result.kept:
            item["conv"].messages.append({"role": "assistant", "content": item["text"]})
            item["conv"].output_tokens += item["completion"].n_tokens
        return [item["conv"] for item in result.kept]

    # -- prompts --------------------------------------------------------------------------

    def _instruction_prompt(self, conv: Conversation, turn: int) -> str:
        if turn == 0:
            return first_turn_template(
                self.tokenizer, self.model_id, conv.system_text, self.config.pre_query_template
            )
        system = conv.system_text or MULTI_TURN_PROMPT
        return pre_query(self.tokenizer, [{"role": "system", "content": system}, *conv.messages])

    def _training_messages(self, conv: Conversation) -> list[dict]:
        if self.config.include_system_prompt and conv.system_text:
            return [{"role": "system", "content": conv.system_text}, *conv.messages]
        return list(conv.messages)

    def _system_prompt_choices(self) -> list[tuple[str, str, float]]:
        c = self.config
        if c.task:
            choices = [(f"task:{c.task}", TASK_PROMPTS[c.task], 1.0)]
        elif isinstance(c.system_prompt, str):
            choices = [("system_prompt", c.system_prompt, 1.0)]
        elif isinstance(c.system_prompt, dict):
            choices = [
                (key, p, 1.0) if isinstance(p, str) else (key, p.text, p.weight)
                for key, p in c.system_prompt.items()
            ]
        else:
            choices = []
        if c.language:
            lang = language_prompt(c.language)
            choices = [(k, f"{t}\n{lang}", w) for k, t, w in choices] or [(f"language:{c.language}", lang, 1.0)]
        return choices

    def _new_conversation(self, rng: random.Random) -> Conversation:
        if not self.system_prompts:
            return Conversation(None, None)
        key, text, _ = rng.choices(self.system_prompts, weights=[w for *_, w in self.system_prompts])[0]
        return Conversation(key, text)

    # -- rows -----------------------------------------------------------------------------

    def _row(self, conv: Conversation, seed: int) -> dict:
        messages = self._training_messages(conv)
        return {
            "id": row_id(messages),
            "messages": messages,
            "n_turns": self.config.n_turns,
            "system_prompt_key": conv.system_key,
            "task": self.config.task,
            "language": self.config.language,
            "model": self.model_id,
            "pre_query_template": conv.pre_query_template,
            "generation": {
                "instruction": self.config.instruction.model_dump(),
                "response": self.config.response.model_dump(),
                "seed": seed,
            },
            "input_tokens": conv.input_tokens,
            "output_tokens": conv.output_tokens,
        }

    def _record(self, conv: Conversation, completion: Completion, turn) -> dict:
        return {
            "messages": list(conv.messages),
            "system_prompt_key": conv.system_key,
            "raw_text": completion.text,
            "finish_reason": completion.finish_reason,
            "turn": turn,
        }


@SYNTHESIZERS.register
class MagpieSynthesizer(Synthesizer):
    """SFT conversations by Magpie; shards are quotas of `output.shard_size` rows."""

    kind = "magpie"
    Config = MagpieConfig
    schema = SFT_ROWS

    def __init__(self, config: MagpieConfig, recipe):
        super().__init__(config, recipe)
        self._magpie: Magpie | None = None

    def magpie(self) -> Magpie:
        if self._magpie is None:
            from roost.engines import get_engine

            self._magpie = Magpie(self.config, get_engine(self.recipe.model), model_id=self.recipe.model.model)
        return self._magpie

    def generate(self, shard: Shard) -> ShardOutput:
        return self.magpie().generate(shard.quota, shard.seed, label=shard.label)

    def provenance(self) -> dict[str, Any]:
        return self.magpie().provenance()
