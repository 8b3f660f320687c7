"""The engine on real vLLM (CPU): raw and chat generation, n, stops, logprobs, token counts."""
from __future__ import annotations

import math

from roost.engines import Engine, EngineConfig, Sampling, get_engine


def test_engine_is_built_once_per_model_and_implements_the_interface(chatml_engine, tiny_chatml_path):
    again = get_engine(EngineConfig(model=str(tiny_chatml_path), max_model_len=1024, seed=0,
                                    throughput={"max_num_seqs": 64}))
    # throughput knobs are not part of the identity: same process, same engine
    assert again is chatml_engine
    assert isinstance(chatml_engine, Engine)
    info = chatml_engine.describe()
    assert info["engine"] == "vllm" and info["device"] == "cpu" and info["revision"].startswith("local-sha256:")


def test_raw_generation_with_n_stop_ids_logprobs_and_token_counts(chatml_engine):
    tok = chatml_engine.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    prompt = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    sampling = Sampling(max_tokens=48, temperature=1.0, n=5, stop_token_ids=(im_end,), logprobs=2)
    (gen,) = chatml_engine.generate([prompt], sampling)
    assert gen.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert len(gen.completions) == 5
    for c in gen.completions:
        assert c.n_tokens == len(c.token_ids) <= 48
        assert c.finish_reason in {"stop", "length"}
        assert im_end not in c.token_ids[:-1]  # generation stops at the end-of-turn token
        assert len(c.logprobs) == c.n_tokens
        # each position holds the sampled token's logprob (plus the top-2)
        for tid, pos in zip(c.token_ids, c.logprobs):
            assert tid in pos and pos[tid] <= 0.0 and math.isfinite(pos[tid])
    assert any(c.finish_reason == "stop" for c in gen.completions)


def test_max_tokens_and_stop_strings_are_honoured(chatml_engine):
    prompt = "<|im_start|>user\n"
    (short,) = chatml_engine.generate([prompt], Sampling(max_tokens=3, temperature=1.0, n=4))
    assert all(c.n_tokens <= 3 for c in short.completions)
    (stopped,) = chatml_engine.generate([prompt], Sampling(max_tokens=64, temperature=1.0, n=8, stop=("e",)))
    for c in stopped.completions:
        assert "e" not in c.text  # the stop string ends the text and is not included


def test_chat_renders_the_template_and_greedy_is_deterministic(chatml_engine):
    conv = [{"role": "user", "content": "What does `json.dumps` do in Python?"}]
    greedy = Sampling(max_tokens=32, temperature=0.0)
    a = chatml_engine.chat([conv, conv], greedy)
    b = chatml_engine.generate(
        [chatml_engine.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)], greedy
    )
    assert a[0].completions[0].text == a[1].completions[0].text == b[0].completions[0].text
    assert a[0].prompt.endswith("<|im_start|>assistant\n")


def test_choice_logprobs_are_renormalized_over_the_choices(chatml_engine):
    tok = chatml_engine.tokenizer
    ids = [tok.convert_tokens_to_ids(d) for d in "123456"]
    (lps,) = chatml_engine.choice_logprobs(["<|im_start|>user\nRate this from 1 to 6: "], ids)
    assert len(lps) == 6
    assert abs(sum(math.exp(v) for v in lps) - 1.0) < 1e-4
