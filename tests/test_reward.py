"""Reward-model scoring on real models: vLLM's pooling runner and transformers, over tiny reward
models built here (a Qwen2 and a Llama *ForSequenceClassification, and ArmoRM-like custom
code loaded with trust_remote_code), each checked against a transformers forward of one
conversation at a time written independently below (float32)."""
from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from roost.engines import RewardModelConfig
from roost.scorers.reward import Reward, RewardModelError, RewardScorer, get_reward_scorer
from roost.tiny.models import corrupt_response, load_seed_conversations

pytestmark = pytest.mark.engine


def _conversations(n: int = 20, skip: int = 100) -> list[list[dict]]:
    """Seed pairs joined into conversations of 1-4 turns (different lengths: padding matters)."""
    rows = load_seed_conversations()[skip:]
    out, at = [], 0
    for i in range(n):
        turns = 1 + (i * 7) % 4
        conv = [m for r in rows[at:at + turns] for m in r]
        at += turns
        if i % 5 == 0:
            conv = [{"role": "system", "content": "Answer in one sentence."}] + conv
        out.append(conv)
    return out


def _reference(path, conversations, *, trust_remote_code: bool = False) -> list[dict]:
    """One conversation per forward: the template rendered as text, tokenized without added
    special tokens (the template has BOS), the model's own outputs."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), dtype=torch.float32, trust_remote_code=trust_remote_code).eval()
    out = []
    for conv in conversations:
        ids = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            o = model(torch.tensor([ids]))
        if getattr(o, "score", None) is not None:
            out.append({"score": float(o.score[0]), "outputs": o.rewards[0].tolist()})
        else:
            out.append({"score": None, "outputs": o.logits[0].tolist()})
    return out


def _max_diff(rewards: list[Reward], ref: list[dict]) -> float:
    diffs = []
    for r, e in zip(rewards, ref):
        assert r.value is not None and r.reason is None, r
        diffs += [abs(a - b) for a, b in zip(r.outputs, e["outputs"], strict=True)]
        diffs.append(abs(r.value - (e["score"] if e["score"] is not None else e["outputs"][0])))
    return max(diffs)


def _single(scorer: RewardScorer, conversations) -> list[Reward]:
    return [scorer.score([c])[0] for c in conversations]


@pytest.mark.parametrize("which", ["tiny_rm_chatml_path", "tiny_rm3_llama3_path"])
def test_transformers_batched_equals_per_row_forward(request, which):
    path = request.getfixturevalue(which)
    convs = _conversations()
    scorer = get_reward_scorer(RewardModelConfig(model=str(path), backend="transformers", batch_size=4,
                                                 max_batch_tokens=4096))
    assert scorer.backend == "transformers"
    batched = scorer.score(convs)
    assert _max_diff(batched, _reference(path, convs)) < 1e-4
    # Batch vs one at a time (padding must not move a reward).
    single = _single(scorer, convs[:8])
    assert max(abs(a.value - b.value) for a, b in zip(batched, single)) < 1e-5
    info = scorer.describe()
    assert info["backend"] == "transformers" and info["dtype"] == "torch.float32"
    assert info["revision"].startswith("local-sha256:") and info["device"] == "cpu"
    assert info["onednn_linear_layers"] > 0  # float32 Linear layers on oneDNN, same rewards (above)


def test_vllm_pooling_equals_per_row_forward(rm3_vllm_scorer, tiny_rm3_llama3_path):
    scorer = rm3_vllm_scorer
    convs = _conversations()
    rewards = scorer.score(convs)
    assert all(len(r.outputs) == 3 for r in rewards)  # raw logits of every label, no sigmoid
    assert _max_diff(rewards, _reference(tiny_rm3_llama3_path, convs)) < 1e-4
    single = _single(scorer, convs[:6])
    assert max(abs(a.value - b.value) for a, b in zip(rewards, single)) < 1e-5
    info = scorer.describe()
    assert info["backend"] == "vllm" and info["engine"] == "vllm-pooling"
    assert info["dtype"] == "torch.float32"  # dtype auto on CPU: float32, like the transformers backend
    # HF pools the rightmost non-pad token; vLLM the last one: trailing pads are dropped for vLLM.
    pad = info["pad_token_id"]
    assert scorer._backend.engine._strip_trailing_pad([5, 6, pad, pad]) == [5, 6]


def test_vllm_objective_and_weights_share_one_engine(rm3_vllm_scorer, tiny_rm3_llama3_path):
    convs = _conversations(6)
    base = rm3_vllm_scorer.score(convs)
    second = get_reward_scorer(RewardModelConfig(model=str(tiny_rm3_llama3_path), backend="vllm",
                                                 max_model_len=512, objective=2))
    weighted = get_reward_scorer(RewardModelConfig(model=str(tiny_rm3_llama3_path), backend="vllm",
                                                   max_model_len=512, weights=[0.5, -1.0, 2.0]))
    assert second._backend is rm3_vllm_scorer._backend is weighted._backend  # one engine per model
    for b, s, w in zip(base, second.score(convs), weighted.score(convs)):
        assert b.value == b.outputs[0]
        assert s.value == pytest.approx(b.outputs[2], abs=1e-6)
        assert w.value == pytest.approx(0.5 * b.outputs[0] - b.outputs[1] + 2.0 * b.outputs[2], abs=1e-5)


def test_armo_like_custom_code(tiny_armo_path):
    convs = _conversations(12)
    scorer = get_reward_scorer(RewardModelConfig(model=str(tiny_armo_path), trust_remote_code=True, batch_size=5,
                                                 max_batch_tokens=4096))
    assert scorer.backend == "transformers"  # auto: custom code vLLM does not run
    rewards = scorer.score(convs)
    ref = _reference(tiny_armo_path, convs, trust_remote_code=True)
    assert all(len(r.outputs) == 4 for r in rewards)  # per-objective rewards
    assert _max_diff(rewards, ref) < 1e-4  # value is the gated .score
    assert all(abs(r.value - r.outputs[0]) > 1e-7 for r in rewards)  # .score, not output 0
    single = _single(scorer, convs[:5])
    assert max(abs(a.value - b.value) for a, b in zip(rewards, single)) < 1e-5
    info = scorer.describe()
    assert info["architectures"] == ["LlamaForRewardModelWithGating"] and info["remote_code_sha256"]

    one = get_reward_scorer(RewardModelConfig(model=str(tiny_armo_path), trust_remote_code=True, objective=1))
    mix = get_reward_scorer(RewardModelConfig(model=str(tiny_armo_path), trust_remote_code=True,
                                              weights=[1.0, 0.0, 0.0, -1.0]))
    assert one._backend is scorer._backend is mix._backend
    for r, o, m in zip(rewards, one.score(convs), mix.score(convs)):
        assert o.value == pytest.approx(r.outputs[1], abs=1e-6)
        assert m.value == pytest.approx(r.outputs[0] - r.outputs[3], abs=1e-5)

    with pytest.raises(RewardModelError, match="trust_remote_code"):
        get_reward_scorer(RewardModelConfig(model=str(tiny_armo_path)))
    with pytest.raises(RewardModelError, match="vLLM does not run"):
        get_reward_scorer(RewardModelConfig(model=str(tiny_armo_path), trust_remote_code=True, backend="vllm"))


def test_armo_row_it_cannot_gate_is_null_not_fatal(tiny_armo_path):
    # ArmoRM's code raises ValueError when a row has no "<|eot_id|> assistant header" to gate
    # on (here: an assistant message with nothing before it). Only that row becomes null.
    scorer = get_reward_scorer(RewardModelConfig(model=str(tiny_armo_path), trust_remote_code=True))
    good = _conversations(3)
    lone = [{"role": "assistant", "content": "Hello there."}]
    out = scorer.score([good[0], lone, good[1], good[2]])
    assert [r.value is None for r in out] == [False, True, False, False]
    assert "Token pattern not found" in out[1].reason
    expected = scorer.score(good)
    assert [out[0].value, out[2].value, out[3].value] == pytest.approx([r.value for r in expected], abs=1e-6)


def test_objective_and_weights_on_transformers(tiny_rm3_llama3_path):
    convs = _conversations(5)
    path = str(tiny_rm3_llama3_path)
    base = get_reward_scorer(RewardModelConfig(model=path, backend="transformers")).score(convs)
    by_obj = get_reward_scorer(RewardModelConfig(model=path, backend="transformers", objective=1)).score(convs)
    by_w = get_reward_scorer(RewardModelConfig(model=path, backend="transformers", weights=[0, 0, 1])).score(convs)
    for b, o, w in zip(base, by_obj, by_w):
        assert b.value == b.outputs[0] and o.value == b.outputs[1]
        assert w.value == pytest.approx(b.outputs[2], abs=1e-7)
    with pytest.raises(RewardModelError, match="out of range"):
        get_reward_scorer(RewardModelConfig(model=path, backend="transformers", objective=3))
    with pytest.raises(RewardModelError, match="weights has 2 values"):
        get_reward_scorer(RewardModelConfig(model=path, backend="transformers", weights=[1, 2]))
    with pytest.raises(ValidationError, match="not both"):
        RewardModelConfig(model=path, objective=0, weights=[1, 0, 0])


def test_over_length_and_malformed_are_null_with_reason(tiny_rm_chatml_path):
    scorer = get_reward_scorer(RewardModelConfig(model=str(tiny_rm_chatml_path), max_model_len=128))
    assert scorer.max_model_len == 128
    short = _conversations(2)[0]
    long = [{"role": "user", "content": "Explain logging. " * 80}, {"role": "assistant", "content": "It logs."}]
    no_answer = [{"role": "user", "content": "Hello?"}]
    out = scorer.score([short, long, no_answer, [], short])
    assert out[0].value is not None and out[4].value == pytest.approx(out[0].value, abs=1e-6)
    assert out[1].value is None and out[1].outputs is None
    assert "tokens, over max_model_len 128" in out[1].reason
    assert out[2].value is None and "not an assistant message" in out[2].reason
    assert out[3].value is None and "empty" in out[3].reason


def test_causal_lm_is_not_a_reward_model(tiny_chatml_path):
    with pytest.raises(RewardModelError) as info:
        get_reward_scorer(RewardModelConfig(model=str(tiny_chatml_path)))
    message = str(info.value)
    assert "\n" not in message and "not a reward model" in message and "Qwen2ForCausalLM" in message
    assert isinstance(info.value, ValueError)


def test_bos_once_and_template_as_the_model_renders_it(tiny_rm3_llama3_path, tiny_rm_chatml_path):
    from transformers import AutoTokenizer

    conv = _conversations(1)[0]
    scorer = get_reward_scorer(RewardModelConfig(model=str(tiny_rm3_llama3_path), backend="transformers"))
    tok = AutoTokenizer.from_pretrained(str(tiny_rm3_llama3_path))
    ids = scorer.encode(conv)
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert ids == list(tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"])
    chatml = get_reward_scorer(RewardModelConfig(model=str(tiny_rm_chatml_path)))
    assert chatml.render(conv).startswith("<|im_start|>system\n")


def test_trained_tiny_rm_prefers_seed_responses(tiny_rm_chatml_path):
    rng = random.Random(7)
    held_out = load_seed_conversations()[-60:]
    scorer = get_reward_scorer(RewardModelConfig(model=str(tiny_rm_chatml_path)))
    good = scorer.score(held_out)
    bad = scorer.score([corrupt_response(c, rng) for c in held_out])
    wins = sum(g.value > b.value for g, b in zip(good, bad))
    assert wins / len(held_out) > 0.7, wins


def test_length_batches_and_padding():
    from roost.engines.hf_scoring import length_batches, pad_batch

    lengths = [5, 1, 9, 3, 9, 2]
    batches = list(length_batches(lengths, batch_size=2, max_batch_tokens=100))
    assert batches == [[2, 4], [0, 3], [5, 1]]  # longest first, every row once
    assert list(length_batches(lengths, batch_size=8, max_batch_tokens=19)) == [[2, 4], [0, 3, 5], [1]]
    assert list(length_batches([50], batch_size=8, max_batch_tokens=20)) == [[0]]  # one row always fits
    ids, mask, pos = pad_batch([[7, 8, 9], [4]], pad_id=0, side="left")
    assert ids.tolist() == [[7, 8, 9], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    ids, mask, pos = pad_batch([[7, 8, 9], [4]], pad_id=0, side="right")
    assert ids.tolist() == [[7, 8, 9], [4, 0, 0]] and pos.tolist() == [[0, 1, 2], [0, 0, 0]]
