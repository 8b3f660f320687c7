"""deita scoring on real vLLM engines over the tiny models, checked against a transformers
forward pass computed independently (float32, last-position logits, softmax over six ids).

vLLM on CPU downcasts a float32 checkpoint to bfloat16 with dtype="auto" (engine.describe()
says torch.bfloat16), which moves scores by ~1e-2. The comparison to 1e-3 therefore runs on
float32 engines built here (the conftest engines are dtype auto).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from roost.scorers.deita import (
    COMPLEXITY_TEMPLATE,
    QUALITY_TEMPLATE,
    DeitaScorer,
    Score,
    ScoreTokenError,
    deita_score,
    expected_score,
    score_token_ids,
)

pytestmark = pytest.mark.engine

SEED = Path(__file__).resolve().parents[1] / "data" / "seed_conversations.jsonl"


def _seed_pairs(n: int, skip: int = 0) -> list[tuple[str, str]]:
    rows = [json.loads(line)["messages"] for line in SEED.read_text().splitlines() if line.strip()]
    return [(m[0]["content"], m[1]["content"]) for m in rows[skip:skip + n]]


@pytest.fixture(scope="session")
def chatml_fp32_engine(tiny_chatml_path):
    from roost.engines import EngineConfig, get_engine

    return get_engine(EngineConfig(model=str(tiny_chatml_path), dtype="float32", max_model_len=1024, seed=0))


@pytest.fixture(scope="session")
def llama3_fp32_engine(tiny_llama3_path):
    from roost.engines import EngineConfig, get_engine

    return get_engine(EngineConfig(model=str(tiny_llama3_path), dtype="float32", max_model_len=1024, seed=0))


@pytest.fixture(params=["chatml", "llama3"])
def model_and_engine(request):
    path = request.getfixturevalue(f"tiny_{request.param}_path")
    engine = request.getfixturevalue(f"{request.param}_fp32_engine")
    return path, engine


def _hf_scores(path, prompts_without_bos: list[str]) -> list[float]:
    """deita's formula from a transformers forward pass, one prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    digit_ids = tok.convert_tokens_to_ids(list("123456"))
    weights = torch.arange(1, 7, dtype=torch.float64)
    out = []
    for text in prompts_without_bos:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if tok.bos_token_id is not None:
            ids = [tok.bos_token_id] + ids
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        probs = torch.softmax(logits[digit_ids], dim=0)
        out.append(float((probs * weights).sum()))
    return out


def test_engine_dtype_is_float32(chatml_fp32_engine):
    assert chatml_fp32_engine.describe()["dtype"] == "torch.float32"


def test_batched_scores_match_transformers(model_and_engine):
    path, engine = model_and_engine
    scorer = DeitaScorer(engine)
    assert scorer.token_ids == engine.tokenizer.convert_tokens_to_ids(list("123456"))
    pairs = _seed_pairs(24)
    instructions = [p[0] for p in pairs]
    responses = [p[1] for p in pairs]
    complexity = scorer.complexity(instructions)
    quality = scorer.quality(instructions, responses)
    assert all(s.value is not None and s.reason is None and not s.truncated for s in complexity + quality)
    expected_c = _hf_scores(path, [COMPLEXITY_TEMPLATE.format(instruction=i) for i in instructions])
    expected_q = _hf_scores(
        path, [QUALITY_TEMPLATE.format(instruction=i, output=r) for i, r in zip(instructions, responses)]
    )
    diffs = [abs(s.value - e) for s, e in zip(complexity + quality, expected_c + expected_q)]
    assert max(diffs) < 1e-3, max(diffs)
    assert all(1.0 <= s.value <= 6.0 for s in complexity + quality)
    # Random tiny models still give different scores to different prompts (not a constant).
    assert len({round(s.value, 6) for s in quality}) > 1


class _CountingEngine:
    """The real engine, counting choice_logprobs calls (and optionally blanking one result)."""

    def __init__(self, engine, blank_prompt_containing: str | None = None):
        self._engine = engine
        self.calls = 0
        self.blank = blank_prompt_containing

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def choice_logprobs(self, prompts, token_ids, **kwargs):
        self.calls += 1
        result = self._engine.choice_logprobs(prompts, token_ids, **kwargs)
        if self.blank is not None:
            result = [None if self.blank in p else r for p, r in zip(prompts, result)]
        return result


