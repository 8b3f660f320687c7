"""Cheap row rules and the shared text rules: each drop names its rule and the measured value.
Pure logic on hand-written rows (no model involved)."""
from __future__ import annotations

from roost.algorithms import text_rules
from roost.algorithms.base import FilterStep
from roost.algorithms.heuristics import BrokenTextFilter, LengthFilter, NotARequestFilter, RepeatedNgramFilter
from roost.dataset.rows import Columns, Shape, parse
from roost.synthesizers.common import instruction_rules as rules


def chat(user, assistant="A fine answer.", id="x"):
    row = {"id": id, "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": user},
                                  {"role": "assistant", "content": "first"}, {"role": "user", "content": "more"},
                                  {"role": "assistant", "content": assistant}]}
    parsed, problem = parse(row, Shape("messages"))
    assert problem is None, problem
    return parsed


def pref(prompt, chosen, rejected):
    row = {"chosen": chosen, "rejected": rejected} if prompt is None else {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    parsed, problem = parse(row, Shape("preference"))
    assert problem is None, problem
    return parsed


def test_views_on_sft_and_preference_rows():
    row = chat("Q1", "last")
    assert row.view("first_instruction") == "Q1" and row.view("response") == "last"
    assert row.view("prompt").endswith("user: more") and row.view("prompt").startswith("system: sys")
    flat, _ = parse({"instruction": "Do X", "response": "Done"}, Shape("pair", Columns(prompt="instruction", response="response")))
    assert flat.view("first_instruction") == "Do X" and flat.view("response") == "Done" and flat.view("prompt") == "Do X"
    p = pref("Name a prime.", "Seven.", "Nine.")
    assert p.kind == "preference" and p.view("prompt") == "Name a prime."
    assert (p.view("chosen"), p.view("rejected"), p.view("response")) == ("Seven.", "Nine.", "Seven.")
    # the implicit-prompt form: chosen/rejected hold whole conversations
    q = pref(None, [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
             [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}])
    assert q.prompt == [{"role": "user", "content": "Hi?"}] and q.view("rejected") == "Go away."


def test_bad_preference_rows_say_why():
    for row, needle in (({"prompt": "Q?", "chosen": None, "rejected": "x"}, "'chosen' is null"),
                        ({"prompt": None, "chosen": "a", "rejected": "x"}, "'prompt' is null"),
                        ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty or non-string content"),
                        ({"prompt": [], "chosen": "a", "rejected": "b"}, "empty or not a list"),
                        ({"prompt": "Q?", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "assistant")):
        parsed, problem = parse(row, Shape("preference"))
        assert parsed is None and needle in problem, (row, problem)


def test_length_filter_reasons():
    f = LengthFilter(min_instruction_chars=5, max_instruction_chars=20, min_response_chars=3, max_response_chars=10)
    assert f.check(chat("Hello there", "Fine.")) is None
    assert f.check(chat(" Hi ", "Fine.")).reason == "too_short_instruction"
    d = f.check(chat("x" * 21, "Fine."))
    assert d.reason == "too_long_instruction" and d.detail == "21 chars > 20"
    assert f.check(chat("Hello there", "ok")).reason == "too_short_response"
    assert f.check(chat("Hello there", "y" * 11)).reason == "too_long_response"
    flat, _ = parse({"instruction": "Hello there"}, Shape("prompt", Columns(prompt="instruction")))
    assert f.check(flat).reason == "too_short_response"
    d = f.check(pref("Hello there", "Fine.", "no"))
    assert d.reason == "too_short_response" and d.detail.startswith("rejected:")


def test_repeated_ngram_filter():
    loop = "the cat sat on the mat " * 10
    varied = ("Paris is the capital of France and has been for centuries, hosting the government, "
              "major museums such as the Louvre, and many universities.")
    assert text_rules.repeated_ngram_fraction(loop) > 0.8
    assert text_rules.repeated_ngram_fraction(varied) == 0.0
    assert text_rules.repeated_ngram_fraction("a b c") == 0.0
    f = RepeatedNgramFilter(n=3, max_fraction=0.3)
    d = f.check(chat("Tell me about Paris", loop))
    assert d.reason == "repeated_ngrams" and d.detail.startswith("response:")
    assert f.check(chat("Tell me about Paris", varied)) is None
    assert f.check(chat("Tell me", "no no no no")) is None  # too short to judge
    assert RepeatedNgramFilter(field="instruction").check(chat(loop, varied)).reason == "repeated_ngrams"
    assert RepeatedNgramFilter(field="instruction").check(chat(varied, loop)) is None
    # a looping answer in a language written without spaces is caught too
    assert f.check(chat("用一句话解释量子纠缠。", "量子纠缠很好。" * 12)).reason == "repeated_ngrams"
    assert f.check(chat("用一句话解释量子纠缠。", "两个粒子的状态彼此关联，测量一个会立即确定另一个的状态。")) is None


def test_not_a_request_filter_counts_words_in_every_language():
    f = NotARequestFilter()
    assert f.check(chat("Summarize the following text:")).detail == "ends with ':'"
    assert f.check(chat("12345 !!!")).detail == "no letters"
    assert text_rules.not_a_request("   ") == "empty instruction"  # parsing already rejects it as bad input
    assert f.check(chat("Hello")).detail == "1 words < 2"
    assert f.check(chat("What is a monad?")) is None
    assert NotARequestFilter(reject_trailing_colon=False).check(chat("Summarize the following:")) is None
    # languages written without spaces are requests too (this was "1 words < 2")
    for text in ("用一句话解释量子纠缠。", "量子もつれを一文で説明してください。", "อธิบายควอนตัมพัวพันในประโยคเดียว"):
        assert f.check(chat(text)) is None, text
    assert len(text_rules.words("用一句话解释量子纠缠。")) == 10
    assert f.check(chat("请总结以下内容：")).detail == "ends with ':'"


def test_broken_text_is_one_rule_for_magpie_and_curation():
    for text in ("bad \ufffd byte", "nul \x00 byte", "bell \x07"):
        assert BrokenTextFilter().check(chat("A fine question here?", text)).reason == "broken_text"
        assert rules.BrokenText().check({"text": text, "finish_reason": "stop"}).detail == text_rules.broken_text(text)
    assert BrokenTextFilter().check(chat("Tabs\tand\nnewlines are fine?", "Yes.")) is None
    assert BrokenTextFilter().check(pref("Q?", "ok", "bad \x00")).detail.startswith("assistant message 2")


def test_filter_step_records_reasons():
    rows = [chat("What is a monad?", "A monoid in the category of endofunctors.", id="ok"),
            chat("Translate this:", "Sure.", id="colon"),
            chat("Explain recursion please", "again " * 40, id="loop")]
    ids = {id(r): i for r, i in zip(rows, ["ok", "colon", "loop"])}
    step = FilterStep([NotARequestFilter(), RepeatedNgramFilter(), LengthFilter()], stage="heuristics",
                      record=lambda r: r.messages, row_id=lambda r: ids[id(r)])
    res = step.run(rows)
    assert [ids[id(r)] for r in res.kept] == ["ok"]
    assert {(r.id, r.reason) for r in res.rejects} == {("colon", "not_a_request"), ("loop", "repeated_ngrams")}
    assert res.counts == {"not_a_request": 1, "repeated_ngrams": 1}
    assert res.rejects[0].record == rows[1].messages
