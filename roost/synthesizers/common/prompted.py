"""What the synthesizers that sample answers to prompts share (reward_pairs, sppo): where the
prompts come from, how a build is cut into shards over them, and the rules a sampled answer
must pass to be used.

Prompts come from a dataset (Parquet, JSON Lines, `hf://`, a roost output: the conversation up
to its last user turn; shards are slices of it) or from Magpie run first in the same shard
(`prompts: {magpie: {...}}`; shards are quotas). Bad input rows go to rejects with the reason.

A dataset of problems works too: its question column is the user turn (`question_column`;
by default the convention's, `question` or `problem`, when the input has no conversation),
and `instruction` is appended to the last user turn of every prompt (for math,
roost.reasoning.prompting.INSTRUCTION, Step-DPO's, which the tiny math model is trained on).
A synthesizer scored by a verifier (roost.scorers.verifier) also reads each prompt's gold
answer, here, once: from `answer_column` in the `convention` of roost.reasoning.answers
(`auto`: gsm8k with question + answer columns, math with problem + solution, else plain). A
row without a gold answer, or with one math-verify cannot parse, goes to rejects
(`no_gold_answer` / `unparsable_gold_answer`); an input without the answer column is one
line naming `prompts.answer_column`.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import pyarrow as pa
from pydantic import model_validator

from roost.algorithms.base import FilterStep
from roost.config import DatasetInput
from roost.dataset.rows import Parsed
from roost.dataset.writer import Reject
from roost.errors import ConfigError, InputError
from roost.reasoning.answers import Gold, gold_text, read_gold
from roost.reasoning.problems import detect_convention
from roost.reasoning.prompting import user_turn
from roost.schemas.rows import SAMPLING
from roost.synthesizers.base import InputRows, Shard, Synthesizer
from roost.synthesizers.common import instruction_rules as rules
from roost.synthesizers.magpie import MagpieConfig

# The rules Magpie applies to its own responses: one rule set for generated text.
RESPONSE_RULES = FilterStep([rules.Truncated("truncated"), rules.Empty("empty"), rules.BrokenText("broken_text")])

# The sampling of a row's answers as recorded on it: SamplingConfig's fields, n and the shard's seed.
SAMPLED = pa.struct(list(SAMPLING) + [pa.field("n", pa.int64()), pa.field("seed", pa.int64())])

# convention -> (question column, answer column) by default (as roost.synthesizers.step_dpo reads problems)


class PromptSource(DatasetInput):
    """The prompts: a dataset (`path`; SFT or preference rows, the conversation up to its last
    user turn is the prompt) or Magpie run first in each shard (`magpie`)."""

    magpie: MagpieConfig | None = None
    system_prompt: str | None = None  # put before every prompt that has no system message
    instruction: str = ""  # appended to the last user turn of every prompt
    # problems (see the module doc): the user turn from a question column, gold answers for a verifier
    question_column: str | None = None  # default: the conversation; without one, the convention's
    answer_column: str | None = None  # default: the convention's (answer: gsm8k, plain; solution: math)
    convention: Literal["auto", "gsm8k", "math", "plain"] = "auto"

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.magpie is None):
            raise ValueError("give exactly one of prompts.path and prompts.magpie")
        return self


class PromptRows(InputRows):
    """The prompts dataset: conversations (InputRows' forms), or problems whose question
    column is the user turn; `gold=True` also resolves the gold answers' column and convention."""

    def __init__(self, config: PromptSource, who: str, gold: bool = False):
        self.gold = gold
        self.question = self.answer = self.convention = None
        super().__init__(config, accepts=("sft", "preference"), who=who)

    def _detect(self, schema: pa.Schema):
        from roost.dataset.rows import detect

        c, names = self.config, set(schema.names)
        convention, question, answer = detect_convention(names, c.convention)
        if self.gold:
            self.convention, self.answer = convention, c.answer_column or answer
            if self.answer not in names:
                raise InputError(f"synthesizer.prompts.answer_column: {c.path} has no {self.answer!r} column of "
                                 f"gold answers for the verifier (columns: {', '.join(sorted(names))}); "
                                 "set prompts.answer_column")
        if c.question_column is None:
            try:
                shape = super()._detect(schema)
            except InputError:
                if question not in names:
                    raise
            else:  # problems (a question and its answer): the question alone is the prompt
                if not (shape.format in ("pair", "prompt") and question in names and c.format == "auto"):
                    return shape
        self.question = c.question_column or question
        if self.question not in names:
            raise InputError(f"synthesizer.prompts.question_column: {c.path} has no {self.question!r} column "
                             f"(columns: {', '.join(sorted(names))})")
        return detect(schema, "prompt", {"prompt": self.question})

    def _parse(self, row: dict):
        if self.question is None:
            return super()._parse(row)
        text = row.get(self.question)
        if not isinstance(text, str) or not text.strip():
            return None, f"'{self.question}' is null, empty or not a string"
        turn = [{"role": "user", "content": text.strip()}]
        return Parsed("sft", turn, turn), None

    def read_gold(self, row: dict) -> tuple[Gold | None, tuple[str, str] | None]:
        """(the row's gold answer, None) or (None, (reject reason, detail)): `no_gold_answer`
        when the row has none in its convention, `unparsable_gold_answer` when math-verify
        cannot read the one it has."""
        value = row.get(self.answer)
        gold, why = read_gold(value, self.convention)
        if gold is None:
            reason = "no_gold_answer" if gold_text(value, self.convention) is None else "unparsable_gold_answer"
            return None, (reason, f"{self.answer!r}: {why}")
        return gold, None

    def describe(self) -> dict:
        return {**super().describe(), "question_column": self.question, "answer_column": self.answer,
                "convention": self.convention}


class Prompt(NamedTuple):
    id: str  # the input row (or Magpie conversation) it came from
    messages: list[dict]  # up to the last user turn, system prompt and instruction included
    gold: Gold | None = None  # read when the synthesizer is scored by a verifier


class PromptedSynthesizer(Synthesizer):
    """A synthesizer whose config has `prompts: PromptSource` and that samples the policy on them."""

    def __init__(self, config, recipe):
        super().__init__(config, recipe)
        self._source = None
        self._magpie = None
        self._grader = None

    def verifier_config(self):
        """The synthesizer's VerifierConfig (roost.scorers.verifier) when a verifier scores it, else None."""
        return None

    def source(self) -> PromptRows:
        if self._source is None:
            self._source = PromptRows(self.config.prompts, who=self.kind, gold=self.verifier_config() is not None)
        return self._source

    def inputs(self) -> dict[str, dict]:
        return {"prompts": self.source().describe()} if self.config.prompts.path else {}

    def _check_prompts(self) -> None:
        """The prompts (and a verifier's gold answers and tie-break model) before any engine starts."""
        verifier = self.verifier_config()
        if verifier is not None and self.config.prompts.magpie is not None:
            raise ConfigError("field 'synthesizer.prompts.magpie': a verifier grades against gold answers; give "
                              "prompts.path, a dataset with an answer column")
        if self.config.prompts.path:
            self.source()
        if verifier is not None:
            self._verifier().check()

    def plan(self) -> list[Shard]:
        if self.config.prompts.magpie is not None:
            return super().plan()
        return self.slices(self.source().total)

    def _prompts(self, shard: Shard) -> tuple[list[Prompt], list[Reject], dict]:
        """This shard's prompts (messages up to the last user turn; the gold answer when a
        verifier scores), and the rejects."""
        out, rejects, stats = [], [], {}
        if self.config.prompts.magpie is not None:
            made = self._magpie_prompts().generate(shard.quota, shard.seed, label=shard.label, prompts_only=True)
            rejects.extend(made.rejects)
            stats["magpie"] = made.stats
            out = [Prompt(row["id"], self._dress(row["messages"])) for row in made.rows]
        else:
            source, gold = self.source(), None
            for row, parsed, problem, rid in source.rows(shard.start, shard.stop):
                if problem:
                    rejects.append(Reject("prompts", "bad_input", row, id=rid, detail=problem))
                    continue
                if source.gold:
                    gold, refused = source.read_gold(row)
                    if refused:
                        rejects.append(Reject("prompts", refused[0], row, id=rid, detail=refused[1]))
                        continue
                out.append(Prompt(rid, self._dress(parsed.prompt), gold))
        return out, rejects, stats

    def _dress(self, prompt: list[dict]) -> list[dict]:
        """The system prompt before a prompt that has none; the instruction after its last user turn."""
        cfg = self.config.prompts
        if cfg.system_prompt and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": cfg.system_prompt}, *prompt]
        if cfg.instruction and prompt[-1]["role"] == "user":
            prompt = [*prompt[:-1], user_turn(prompt[-1]["content"], cfg.instruction)]
        return prompt

    def _verifier(self):
        if self._grader is None:
            from roost.scorers.verifier import Verifier

            self._grader = Verifier(self.verifier_config())
        return self._grader

    def _grade(self, prompts: list[Prompt], groups: list[list[tuple[str, int] | None]], progress: str):
        """The verifier's Graded for every (text, tokens) of every prompt's group, in one call
        (None stays None: a response left out)."""
        items = [(p, text, n) for p, group in zip(prompts, groups) for text, n in filter(None, group)]
        convs = [p.messages + [{"role": "assistant", "content": text}] for p, text, _ in items]
        graded = iter(self._verifier().score(convs, [p.gold for p, _, _ in items], [n for *_, n in items],
                                             progress=progress))
        return [[next(graded) if x is not None else None for x in group] for group in groups]

    def _prompt_provenance(self) -> dict:
        out = {}
        if self.config.prompts.instruction:
            out["instruction"] = self.config.prompts.instruction
        if self.verifier_config() is not None:
            out["problems"] = self.source().describe()
        if self._magpie is not None:
            out["magpie"] = self._magpie.provenance()
        return out

    def _magpie_prompts(self):
        if self._magpie is None:
            from roost.synthesizers.magpie import Magpie

            self._magpie = Magpie(self.config.prompts.magpie, self._policy(), model_id=self.recipe.model.model)
        return self._magpie