def test_multi_turn_per_turn_scores_and_deita_score(chatml_fp32_engine):
    counting = _CountingEngine(chatml_fp32_engine)
    scorer = DeitaScorer(counting)
    (i1, r1), (i2, r2), (i3, _) = _seed_pairs(3, skip=30)
    conversations = [
        [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": i1}, {"role": "assistant", "content": r1},
         {"role": "user", "content": i2}, {"role": "assistant", "content": r2},
         {"role": "user", "content": i3}],
        [{"role": "user", "content": i2}, {"role": "assistant", "content": r2}],
        [{"role": "assistant", "content": "orphan"}],
    ]
    out = scorer.score_conversations(conversations)
    assert counting.calls == 1  # the whole batch in one engine call
    first, second, bad = out
    c = scorer.complexity([i1, i2, i3])
    q = scorer.quality([i1, i2, i3], [r1, r2, ""])  # final user turn: response ""
    assert first["complexity_scores"] == pytest.approx([s.value for s in c], abs=1e-5)
    assert first["quality_scores"] == pytest.approx([s.value for s in q], abs=1e-5)
    expected = sum(a * b for a, b in zip(first["complexity_scores"], first["quality_scores"]))
    assert first["deita_score"] == pytest.approx(expected, rel=1e-12)
    assert first["deita_score_reason"] is None and not first["truncated"]
    # Each turn is scored without history: the same pair alone gets the same scores.
    assert second["complexity_scores"] == pytest.approx([first["complexity_scores"][1]], abs=1e-5)
    assert second["quality_scores"] == pytest.approx([first["quality_scores"][1]], abs=1e-5)
    assert bad["deita_score"] is None and "malformed" in bad["deita_score_reason"]


def test_missing_digit_logprob_gives_null_with_reason(chatml_fp32_engine):
    # Real engine; one prompt's result is replaced by None, as the engine reports a prompt
    # for which some digit logprob was not returned.
    scorer = DeitaScorer(_CountingEngine(chatml_fp32_engine, blank_prompt_containing="BLANKME"))
    out = scorer.score_conversations([
        [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
         {"role": "user", "content": "BLANKME please"}, {"role": "assistant", "content": "ok"}],
    ])[0]
    assert out["complexity_scores"][0] is not None and out["complexity_scores"][1] is None
    assert out["quality_scores"][1] is None
    assert out["deita_score"] is None and "turn(s) [1]" in out["deita_score_reason"]
    assert any("unavailable" in note for note in out["score_notes"])


def test_expected_score_pure_logic():
    # Pure-logic test of the aggregation, with hand-made logprob lists (no engine).
    import math

    assert expected_score(None).value is None and "unavailable" in expected_score(None).reason
    assert expected_score([0.0] * 5).value is None
    assert expected_score([float("-inf")] + [0.0] * 5).value is None
    uniform = expected_score([math.log(1 / 6)] * 6)
    assert uniform.value == pytest.approx(3.5) and uniform.reason is None
    peaked = expected_score([-50, -50, -50, -50, -50, 0.0])
    assert peaked.value == pytest.approx(6.0, abs=1e-9)
    # Not renormalized input: softmax is taken, so only the differences matter.
    assert expected_score([1, 2, 3, 4, 5, 6]).value == pytest.approx(expected_score([0, 1, 2, 3, 4, 5]).value)
    assert deita_score([2.0, 3.0], [4.0, 5.0]) == (23.0, None)
    value, reason = deita_score([2.0, None], [4.0, 5.0])
    assert value is None and "turn(s) [1]" in reason
    assert deita_score([], [])[0] is None


