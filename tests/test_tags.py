"""The `tags` curation stage: Magpie's tags from a chat model under structured output.

The model is the tiny ChatML model on real vLLM (the session engine): its tags mean nothing,
what is checked is that every tag it gives is one of the allowed values (structured output is
the only thing that can make a noise model do that), that unreadable answers are null with a
reason and counted, that keep rules drop exactly the rows they should with the tag named, and
that the manifest says which model, revision and prompts made the tags."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.dataset.portable import portable_path
from roost.errors import ConfigError
from roost.judges.tags import (
    ALL_TAGS,
    DIFFICULTY,
    INPUT_QUALITY,
    LANGUAGES,
    TASK_CATEGORIES,
    TASKS,
    build_tasks,
    default_schema,
    fill,
    parse_rules,
    tag_specs,
)
from roost.schemas import MESSAGES

ALLOWED = {"task_category": set(TASK_CATEGORIES), "difficulty": set(DIFFICULTY), "input_quality": set(INPUT_QUALITY),
           "language": set(LANGUAGES)}
QUESTIONS = ["How do I reverse a list in Python?", "What is the capital of France?", "Solve 3x + 5 = 20 for x.",
             "Write a haiku about autumn leaves.", "Plan a three day trip to Rome on a budget.",
             "¿Cuál es la capital de España?", "用一句话解释量子纠缠。", "Fix this: for i in range(10) print(i)",
             "asdf", "Give me five ideas for a birthday party."]
LONG = "Please summarize this text. " + "The quick brown fox jumps over the lazy dog again and again. " * 200


def _model(path: Path) -> dict:
    # the engine identity of the conftest fixture (max_model_len 1024, seed 0): the session engine is reused
    return {"model": str(path), "max_model_len": 1024}


def _read(out: Path, kind: str) -> list[dict]:
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _curate(tmp_path: Path, data: Path, stages: list[dict], name: str):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump({"stages": stages}))
    out = tmp_path / name
    result = CliRunner().invoke(app, ["curate", str(data), "--out", str(out), "--recipe", str(recipe)])
    return result, out


def _sft(tmp_path: Path, n: int = 40, long: int = 0) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"},
                          {"role": "assistant", "content": "Here is an answer."}]} for i in range(n)]
    rows += [{"messages": [{"role": "user", "content": f"{LONG} (#{i})"}, {"role": "assistant", "content": "Ok."}]}
             for i in range(long)]
    path = tmp_path / "sft.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([pa.field("messages", MESSAGES)])), path)
    return path


def _pairs(tmp_path: Path, n: int = 36, long: int = 4) -> Path:
    prompts = [f"{QUESTIONS[i % len(QUESTIONS)]} (pair {i})" for i in range(n)] + [f"{LONG} (pair {i})" for i in range(long)]
    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": "A careful answer."}],
             "rejected": [{"role": "assistant", "content": "No."}]} for p in prompts]
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([pa.field(c, MESSAGES) for c in
                                                                ("prompt", "chosen", "rejected")])), path)
    return path


# -- tags, schemas and rules (pure) -------------------------------------------------------------


def test_magpie_tag_sets_and_default_answer_schemas():
    assert len(TASK_CATEGORIES) == 12 and "Others" in TASK_CATEGORIES  # not Magpie's notebook's "Other"
    assert len(LANGUAGES) == len(set(LANGUAGES)) == 183 and {"en", "zh", "es", "ja"} <= set(LANGUAGES)
    assert set(ALL_TAGS) == set(ALLOWED)
    schema = default_schema(TASKS["difficulty"], 50)
    assert list(schema["properties"]) == ["intent", "knowledge", "difficulty"]  # reasons before the tag, as Magpie
    assert schema["properties"]["intent"]["maxLength"] == 50 and schema["required"] == ["intent", "knowledge", "difficulty"]
    assert list(default_schema(TASKS["quality"], 0)["properties"]) == ["input_quality"]  # 0: the tag alone
    tasks = build_tasks(["language", "input_quality"])
    assert list(tasks) == ["quality", "language"] and [t.name for t in tasks["quality"].tags] == ["input_quality"]
    assert tasks["quality"].describe()["prompt_version"] == "magpie-quality-1"
    assert fill("Q: {input} {input}", "{input} {x}") == "Q: {input} {x} {input} {x}"  # one pass


def test_keep_rules_compare_ordered_tags_by_level_and_name_the_failure():
    specs = tag_specs(build_tasks(list(ALL_TAGS)))
    (q, d, c, lang) = parse_rules({"input_quality": ">= good", "difficulty": "<medium",
                                   "task_category": ["Math", "Coding & Debugging"], "language": "en"}, specs)
    assert [q.failure(v) for v in INPUT_QUALITY] == ["very poor < good", "poor < good", "average < good", None, None]
    assert d.failure("easy") is None and d.failure("medium") == "medium >= medium"
    assert c.failure("Math") is None and c.failure("Reasoning") == "Reasoning not in [Math, Coding & Debugging]"
    assert lang.failure("en") is None and lang.failure("fr") == "fr != en"
    assert q.failure(None) == "input_quality is null (unreadable answer)"
    assert parse_rules({"difficulty": "> hard"}, specs)[0].failure("very hard") is None
    assert parse_rules({"difficulty": "!= hard"}, specs)[0].failure("hard") == "hard == hard"
    for keep, needle in [({"input_quality": ">= great"}, "input_quality: unknown level 'great'"),
                         ({"task_category": ">= Math"}, "'>=' needs an ordered tag"),
                         ({"task_category": ["Maths"]}, "unknown level 'Maths'"),
                         ({"language": "english"}, "unknown level 'english' (levels: ISO 639-1 codes"),
                         ({"mood": "happy"}, "mood: not one of this stage's tags")]:
        with pytest.raises(ConfigError) as e:
            parse_rules(keep, specs)
        assert needle in str(e.value)


def test_bad_tag_configs_are_one_line_exit_2(tmp_path, tiny_chatml_path):
    data = _sft(tmp_path, 2)
    not_schema = tmp_path / "bad-schema.json"
    not_schema.write_text(json.dumps({"type": "object", "properties": {"input_quality": {"type": "strin"}}}))
    not_json = tmp_path / "not.json"
    not_json.write_text("{input_quality: [")
    no_enum = tmp_path / "no-enum.json"
    no_enum.write_text(json.dumps({"type": "object", "properties": {"input_quality": {"type": "string"}}}))
    no_input = tmp_path / "t.txt"
    no_input.write_text("Rate this query: {query}")
    m = _model(tiny_chatml_path)
    cases = [
        ({"tags": ["mood"]}, "field 'stages[0](tags).tags'", "unknown tag 'mood'"),
        ({"keep": {"input_quality": ">= great"}}, "field 'stages[0](tags).keep'", "unknown level 'great'"),
        ({"tags": ["language"], "keep": {"difficulty": "hard"}}, "(tags).keep", "not one of this stage's tags"),
        ({"schemas": {"quality": str(not_schema)}}, "(tags).schemas", "is not valid JSON Schema (at properties/input_quality/type"),
        ({"schemas": {"quality": str(not_json)}}, "(tags).schemas", "not.json is not JSON (line 1"),
        ({"schemas": {"quality": str(no_enum)}}, "(tags).schemas", "must have a required property 'input_quality' with an \"enum\""),
        ({"schemas": {"mood": str(no_enum)}}, "(tags).schemas", "unknown task 'mood'"),
        ({"templates": {"difficulty": str(no_input)}}, "(tags).templates", "has no {input} placeholder"),
        ({"view": "title"}, "(tags).view", "Input should be"),
        ({"model": str(tmp_path / "no-model")}, "model", "no such directory"),
    ]
    for extra, field, needle in cases:
        result, _ = _curate(tmp_path, data, [{"kind": "tags", "model": m, **extra}], "bad")
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        text = " ".join(lines)
        assert result.exit_code == 2 and len(lines) == 1 and field in text and needle in text, (extra, result.output)


def test_custom_schema_sets_the_levels_and_their_order(tmp_path):
    schema = tmp_path / "q.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"input_quality": {"enum": ["bad", "ok", "great"]}},
                                  "required": ["input_quality"], "additionalProperties": False}))
    tasks = build_tasks(["input_quality"], schemas={"quality": str(schema)})
    assert tasks["quality"].tags[0].levels == ("bad", "ok", "great") and tasks["quality"].explanations == ()
    assert tasks["quality"].describe()["schema_source"] == str(schema)
    (rule,) = parse_rules({"input_quality": "> ok"}, tag_specs(tasks))
    assert rule.failure("great") is None and rule.failure("bad") == "bad <= ok"


# -- on the tiny model, through `roost curate` ------------------------------------------------------


def test_tags_on_sft_rows_are_all_valid_and_recorded(tmp_path, chatml_engine, tiny_chatml_path):
    data = _sft(tmp_path, 40, long=2)
    stage = {"kind": "tags", "model": _model(tiny_chatml_path), "max_explanation_chars": 60}  # the tiny model fills it
    result, out = _curate(tmp_path, data, [stage], "sft")
    assert result.exit_code == 0, result.output
    rows, rejects = _read(out, "data"), _read(out, "rejects")
    assert len(rows) == 42 and rejects == []
    readable = [r for r in rows if not r["messages"][0]["content"].startswith("Please summarize")]
    assert len(readable) == 40
    for r in readable:  # every tag of every finished answer is one of its values; none is null
        assert r["tags_reason"] is None, r["tags_reason"]
        for tag, allowed in ALLOWED.items():
            assert r[tag] in allowed, (tag, r[tag])
        for col in ("intent", "knowledge", "quality_explanation"):  # capped by the schema
            assert isinstance(r[col], str) and len(r[col]) <= 60
        assert r["tags_model"] == str(tiny_chatml_path)
    for r in rows:
        if r not in readable:  # over the context: null tags with the reason, never a made-up tag
            assert all(r[tag] is None for tag in ALLOWED)
            assert "over the model's limit of 1023" in r["tags_reason"] and r["tags_reason"].startswith("difficulty: ")
    manifest = json.loads((out / "manifest.json").read_text())
    st = next(s for s in manifest["stages"] if s["name"] == "tags")
    tagger = st["settings"]["tagger"]
    # the manifest records the model path portably (roost.dataset.portable), its identity by revision
    assert tagger["model"] == portable_path(str(tiny_chatml_path), out) and tagger["revision"].startswith("local-sha256:")
    assert tagger["structured_outputs"] == {"backend": "guidance", "disable_any_whitespace": True}
    assert tagger["decoding"] == {"temperature": 0.0, "max_tokens": 1024}
    assert {k: v["prompt_version"] for k, v in tagger["tasks"].items()} == {
        "difficulty": "magpie-difficulty-1", "quality": "magpie-quality-1",
        "classification": "magpie-classification-1", "language": "roost-language-1"}
    assert all(len(v["template_sha256"]) == len(v["schema_sha256"]) == 16 for v in tagger["tasks"].values())
    assert st["settings"]["unreadable"] == {t: {"context_overflow": 2} for t in TASKS}

    # the same questions asked directly give the same tags (the columns are the model's answers)
    from roost.judges.tags import Tagger

    direct = Tagger(chatml_engine, build_tasks(list(ALL_TAGS), max_explanation_chars=60), max_tokens=1024).tag(
        [r["messages"][0]["content"] for r in readable[:8]])
    assert [{t: d.values[t] for t in ALLOWED} for d in direct] == [{t: r[t] for t in ALLOWED} for r in readable[:8]]


def test_tags_on_preference_rows_and_keep_rules(tmp_path, chatml_engine, tiny_chatml_path):
    data = _pairs(tmp_path, 36, long=4)
    base = {"kind": "tags", "model": _model(tiny_chatml_path), "max_explanation_chars": 40}
    result, out = _curate(tmp_path, data, [base], "all")
    assert result.exit_code == 0, result.output
    tagged = {r["id"]: r for r in _read(out, "data")}
    assert len(tagged) == 40
    readable = [r for r in tagged.values() if r["tags_reason"] is None]
    assert len(readable) == 36 and all(r[t] in ALLOWED[t] for r in readable for t in ALLOWED)
    assert all(len(r["intent"]) <= 40 for r in readable)

    # keep rules: the expected survivors follow from the tags above (greedy decoding: same tags)
    seen = readable[0]["input_quality"]
    op = ">" if seen != INPUT_QUALITY[-1] else "<"
    categories = sorted({r["task_category"] for r in readable})
    keep = {"input_quality": f"{op} {seen}", "task_category": categories}
    result, out = _curate(tmp_path, data, [{**base, "keep": keep}], "kept")
    assert result.exit_code == 0, result.output
    (rule_q, rule_c) = parse_rules(keep, tag_specs(build_tasks(list(ALL_TAGS))))
    expected = {i for i, r in tagged.items() if rule_q.failure(r["input_quality"]) is None
                and rule_c.failure(r["task_category"]) is None}
    assert {r["id"] for r in _read(out, "data")} == expected
    rejects = _read(out, "rejects")
    assert len(rejects) == 40 - len(expected) >= 5  # at least the 4 unreadable rows and row 0
    for rej in rejects:
        row = tagged[rej["id"]]
        assert rej["stage"] == "tags" and rej["reason"] == "tag_input_quality"  # the first rule that fails
        assert rej["detail"] == rule_q.failure(row["input_quality"])
    flipped = {">": "<=", "<": ">="}[op]
    assert any(rej["detail"] == f"{seen} {flipped} {seen}" for rej in rejects)  # e.g. "poor <= poor"
    manifest = json.loads((out / "manifest.json").read_text())
    st = next(s for s in manifest["stages"] if s["name"] == "tags")
    assert st["removed"] == {"tag_input_quality": len(rejects)}
    assert st["settings"]["keep"] == [f"input_quality {op} {seen}", f"task_category in [{', '.join(categories)}]"]


def test_engine_structured_output_choice_schema_and_refusal(chatml_engine):
    """The engine method the stages use: `Sampling(choice=...)` and `Sampling(json_schema=...)`
    hold on a noise model; a schema the backend refuses is one ModelError, and the engine runs on."""
    from roost.engines import Sampling
    from roost.errors import ModelError

    prompts = [f"<|im_start|>user\nPick one ({i})<|im_end|>\n<|im_start|>assistant\n" for i in range(6)]
    picks = chatml_engine.generate(prompts, Sampling(max_tokens=8, temperature=1.0, choice=("yes", "no", "maybe")), seed=3)
    assert all(g.completions[0].text in ("yes", "no", "maybe") for g in picks)
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 3},
                                               "tag": {"enum": ["a", "b"]}},
              "required": ["n", "tag"], "additionalProperties": False}
    gens = chatml_engine.generate(prompts, Sampling(max_tokens=32, temperature=1.0, json_schema=schema), seed=3)
    for g in gens:
        assert g.completions[0].finish_reason == "stop"
        value = json.loads(g.completions[0].text)
        assert value["n"] in (1, 2, 3) and value["tag"] in ("a", "b") and " " not in g.completions[0].text
    assert Sampling(max_tokens=4, json_schema=schema).record()["json_schema"] == json.dumps(schema, sort_keys=True)
    assert "json_schema" not in Sampling(max_tokens=4).record()  # unconstrained records keep their shape
    greedy = Sampling(max_tokens=32, temperature=0.0, json_schema=schema)
    before = [g.completions[0].text for g in chatml_engine.generate(prompts, greedy, seed=3)]
    refused = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=x)y"}}, "required": ["a"]}
    with pytest.raises(ModelError, match="vLLM refused the structured-output request"):
        chatml_engine.generate(prompts[:2], Sampling(max_tokens=8, json_schema=refused), seed=3)
    # nothing of the refused call is left queued: the next call gets its own answers, the same as before
    assert [g.completions[0].text for g in chatml_engine.generate(prompts, greedy, seed=3)] == before
