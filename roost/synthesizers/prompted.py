"""What the synthesizers that sample answers to prompts share (reward_pairs, sppo): where the
prompts come from, how a build is cut into shards over them, and the rules a sampled answer
must pass to be used.

Prompts come from a dataset (Parquet, JSON Lines, `hf://`, a roost output: the conversation up
to its last user turn; shards are slices of it) or from Magpie run first in the same shard
(`prompts: {magpie: {...}}`; shards are quotas). Bad input rows go to rejects with the reason.
"""
from __future__ import annotations

import pyarrow as pa
from pydantic import model_validator

from roost.config import DatasetInput
from roost.filters.base import FilterStep
from roost.schemas.rows import SAMPLING
from roost.synthesizers import instruction_rules as rules
from roost.synthesizers.base import InputRows, Shard, Synthesizer
from roost.synthesizers.magpie import MagpieConfig
from roost.writer import Reject

# The rules Magpie applies to its own responses: one rule set for generated text.
RESPONSE_RULES = FilterStep([rules.Truncated("truncated"), rules.Empty("empty"), rules.BrokenText("broken_text")])

# The sampling of a row's answers as recorded on it: SamplingConfig's fields, n and the shard's seed.
SAMPLED = pa.struct(list(SAMPLING) + [pa.field("n", pa.int64()), pa.field("seed", pa.int64())])


class PromptSource(DatasetInput):
    """The prompts: a dataset (`path`; SFT or preference rows, the conversation up to its last
    user turn is the prompt) or Magpie run first in each shard (`magpie`)."""

    magpie: MagpieConfig | None = None
    system_prompt: str | None = None  # put before every prompt that has no system message

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.magpie is None):
            raise ValueError("give exactly one of prompts.path and prompts.magpie")
        return self


class PromptedSynthesizer(Synthesizer):
    """A synthesizer whose config has `prompts: PromptSource` and that samples the policy on them."""

    def __init__(self, config, recipe):
        super().__init__(config, recipe)
        self._source = None
        self._magpie = None

    def source(self) -> InputRows:
        if self._source is None:
            self._source = InputRows(self.config.prompts, accepts=("sft", "preference"), who=self.kind)
        return self._source

    def plan(self) -> list[Shard]:
        if self.config.prompts.magpie is not None:
            return super().plan()
        return self.slices(self.source().total)

    def _prompts(self, shard: Shard) -> tuple[list[tuple[str, list[dict]]], list[Reject], dict]:
        """(prompt id, messages up to the last user turn) for this shard, and the rejects."""
        system = self.config.prompts.system_prompt
        out, rejects, stats = [], [], {}
        if self.config.prompts.magpie is not None:
            made = self._magpie_prompts().generate(shard.quota, shard.seed, label=shard.label, prompts_only=True)
            rejects.extend(made.rejects)
            stats["magpie"] = made.stats
            pairs = [(row["id"], row["messages"]) for row in made.rows]
        else:
            pairs = []
            for row, parsed, problem, rid in self.source().rows(shard.start, shard.stop):
                if problem:
                    rejects.append(Reject("prompts", "bad_input", row, id=rid, detail=problem))
                else:
                    pairs.append((rid, parsed.prompt))
        for pid, prompt in pairs:
            if system and prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": system}, *prompt]
            out.append((pid, prompt))
        return out, rejects, stats

    def _magpie_prompts(self):
        if self._magpie is None:
            from roost.synthesizers.magpie import Magpie

            self._magpie = Magpie(self.config.prompts.magpie, self._policy(), model_id=self.recipe.model.model)
        return self._magpie

