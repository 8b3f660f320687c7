"""Magpie: an aligned model writes the user turn itself, then answers it.

For each conversation: render the pre-query template (everything before a user message),
let the model complete it up to its end-of-turn marker -> the instruction; render the
conversation through the chat template with a generation prompt -> the response; repeat
for `n_turns`. Identical prompts are sent once with vLLM's `n`, and every stage of a shard
is a single engine call, so generation runs at engine speed.

Broken turns (truncated, empty, not a request, template leaks, duplicates) are dropped
with their reason; the shard tops itself up for `max_rounds` rounds to reach its quota.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from roost.engines.base import Completion, Engine, Sampling, render_chat
from roost.filters.base import FilterStep
from roost.recipe import MagpieConfig, SamplingConfig
from roost.schemas import row_id
from roost.synthesizers import instruction_rules as rules
from roost.synthesizers.magpie_prompts import MULTI_TURN_PROMPT, TASK_PROMPTS, language_prompt
from roost.synthesizers.templates import first_turn_template, pre_query, turn_markers
from roost.writer import Reject


@dataclass
class Conversation:
    system_key: str | None
    system_text: str | None
    messages: list[dict] = field(default_factory=list)
    pre_query_template: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class ShardOutput:
    rows: list[dict]
    rejects: list[Reject]
    stats: dict[str, Any]


class MagpieSynthesizer:
    def __init__(self, config: MagpieConfig, engine: Engine, *, model_id: str, seed: int = 0):
        self.config = config
        self.engine = engine
        self.model_id = model_id
        self.seed = seed
        self.tokenizer = engine.tokenizer
        self.markers = turn_markers(self.tokenizer)
        stop = self.markers.stop + tuple(config.extra_stop)
        self.instruction_sampling = _sampling(config.instruction, stop, self.markers.stop_token_ids)
        self.response_sampling = _sampling(config.response, self.markers.stop, self.markers.stop_token_ids)
        self.system_prompts = self._system_prompt_choices()
        self._generated_tokens = 0

    # -- public ---------------------------------------------------------------------------

    def generate(self, quota: int, rng: random.Random, *, label: str = "") -> ShardOutput:
        """Up to `quota` finished conversations, plus the rejects met on the way."""
        started = time.perf_counter()
        self._generated_tokens = 0
        rows: list[dict] = []
        rejects: list[Reject] = []
        dedup = rules.DuplicateInstruction()
        rounds = 0
        while len(rows) < quota and rounds < self.config.max_rounds:
            rounds += 1
            convs = [self._new_conversation(rng) for _ in range(quota - len(rows))]
            for turn in range(self.config.n_turns):
                convs = self._user_turn(convs, turn, rejects, dedup, f"{label} turn {turn + 1} instructions")
                convs = self._assistant_turn(convs, rejects, f"{label} turn {turn + 1} responses")
            rows.extend(self._row(c) for c in convs)
        stats = {
            "rounds": rounds,
            "seconds": round(time.perf_counter() - started, 3),
            "input_tokens": sum(r["input_tokens"] for r in rows),
            "output_tokens": sum(r["output_tokens"] for r in rows),
            "generated_tokens": self._generated_tokens,  # including turns that were rejected
            "system_prompt_keys": dict(Counter(r["system_prompt_key"] for r in rows if r["system_prompt_key"])),
        }
        return ShardOutput(rows, rejects, stats)

    def provenance(self) -> dict[str, Any]:
        return {
            "instruction_sampling": self.instruction_sampling.record(),
            "response_sampling": self.response_sampling.record(),
            "first_turn_template": first_turn_template(
                self.tokenizer, self.model_id, None, self.config.pre_query_template
            ),
            "system_prompts": {k: {"text": t, "weight": w} for k, t, w in self.system_prompts},
        }

    # -- turns ----------------------------------------------------------------------------

    def _user_turn(self, convs, turn, rejects, dedup, label) -> list[Conversation]:
        prompts = [self._instruction_prompt(c, turn) for c in convs]
        completions = self._generate_grouped(prompts, self.instruction_sampling, label)
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
        )
        survivors = []
        for conv, prompt, completion in zip(convs, prompts, completions):
            text = completion.text.strip()
            drop = step.first_drop({"text": text, "finish_reason": completion.finish_reason})
            if drop:
                rejects.append(self._reject(conv, "magpie.instruction", drop, completion, turn))
                continue
            if turn == 0:
                dedup.accept(text)
                conv.pre_query_template = prompt
            conv.messages.append({"role": "user", "content": text})
            conv.input_tokens += completion.n_tokens
            survivors.append(conv)
        return survivors

    def _assistant_turn(self, convs, rejects, label) -> list[Conversation]:
        prompts = [self._response_prompt(c) for c in convs]
        gens = self.engine.generate(prompts, self.response_sampling, progress=label) if prompts else []
        step = FilterStep([
                rules.Truncated("response_truncated"),
                rules.Empty("empty_response"),
                rules.BrokenText("broken_response"),
            ], "magpie.response")
        survivors = []
        for conv, gen in zip(convs, gens):
            completion = gen.completions[0]
            self._generated_tokens += completion.n_tokens
            text = completion.text.strip()
            drop = step.first_drop({"text": text, "finish_reason": completion.finish_reason})
            if drop:
                rejects.append(self._reject(conv, "magpie.response", drop, completion, None))
                continue
            conv.messages.append({"role": "assistant", "content": text})
            conv.output_tokens += completion.n_tokens
            survivors.append(conv)
        return survivors

    def _generate_grouped(self, prompts: list[str], sampling: Sampling, label: str) -> list[Completion]:
        """One request per distinct prompt with n = its count; results back in input order."""
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        if not groups:
            return []
        unique = list(groups)
        gens = self.engine.generate(unique, [sampling.with_n(len(groups[p])) for p in unique], progress=label)
        out: list[Completion | None] = [None] * len(prompts)
        for prompt, gen in zip(unique, gens):
            for i, completion in zip(groups[prompt], gen.completions):
                out[i] = completion
                self._generated_tokens += completion.n_tokens
        return out  # type: ignore[return-value]

    # -- prompts --------------------------------------------------------------------------

    def _instruction_prompt(self, conv: Conversation, turn: int) -> str:
        if turn == 0:
            return first_turn_template(
                self.tokenizer, self.model_id, conv.system_text, self.config.pre_query_template
            )
        system = conv.system_text or MULTI_TURN_PROMPT
        return pre_query(self.tokenizer, [{"role": "system", "content": system}, *conv.messages])

    def _response_prompt(self, conv: Conversation) -> str:
        return render_chat(self.tokenizer, self._training_messages(conv), add_generation_prompt=True)

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

    def _row(self, conv: Conversation) -> dict:
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
                "instruction": _sampling_record(self.config.instruction),
                "response": _sampling_record(self.config.response),
                "seed": self.seed,
            },
            "input_tokens": conv.input_tokens,
            "output_tokens": conv.output_tokens,
        }

    def _reject(self, conv, stage, drop, completion: Completion, turn) -> Reject:
        record = {
            "messages": list(conv.messages),
            "system_prompt_key": conv.system_key,
            "raw_text": completion.text,
            "finish_reason": completion.finish_reason,
            "turn": turn,
        }
        return Reject(stage, drop.reason, record, detail=drop.detail)


def _sampling(cfg: SamplingConfig, stop, stop_token_ids) -> Sampling:
    return Sampling(
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        min_p=cfg.min_p,
        repetition_penalty=cfg.repetition_penalty,
        stop=tuple(stop),
        stop_token_ids=tuple(stop_token_ids),
    )


def _sampling_record(cfg: SamplingConfig) -> dict:
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens}
