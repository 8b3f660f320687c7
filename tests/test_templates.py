"""Pre-query template derivation and turn markers, on both template styles (real tokenizers)."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from roost.synthesizers.common.templates import (
    TemplateError,
    find_override,
    first_turn_template,
    pre_query,
    turn_markers,
)


@pytest.fixture(scope="module")
def chatml(tiny_chatml_path):
    return AutoTokenizer.from_pretrained(tiny_chatml_path)


@pytest.fixture(scope="module")
def llama3(tiny_llama3_path):
    return AutoTokenizer.from_pretrained(tiny_llama3_path)


def test_chatml_first_turn_includes_the_templates_default_system_block(chatml):
    assert pre_query(chatml) == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"


def test_llama3_first_turn_is_the_bare_user_header_with_bos(llama3):
    assert pre_query(llama3) == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"


def test_system_prompt_and_history_are_rendered_before_the_user_header(chatml, llama3):
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
    ]
    assert pre_query(chatml, history) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4.<|im_end|>\n<|im_start|>user\n"
    )
    text = pre_query(llama3, history)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert text.endswith("4.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n")
    # exactly one BOS and one header per turn: no generation prompt glued before the user header
    assert text.count("<|begin_of_text|>") == 1
    assert text.count("<|start_header_id|>assistant") == 1


def test_turn_markers_are_the_templates_special_tokens_never_the_role_name(chatml, llama3):
    m = turn_markers(chatml)
    assert set(m.stop) == {"<|im_end|>", "<|im_start|>"}
    assert chatml.convert_tokens_to_ids("<|im_end|>") in m.stop_token_ids
    assert chatml.convert_tokens_to_ids("<|im_start|>") in m.stop_token_ids

    m = turn_markers(llama3)
    assert {"<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"} <= set(m.stop)
    assert llama3.convert_tokens_to_ids("<|eot_id|>") in m.stop_token_ids
    for markers in (turn_markers(chatml), turn_markers(llama3)):
        assert not any("assistant" in s.lower() for s in markers.stop)


def test_known_overrides_apply_to_a_first_turn_without_system_prompt_only(chatml):
    qwen25 = first_turn_template(chatml, "Qwen/Qwen2.5-7B-Instruct", None)
    assert qwen25.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert first_turn_template(chatml, "Qwen/Qwen2-7B-Instruct", None) == "<|im_start|>user\n"
    assert find_override("meta-llama/Llama-3.1-8B-Instruct").template.endswith("<|end_header_id|>\n\n")
    assert find_override("my-org/tiny-chatml") is None
    # a system prompt means the model's own template is used, with that prompt
    with_system = first_turn_template(chatml, "Qwen/Qwen2-7B-Instruct", "Solve math.")
    assert with_system == "<|im_start|>system\nSolve math.<|im_end|>\n<|im_start|>user\n"
    # an explicit template in the recipe wins
    assert first_turn_template(chatml, "x", None, "RAW: ") == "RAW: "


def test_a_template_that_cannot_render_the_conversation_is_a_clear_error(tiny_chatml_path):
    tok = AutoTokenizer.from_pretrained(tiny_chatml_path)
    tok.chat_template = "{{ raise_exception('only one role') }}"
    with pytest.raises(TemplateError, match="cannot render"):
        pre_query(tok)
