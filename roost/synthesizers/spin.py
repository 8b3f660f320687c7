"""SPIN (self-play fine-tuning): the gold answer against the policy's own answer.

For each SFT row with a gold assistant turn, the policy answers the same prompt once, through
its own chat template (SPIN's scripts prompt with a hard-coded Alpaca string while training
with the chat template, uclaml/SPIN#33; roost does not), and the row becomes a pair:
chosen = the gold answer ("real"), rejected = the policy's answer ("generated").

Which turn is paired (`turn`):
- `last` (default): the last assistant turn; the earlier turns stay in the prompt, so a
  multi-turn conversation is used whole;
- `first`: the first assistant turn, the rest dropped (what SPIN's `reformat.py` does).

Every row is written in both readers' forms:
- TRL: `prompt` (the conversation before the paired turn), `chosen` / `rejected` (one
  assistant message each): DPOTrainer reads it as is;
- SPIN: `real` / `generated` = the conversation without its system message, ending in the
  gold / generated answer. SPIN's trainer takes `real[0]` as its prompt and templates the
  rest, so with `turn: last` the shared middle turns sit in both sides (their log-ratios
  cancel in the loss).

Iterations: `iteration` (the recipe's) is on every row; `roost iterate` runs the loop and, with
`mix_previous`, gives the trainer the previous iteration's rows with this one's, as SPIN's
configs do (iter t trains on iter t-1 + iter t).

Generated answers that are truncated, empty or broken, and answers equal to the gold one, go
to rejects with the reason (a truncated loser teaches "short is good"; `keep_truncated`
keeps them, as SPIN does).
"""
from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa

from roost.config import DatasetInput, SamplingConfig
from roost.dataset.writer import Reject
from roost.schemas import MESSAGES, PREFERENCE_ROWS, row_id
from roost.synthesizers.base import SYNTHESIZERS, InputRows, Shard, ShardOutput, Synthesizer, SynthesizerConfig
from roost.synthesizers.common.prompted import RESPONSE_RULES, SAMPLED

SPIN_ROWS = PREFERENCE_ROWS.extend([
    pa.field("real", MESSAGES),  # SPIN's columns: the conversation ending in the gold answer...
    pa.field("generated", MESSAGES),  # ...and in the policy's answer
    pa.field("prompt_id", pa.string()),  # the input row
    pa.field("turn", pa.string()),  # which assistant turn is paired: last / first
    pa.field("generated_tokens", pa.int64()),
    pa.field("finish_reason", pa.string()),  # of the generated answer
    pa.field("model_revision", pa.string()),
    pa.field("sampling", SAMPLED),
])


class SpinConfig(SynthesizerConfig):
    kind: Literal["spin"] = "spin"
    input: DatasetInput  # SFT rows with gold answers: messages, or instruction/response columns
    turn: Literal["last", "first"] = "last"
    # SPIN's vLLM scripts: temperature 1.0, top_p 1.0, 256 new tokens
    sampling: SamplingConfig = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=256)
    keep_truncated: bool = False


@SYNTHESIZERS.register
class Spin(Synthesizer):
    kind = "spin"
    Config = SpinConfig
    schema = SPIN_ROWS

    def __init__(self, config: SpinConfig, recipe):
        super().__init__(config, recipe)
        self._source = None

    def check(self) -> None:
        """The input must hold gold answers: refuse one whose first rows have none."""
        from roost.errors import InputError

        source = self.source()
        head = [parsed for _, parsed, problem, _ in source.rows(0, min(source.total, 256)) if not problem]
        if not any(self.split_turn(p.messages, self.config.turn) for p in head):
            raise InputError(f"{self.config.input.path}: no gold answers (no assistant turn after a user turn in its "
                             f"first {min(source.total, 256)} rows); SPIN pairs a gold answer with the policy's")

    def source(self) -> InputRows:
        if self._source is None:
            self._source = InputRows(self.config.input, accepts=("sft",), who="spin (it needs gold answers)")
        return self._source

    def inputs(self) -> dict[str, dict]:
        return {"input": self.source().describe()}

    def plan(self) -> list[Shard]:
        return self.slices(self.source().total)

    def generate(self, shard: Shard) -> ShardOutput:
        examples, rejects = [], []
        for row, parsed, problem, rid in self.source().rows(shard.start, shard.stop):
            split = None if problem else self.split_turn(parsed.messages, self.config.turn)
            if problem or split is None:
                rejects.append(Reject("input", "bad_input" if problem else "no_gold_answer", row, id=rid,
                                      detail=problem or "no assistant turn after a user turn"))
                continue
            examples.append((rid, *split))
        engine = self._policy()
        gens = engine.chat([prompt for _, prompt, _ in examples], self.config.sampling.to_engine(n=1),
                           seed=shard.seed, progress=f"{shard.label} answers") if examples else []
        rows = []
        for (rid, prompt, gold), gen in zip(examples, gens):
            completion = gen.completions[0]
            text = completion.text.strip()
            reason = self._unusable(text, completion.finish_reason, gold["content"])
            if reason:
                rejects.append(Reject("spin", reason[0], {"prompt": prompt, "gold": gold["content"], "generated": text,
                                                          "finish_reason": completion.finish_reason},
                                      id=rid, detail=reason[1]))
                continue
            rows.append(self._row(rid, prompt, gold, text, completion, shard))
        stats = {"prompts": len(examples), "pairs": len(rows)}
        return ShardOutput(rows, rejects, stats)

    @staticmethod
    def split_turn(messages: list[dict], turn: str) -> tuple[list[dict], dict] | None:
        """(the conversation before the paired assistant turn, that gold turn), or None."""
        positions = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0
                     and messages[i - 1]["role"] == "user"]
        if not positions:
            return None
        i = positions[-1] if turn == "last" else positions[0]
        return messages[:i], messages[i]

    def _unusable(self, text: str, finish_reason: str, gold: str) -> tuple[str, str] | None:
        drop = RESPONSE_RULES.first_drop({"text": text, "finish_reason": finish_reason})
        if drop is not None and not (self.config.keep_truncated and drop.reason == "truncated" and text):
            return drop.reason, drop.detail or f"generated answer {drop.reason}"
        if text == gold.strip():
            return "same_as_gold", "the policy's answer equals the gold answer: no pair"
        return None

    def _row(self, rid: str, prompt: list[dict], gold: dict, text: str, completion, shard: Shard) -> dict:
        chosen = [{"role": "assistant", "content": gold["content"]}]
        rejected = [{"role": "assistant", "content": text}]
        spin_prompt = [m for m in prompt if m["role"] != "system"]
        return {
            "id": row_id(prompt, chosen, rejected), "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "method": "spin", "model": self.recipe.model.model, "iteration": self.recipe.iteration,
            "real": spin_prompt + chosen, "generated": spin_prompt + rejected,
            "prompt_id": rid, "turn": self.config.turn, "generated_tokens": completion.n_tokens,
            "finish_reason": completion.finish_reason, "model_revision": self._revision(),
            "sampling": {**self.config.sampling.model_dump(), "n": 1, "seed": shard.seed},
        }

    def provenance(self) -> dict[str, Any]:
        return {"sampling": {**self.config.sampling.model_dump(), "n": 1}, "turn": self.config.turn,
                "input": self.config.input.path, "keep_truncated": self.config.keep_truncated}