def test_long_prompts_are_truncated_not_crashed(chatml_fp32_engine):
    engine = chatml_fp32_engine
    long_instruction = " ".join(["Explain the logging module in detail."] * 400)  # >> 1024 tokens
    long_response = " ".join(["It formats records."] * 400)
    scorer = DeitaScorer(engine)
    assert scorer.max_prompt_tokens == 1023
    c = scorer.complexity([long_instruction])[0]
    q = scorer.quality(["Short question?", long_instruction], [long_response, long_response])
    for s in (c, *q):
        assert s.value is not None and s.truncated and "truncated" in s.reason
    # The short instruction is kept whole; the response is cut.
    assert "response" in q[0].reason
    too_small = DeitaScorer(engine, max_prompt_tokens=70).quality(["a"], ["b"])[0]  # template is ~81 tokens
    assert too_small.value is None and "template alone" in too_small.reason
    small = DeitaScorer(engine, max_prompt_tokens=120)
    text = small.quality_prompt(long_instruction, long_response).text
    assert len(engine.encode(text)) <= 120
    assert "##Quality: " in text and text.endswith("##Quality: ")
    nulls = DeitaScorer(engine, overflow="null").complexity([long_instruction])[0]
    assert nulls.value is None and "over the limit" in nulls.reason


def test_score_token_ids_refuses_merged_digits():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(["score: 1 2 3 4 5 6"] * 50, trainer=trainer)  # learns "Ġ1".."Ġ6"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    with pytest.raises(ScoreTokenError, match="exactly one new token"):
        score_token_ids(fast)


def test_score_is_a_plain_value():
    s = Score(4.2)
    assert s.as_dict() == {"value": 4.2, "reason": None, "truncated": False}


# -- the batched transformers backend (roost.engines.hf_scoring) --------------------------------

@pytest.fixture(params=["chatml", "llama3"])
def model_and_both_engines(request):
    path = request.getfixturevalue(f"tiny_{request.param}_path")
    return (path, request.getfixturevalue(f"{request.param}_hf_scoring_engine"),
            request.getfixturevalue(f"{request.param}_fp32_engine"))


def test_hf_backend_matches_vllm_and_per_row_reference(model_and_both_engines):
    path, hf_engine, vllm_engine = model_and_both_engines
    assert hf_engine.describe()["engine"] == "transformers" and hf_engine.describe()["dtype"] == "torch.float32"
    assert hf_engine.max_model_len == vllm_engine.max_model_len == 1024
    pairs = _seed_pairs(24, skip=40)
    instructions, responses = [p[0] for p in pairs], [p[1] for p in pairs]
    hf = DeitaScorer(hf_engine)
    vl = DeitaScorer(vllm_engine)
    assert hf.token_ids == vl.token_ids and hf.settings() == vl.settings()
    ours = hf.complexity(instructions) + hf.quality(instructions, responses)
    theirs = vl.complexity(instructions) + vl.quality(instructions, responses)
    expected = _hf_scores(path, [COMPLEXITY_TEMPLATE.format(instruction=i) for i in instructions]) + _hf_scores(
        path, [QUALITY_TEMPLATE.format(instruction=i, output=r) for i, r in zip(instructions, responses)])
    assert all(s.value is not None and s.reason is None for s in ours)
    assert max(abs(a.value - e) for a, e in zip(ours, expected)) < 1e-4
    assert max(abs(a.value - b.value) for a, b in zip(ours, theirs)) < 1e-4


def test_hf_backend_batch_equals_single(tiny_chatml_path):
    from roost.engines import EngineConfig
    from roost.engines.hf_scoring import HFScoringEngine

    # One big padded batch (the default CPU token budget would cut it into small ones).
    engine = HFScoringEngine(EngineConfig(model=str(tiny_chatml_path), dtype="float32", max_model_len=1024),
                             batch_size=64, max_batch_tokens=1 << 16)
    assert engine.describe()["onednn_linear_layers"] > 0
    scorer = DeitaScorer(engine)
    pairs = _seed_pairs(12, skip=80)
    prompts = [scorer.quality_prompt(i, r).text for i, r in pairs]
    prompts.append(scorer.complexity_prompt("Hi").text)  # much shorter: padding in the batch
    batched = engine.choice_logprobs(prompts, scorer.token_ids)
    single = [engine.choice_logprobs([p], scorer.token_ids)[0] for p in prompts]
    for b, s in zip(batched, single):
        assert len(b) == 6 and sum(__import__("math").exp(v) for v in b) == pytest.approx(1.0, abs=1e-9)
        assert max(abs(x - y) for x, y in zip(b, s)) < 1e-5
    # Nothing to score, or more than the context: None, never a made-up value.
    too_long = engine.choice_logprobs(["", "word " * 3000], scorer.token_ids)
    assert too_long == [None, None]


