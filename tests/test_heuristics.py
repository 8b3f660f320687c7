"""Cheap heuristic filters: each drop names its rule and the measured value."""
from __future__ import annotations

from roost.filters.base import FilterStep
from roost.filters.heuristics import (
    LengthFilter, NotARequestFilter, RepeatedNgramFilter, first_instruction, last_response,
    repeated_ngram_fraction,
)


def chat(user, assistant="A fine answer.", id="x"):
    return {"id": id, "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": user},
                                   {"role": "assistant", "content": "first"}, {"role": "user", "content": "more"},
                                   {"role": "assistant", "content": assistant}]}


def test_helpers_read_messages_and_columns():
    row = chat("Q1", "last")
    assert first_instruction(row) == "Q1" and last_response(row) == "last"
    flat = {"instruction": "Do X", "response": "Done"}
    assert first_instruction(flat) == "Do X" and last_response(flat) == "Done"
    assert first_instruction({}) == "" and last_response({"messages": [{"role": "user", "content": "q"}]}) == ""


def test_length_filter_reasons():
    f = LengthFilter(min_instruction_chars=5, max_instruction_chars=20, min_response_chars=3, max_response_chars=10)
    assert f.check(chat("Hello there", "Fine.")) is None
    assert f.check(chat(" Hi ", "Fine.")).reason == "too_short_instruction"
    d = f.check(chat("x" * 21, "Fine."))
    assert d.reason == "too_long_instruction" and d.detail == "21 chars > 20"
    assert f.check(chat("Hello there", "ok")).reason == "too_short_response"
    assert f.check(chat("Hello there", "y" * 11)).reason == "too_long_response"
    assert f.check({"instruction": "Hello there"}).reason == "too_short_response"
    assert LengthFilter(None, None, None, None).check({"instruction": ""}) is None


def test_repeated_ngram_filter():
    loop = "the cat sat on the mat " * 10
    varied = ("Paris is the capital of France and has been for centuries, hosting the government, "
              "major museums such as the Louvre, and many universities.")
    assert repeated_ngram_fraction(loop) > 0.8
    assert repeated_ngram_fraction(varied) == 0.0
    assert repeated_ngram_fraction("a b c") == 0.0
    f = RepeatedNgramFilter(n=3, max_fraction=0.3)
    d = f.check(chat("Tell me about Paris", loop))
    assert d.reason == "repeated_ngrams" and d.detail.startswith("response:")
    assert f.check(chat("Tell me about Paris", varied)) is None
    assert f.check(chat("Tell me", "no no no no")) is None  # too short to judge
    assert RepeatedNgramFilter(field="instruction").check(chat(loop, varied)).reason == "repeated_ngrams"
    assert RepeatedNgramFilter(field="instruction").check(chat(varied, loop)) is None


def test_not_a_request_filter():
    f = NotARequestFilter()
    assert f.check(chat("Summarize the following text:")).detail == "ends with ':'"
    assert f.check(chat("12345 !!!")).detail == "no letters"
    assert f.check(chat("   ")).detail == "empty instruction"
    assert f.check(chat("Hello")).reason == "not_a_request"
    assert f.check(chat("What is a monad?")) is None
    assert NotARequestFilter(reject_trailing_colon=False).check(chat("Summarize the following:")) is None


def test_filter_step_records_reasons():
    rows = [chat("What is a monad?", "A monoid in the category of endofunctors.", id="ok"),
            chat("Translate this:", "Sure.", id="colon"),
            chat("Explain recursion please", "again " * 40, id="loop")]
    res = FilterStep([NotARequestFilter(), RepeatedNgramFilter(), LengthFilter()], stage="heuristics").run(rows)
    assert [r["id"] for r in res.kept] == ["ok"]
    assert {(r.id, r.reason) for r in res.rejects} == {("colon", "not_a_request"), ("loop", "repeated_ngrams")}
    assert res.counts == {"not_a_request": 1, "repeated_ngrams": 1}
