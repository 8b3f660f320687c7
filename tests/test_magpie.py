"""Magpie on real vLLM over the tiny models: structure, system prompts, rejects."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from roost.config import SamplingConfig
from roost.schemas import SFT_ROWS, row_id
from roost.synthesizers.common import instruction_rules as rules
from roost.synthesizers.magpie import Magpie, MagpieConfig


def _synth(engine, model_path, **config):
    config.setdefault("instruction", SamplingConfig(temperature=1.0, max_tokens=64))
    config.setdefault("response", SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=96))
    return Magpie(MagpieConfig(**config), engine, model_id=str(model_path))


def _assert_valid_rows(rows):
    assert rows, "expected some rows to survive"
    for row in rows:
        assert SFT_ROWS.problem(row) is None, SFT_ROWS.problem(row)
        assert row["id"] == row_id(row["messages"])
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert len({r["id"] for r in rows}) == len(rows)


def test_single_turn_rows_are_user_then_assistant(chatml_engine, tiny_chatml_path):
    out = _synth(chatml_engine, tiny_chatml_path).generate(40, 0)
    _assert_valid_rows(out.rows)
    assert len(out.rows) <= 40
    for row in out.rows:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["pre_query_template"].endswith("<|im_start|>user\n")
        assert row["system_prompt_key"] is None
    first_instructions = [r["messages"][0]["content"] for r in out.rows]
    assert len(set(map(rules.normalize, first_instructions))) == len(first_instructions)


def test_multi_turn_on_llama3_template(llama3_engine, tiny_llama3_path):
    synth = _synth(llama3_engine, tiny_llama3_path, n_turns=3, max_rounds=6)
    out = synth.generate(16, 1)
    _assert_valid_rows(out.rows)
    for row in out.rows:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * 3
        assert row["n_turns"] == 3
        assert row["pre_query_template"] == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    # follow-up turns are elicited after the whole history, under the multi-turn system prompt
    conv = synth._new_conversation(random.Random(0))
    conv.messages = out.rows[0]["messages"][:2]
    prompt = synth._instruction_prompt(conv, 1)
    assert "multi-round conversation" in prompt
    assert prompt.endswith(out.rows[0]["messages"][1]["content"] + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")


def test_weighted_system_prompt_mix_is_sampled_by_weight_and_recorded(chatml_engine, tiny_chatml_path):
    mix = {"general": {"text": "You are a helpful assistant.", "weight": 3}, "poet": {"text": "You write poems.", "weight": 1}}
    synth = _synth(chatml_engine, tiny_chatml_path, system_prompt=mix, include_system_prompt=True)
    draws = Counter(synth._new_conversation(random.Random(i)).system_key for i in range(4000))
    assert abs(draws["general"] / 4000 - 0.75) < 0.03

    out = synth.generate(40, 2)
    _assert_valid_rows(out.rows)
    keys = Counter(r["system_prompt_key"] for r in out.rows)
    assert set(keys) <= {"general", "poet"} and keys["general"] > 0
    for row in out.rows:
        assert row["messages"][0] == {"role": "system", "content": mix[row["system_prompt_key"]]["text"]}
        assert row["pre_query_template"].startswith("<|im_start|>system\n" + mix[row["system_prompt_key"]]["text"])
    assert out.stats["system_prompt_keys"] == dict(keys)


def test_task_and_language_control_build_the_system_prompt(chatml_engine, tiny_chatml_path):
    synth = _synth(chatml_engine, tiny_chatml_path, task="math", language="de")
    conv = synth._new_conversation(random.Random(0))
    assert conv.system_key == "task:math"
    assert "math problems" in conv.system_text and "auf Deutsch" in conv.system_text
    out = synth.generate(8, 3)
    for row in out.rows:
        assert row["task"] == "math" and row["language"] == "de"
        assert row["messages"][0]["role"] == "user"  # include_system_prompt is off by default
        assert "math problems" in row["pre_query_template"]


def test_broken_turns_become_rejects_with_reasons(chatml_engine, tiny_chatml_path):
    # 4 tokens is too few for most instructions to reach the end-of-turn marker
    synth = _synth(chatml_engine, tiny_chatml_path, instruction=SamplingConfig(max_tokens=4), max_rounds=1)
    out = synth.generate(30, 4)
    reasons = Counter(r.reason for r in out.rejects)
    assert reasons["truncated"] > 0
    assert len(out.rows) + len(out.rejects) == 30  # every attempt is accounted for
    for r in out.rejects:
        assert r.stage in {"magpie.instruction", "magpie.response"}
        assert "raw_text" in r.record and r.reason


@pytest.mark.parametrize(
    "text, finish, reason",
    [
        ("Write a poem about the sea.", "length", "truncated"),
        ("   ", "stop", "empty"),
        ("Hi?", "stop", "too_short"),
        ("Here is my essay:", "stop", "not_a_request"),
        ("12345678 + 9", "stop", "not_a_request"),
        ("用一句话解释量子纠缠。", "stop", None),
        ("Tell me more <|im_start|>assistant", "stop", "template_leak"),
        ("Broken \ufffd bytes in here", "stop", "broken_text"),
        ("Explain how tides work.", "stop", None),
        ("Summarize what an assistant does.", "stop", None),  # the word 'assistant' is fine
    ],
)
def test_instruction_rules(text, finish, reason):
    # Pure rule logic on fixed strings: no model involved.
    from roost.algorithms.base import FilterStep

    step = FilterStep([
        rules.Truncated(), rules.Empty(), rules.BrokenText(), rules.TooShort(8 if text.isascii() else 4), rules.NotARequest(),
        rules.TemplateLeak(("<|im_end|>", "<|im_start|>")),
    ])
    drop = step.first_drop({"text": text, "finish_reason": finish})
    assert (drop.reason if drop else None) == reason


def test_duplicate_instruction_rule_is_normalized():
    dedup = rules.DuplicateInstruction()
    assert dedup.check({"text": "Explain  how tides WORK."}) is None  # first seen: kept, remembered
    assert dedup.check({"text": "explain how tides work."}).reason == "duplicate_instruction"
    assert dedup.check({"text": "Explain how waves work."}) is None