def test_hf_backend_multi_turn_and_long_prompts(chatml_hf_scoring_engine, chatml_fp32_engine):
    (i1, r1), (i2, r2) = _seed_pairs(2, skip=60)
    convs = [[{"role": "user", "content": i1}, {"role": "assistant", "content": r1},
              {"role": "user", "content": i2}, {"role": "assistant", "content": r2}],
             [{"role": "user", "content": " ".join(["Explain the logging module."] * 300)},
              {"role": "assistant", "content": " ".join(["It logs."] * 300)}]]
    ours = DeitaScorer(chatml_hf_scoring_engine).score_conversations(convs)
    theirs = DeitaScorer(chatml_fp32_engine).score_conversations(convs)
    assert ours[1]["truncated"] and theirs[1]["truncated"]
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys() == {"complexity_scores", "quality_scores", "deita_score",
                                        "deita_score_reason", "score_notes", "truncated"}
        assert a["deita_score"] == pytest.approx(b["deita_score"], abs=1e-3)
        assert a["complexity_scores"] == pytest.approx(b["complexity_scores"], abs=1e-4)
        assert a["quality_scores"] == pytest.approx(b["quality_scores"], abs=1e-4)
        assert a["score_notes"] == b["score_notes"]


def test_score_conversations_with_two_models(chatml_fp32_engine, chatml_hf_scoring_engine):
    # deita's complexity and quality scorers are two checkpoints: one engine call each.
    complexity = DeitaScorer(_CountingEngine(chatml_fp32_engine))
    quality = DeitaScorer(_CountingEngine(chatml_hf_scoring_engine))
    (i1, r1), (i2, r2) = _seed_pairs(2, skip=90)
    convs = [[{"role": "user", "content": i1}, {"role": "assistant", "content": r1},
              {"role": "user", "content": i2}, {"role": "assistant", "content": r2}],
             [{"role": "assistant", "content": "orphan"}],
             [{"role": "user", "content": i2}]]
    out = complexity.score_conversations(convs, quality_scorer=quality)
    assert complexity.engine.calls == 1 and quality.engine.calls == 1
    c = complexity.complexity([i1, i2])
    q = quality.quality([i1, i2, i2], [r1, r2, ""])
    assert out[0]["complexity_scores"] == pytest.approx([s.value for s in c], abs=1e-6)
    assert out[0]["quality_scores"] == pytest.approx([s.value for s in q[:2]], abs=1e-6)
    assert out[0]["deita_score"] == pytest.approx(c[0].value * q[0].value + c[1].value * q[1].value, rel=1e-9)
    assert out[1]["deita_score"] is None and "malformed" in out[1]["deita_score_reason"]
    assert out[2]["quality_scores"] == pytest.approx([q[2].value], abs=1e-6)


def test_get_scoring_engine_cache_and_auto(tiny_chatml_path, chatml_hf_scoring_engine, chatml_fp32_engine):
    from roost.engines import EngineConfig
    from roost.engines.hf_scoring import get_scoring_engine, resolve_scoring_backend

    config = EngineConfig(model=str(tiny_chatml_path), dtype="float32", max_model_len=1024, seed=0)
    assert get_scoring_engine(config, backend="transformers") is chatml_hf_scoring_engine
    assert resolve_scoring_backend("auto") == "transformers"  # CPU: measured faster (bench_deita.py)
    assert get_scoring_engine(config) is chatml_hf_scoring_engine
    assert get_scoring_engine(config, backend="vllm") is chatml_fp32_engine  # the shared vLLM engine
    with pytest.raises(ValueError, match="backend"):
        get_scoring_engine(config, backend="onnx")
