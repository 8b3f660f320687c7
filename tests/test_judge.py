"""The pairwise LLM judge: template handling (pure), and win matrices read from a real model's
answer-token logprobs (the tiny ChatML model on real vLLM: its verdicts mean nothing, their
arithmetic is what is checked)."""
from __future__ import annotations

import math

import pytest

from roost.errors import ConfigError, ModelError
from roost.judges.pairwise import (
    TEMPLATE_VERSION, PairwiseJudge, answer_token_ids, both_orders, check_template, default_template, fill, first_is_better,
    load_template, plain_conversation,
)

CONV = [{"role": "user", "content": "What does the zip function do?"}]
RESPONSES = ["It pairs up the items of several iterables.", "Banana.", "zip returns an iterator of tuples.",
             "I do not know."]


# -- template and answer arithmetic (pure) -------------------------------------------------------


def test_template_placeholders_are_checked_and_filled_in_one_pass(tmp_path):
    text = default_template()
    check_template(text)
    assert fill("{conversation}|{response_a}|{response_b}", "c", "{response_b}", "b") == "c|{response_b}|b"
    assert plain_conversation([{"role": "system", "content": "Be brief."}, *CONV,
                               {"role": "assistant", "content": "It zips."}, {"role": "user", "content": "And?"}]) == (
        "System: Be brief.\nUser: What does the zip function do?\nAssistant: It zips.\nUser: And?")
    bad = tmp_path / "judge.txt"
    bad.write_text("Which is better, {response_a} or {response_b}?")
    with pytest.raises(ConfigError, match=r"field 'synthesizer.preference.template': .*judge.txt has no \{conversation\}"):
        load_template(str(bad), field="synthesizer.preference.template")
    with pytest.raises(ConfigError, match="cannot read judge template"):
        load_template(str(tmp_path / "missing.txt"))
    good = tmp_path / "ok.txt"
    good.write_text("{conversation}\n1: {response_a}\n2: {response_b}\nJSON {\"a\": 1}. A or B?")
    assert load_template(str(good)) == good.read_text()


def test_two_way_softmax_and_both_orders():
    # scripted logprobs stand in for the engine's (exact values are the point)
    p, why = first_is_better([-0.1, -2.4])
    assert why is None and p == pytest.approx(1 / (1 + math.exp(-2.3)))
    assert first_is_better([0.0, 0.0])[0] == 0.5 and first_is_better([-800.0, 0.0])[0] == pytest.approx(0.0)
    assert first_is_better(None) == (None, "the judge engine returned no logprob for 'A' or 'B'")
    # a judge that always says "A" with 0.9 has no preference once both orders are averaged
    assert both_orders(0.9, 0.9) == pytest.approx(0.5)
    assert both_orders(0.8, 0.4) == pytest.approx(0.7) and both_orders(0.8, None) is None


def test_answers_must_be_one_token_after_the_generation_prompt(tiny_chatml_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chatml_path)
    a, b = answer_token_ids(tok, default_template())
    assert a != b and tok.decode([a]) == "A" and tok.decode([b]) == "B"
    tok.chat_template = "{{ messages[0]['content'] }}\nAnswer: "  # the space merges with the letter
    with pytest.raises(ModelError, match="'A' is not exactly one token after the generation prompt"):
        answer_token_ids(tok, default_template())
    tok.chat_template = None
    with pytest.raises(ModelError, match="has no chat template"):
        answer_token_ids(tok, default_template())


# -- the judge on a real model ---------------------------------------------------------------------


def test_win_matrix_on_the_tiny_model_is_complementary_and_cancels_position_bias(chatml_engine):
    judge = PairwiseJudge(chatml_engine)
    info = judge.describe()
    assert info["template_version"] == TEMPLATE_VERSION and len(info["template_sha256"]) == 16
    assert info["revision"].startswith("local-sha256:") and set(info["answer_token_ids"]) == {"A", "B"}

    second = [{"role": "user", "content": "How do I sort a list?"}]
    (m, m2) = judge.win_matrices([(CONV, RESPONSES + [None]), (second, ["sorted(xs)", "xs.sort()"])])
    k = len(RESPONSES)
    assert m.reasons == [] and all(v is None for v in m.probs[k]) and all(r[k] is None for r in m.probs)
    for i in range(k):
        assert m.probs[i][i] == 0.5 and m.first[i][i] is None
        for j in range(k):
            assert 0.0 <= m.probs[i][j] <= 1.0
            assert m.probs[i][j] + m.probs[j][i] == pytest.approx(1.0, abs=1e-6)
            if i != j:
                assert m.probs[i][j] == pytest.approx(0.5 * (m.first[i][j] + 1 - m.first[j][i]))
    # position bias is there in one order and gone once both are averaged
    singles = [m.first[i][j] for i in range(k) for j in range(k) if i != j]
    both = [m.probs[i][j] for i in range(k) for j in range(k) if i != j]
    bias = sum(singles) / len(singles) - 0.5
    assert abs(bias) > 0.05, singles  # the tiny model favours one position
    assert sum(both) / len(both) == pytest.approx(0.5, abs=1e-9)
    assert max(abs(s - b) for s, b in zip(singles, both)) > 0.05
    assert m2.probs[0][1] + m2.probs[1][0] == pytest.approx(1.0, abs=1e-6)

    # the pair API asks both orders in one call; one order alone keeps the bias
    (pref,) = judge.compare([(CONV, RESPONSES[0], RESPONSES[1])])
    assert pref.value == pytest.approx(0.5 * (pref.a_first + 1 - pref.b_first)) and pref.reason is None
    ab, ba = judge.prob_first_better([(CONV, RESPONSES[0], RESPONSES[1]), (CONV, RESPONSES[1], RESPONSES[0])])
    assert ab == pytest.approx(pref.a_first, abs=1e-2) and ba == pytest.approx(pref.b_first, abs=1e-2)


def test_questions_too_long_for_the_judge_are_none_with_a_reason(chatml_engine):
    judge = PairwiseJudge(chatml_engine)
    long = "word " * 1500
    (m,) = judge.win_matrices([(CONV, [RESPONSES[0], long, RESPONSES[1]])])
    assert m.probs[0][2] is not None and m.probs[0][1] is None and m.probs[1][2] is None
    assert len(m.reasons) == 4 and all("over the judge's limit of 1023" in r for r in m.reasons)
    (pref,) = judge.compare([(CONV, long, RESPONSES[0])])
    assert pref.value is None and "tokens, over the judge's limit" in pref.reason
