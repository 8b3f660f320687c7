"""Bring your own data: the shapes people have (ShareGPT, Alpaca, OpenAI messages, prompt and
question columns, UltraFeedback preference rows) in the files they have them in (JSON arrays,
JSON Lines, CSV, Parquet), through `roost curate` and `roost build` as a user runs them, with
CJK text. Samples are shipped in tests/data/inputs (made by hand, described in each test)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app

SAMPLES = Path(__file__).parent / "data" / "inputs"
STAGES = "stages: [{kind: heuristics}, {kind: exact_dedup}]\n"


def _read(out: Path, part: str = "data") -> list[dict]:
    return [r for f in sorted((out / part).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _curate(tmp_path: Path, input: Path | str, recipe: str = STAGES, name: str = "out"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(recipe)
    out = tmp_path / name
    result = CliRunner().invoke(app, ["curate", str(input), "--out", str(out), "--recipe", str(path)])
    return result, out


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_sharegpt_json_array_with_system_tool_turns_and_cjk(tmp_path):
    """12 conversations: a system turn, a two-turn chat, a tool call (function_call ->
    observation), Japanese and Chinese, and one that starts with the assistant."""
    result, out = _curate(tmp_path, SAMPLES / "sharegpt.json")
    assert result.exit_code == 0, result.output
    assert "12 rows of ShareGPT ({from, value} turns) from messages='conversations'" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_shape"] == {"format": "sharegpt", "columns": {"messages": "conversations"}}
    assert manifest["input"]["kind"] == "json" and len(manifest["input_identity"]["sha256"]) == 16
    rows, rejects = _read(out), _read(out, "rejects")
    assert len(rows) == 11 and {r["id"] for r in rows} >= {"sg-0", "sg-1", "sg-tool"}
    (bad,) = rejects
    assert bad["reason"] == "bad_input" and "expected role 'user'" in bad["detail"] and bad["id"] is None
    tool = next(r for r in rows if r["id"] == "sg-tool")
    assert [t["from"] for t in tool["conversations"]] == ["human", "function_call", "observation", "gpt"]
    assert any("東京" in t["value"] for r in rows for t in r["conversations"])  # CJK kept, not filtered


def test_alpaca_input_is_joined_so_shared_instructions_are_not_duplicates(tmp_path):
    """Alpaca: 4 rows with an empty input, 9 different questions in `input` under one shared
    instruction ("Answer the question below."): all 13 are different examples."""
    result, out = _curate(tmp_path, SAMPLES / "alpaca.json")
    assert result.exit_code == 0, result.output
    assert "Alpaca (instruction, input, output) from prompt='instruction', 'input', response='output'" in result.output
    rows = _read(out)
    assert len(rows) == 13 and not _read(out, "rejects")
    assert {r["input"] for r in rows if r["instruction"] == "Answer the question below."} >= {
        "What is the chemical symbol for gold?", "月は地球の周りを何日で回りますか？"}


def test_alpaca_joined_prompt_follows_alpacas_template_order():
    from roost.dataset.rows import detect, parse

    schema = pa.schema([("instruction", pa.string()), ("input", pa.string()), ("output", pa.string())])
    shape = detect(schema)
    parsed, _ = parse({"instruction": "Answer the question below.", "input": "What is 2+2?", "output": "4"}, shape)
    assert parsed.messages == [{"role": "user", "content": "Answer the question below.\n\nWhat is 2+2?"},
                               {"role": "assistant", "content": "4"}]
    parsed, _ = parse({"instruction": "Say hi.", "input": "", "output": "Hi!"}, shape)
    assert parsed.messages[0]["content"] == "Say hi."


@pytest.mark.parametrize("name,format,kept", [
    ("messages.jsonl", "messages", 10), ("prompts.jsonl", "prompt", 0), ("questions.csv", "prompt", 0),
    ("ultrafeedback.jsonl", "preference", 10)])
def test_other_shapes_are_detected_and_kept(tmp_path, name, format, kept):
    """Prompt-only rows have no response: heuristics' minimum response length rejects them
    with that reason (curating prompts is selection, dedup and decontamination), never as bad input."""
    result, out = _curate(tmp_path, SAMPLES / name)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input_shape"]["format"] == format
    rows, rejects = _read(out), _read(out, "rejects")
    assert len(rows) == kept
    assert all(r["reason"] != "bad_input" for r in rejects), rejects
    if format == "preference":  # UltraFeedback: string prompt, the user turn in chosen/rejected, scores kept
        assert {"score_chosen", "score_rejected", "prompt_id"} <= set(rows[0])
    if name == "questions.csv":  # ids keep their zeros; a quoted newline stays in its cell
        assert manifest["input_rows"] == 11 and {r["record"] for r in rejects if '"010"' in r["record"]}
    if format == "prompt":  # an exact_dedup-only recipe keeps every prompt
        result, out = _curate(tmp_path, SAMPLES / name, "stages: [{kind: exact_dedup}]\n", name="dedup")
        assert result.exit_code == 0 and len(_read(out)) == (11 if name == "questions.csv" else 10)


def test_format_and_columns_override_and_their_errors(tmp_path):
    src = tmp_path / "qa.jsonl"
    src.write_text("".join(json.dumps({"q": f"Question number {i}?", "a": f"Answer number {i}."}) + "\n" for i in range(6)))
    result, out = _curate(tmp_path, src, STAGES)
    assert "cannot tell what the rows are (columns: q, a)" in _one_line_error(result)
    result, out = _curate(tmp_path, src, "input: {format: pair, columns: {prompt: q, response: a}}\n" + STAGES)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["input_shape"] == {
        "format": "pair", "columns": {"prompt": "q", "response": "a"}}
    assert len(_read(out)) == 6
    result, _ = _curate(tmp_path, src, "input: {columns: {prompt: question}}\n" + STAGES, name="o3")
    assert _one_line_error(result) == f"error: {src}: input.columns.prompt: no column 'question' (columns: q, a)"


def test_mostly_bad_input_stops_naming_the_first_bad_row(tmp_path):
    """ShareGPT read as {role, content} messages: every row bad, so nothing runs."""
    result, out = _curate(tmp_path, SAMPLES / "sharegpt.json", "input: {format: messages}\n" + STAGES)
    line = _one_line_error(result)
    assert "12 of 12 rows cannot be read as messages ({role, content} turns)" in line
    assert "first: row 0: conversations[0]: not a {role, content} message" in line
    assert not (out / "data").exists() or not _read(out)


def test_unreadable_files_and_mixed_directories_are_one_line(tmp_path):
    result, _ = _curate(tmp_path, SAMPLES / "broken.csv")
    assert "broken.csv: cannot read it as CSV" in _one_line_error(result)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(SAMPLES / "sharegpt.json", mixed / "a.json")
    shutil.copy(SAMPLES / "messages.jsonl", mixed / "b.jsonl")
    result, _ = _curate(tmp_path, mixed, name="o2")
    line = _one_line_error(result)
    assert "files with different columns: a.json (id, conversations) and b.jsonl (messages)" in line
    weird = tmp_path / "rows.txt"
    weird.write_text("hello\n")
    result, _ = _curate(tmp_path, weird, name="o3")
    assert "not a file roost reads" in _one_line_error(result)


def test_an_edited_input_is_a_new_curation_not_a_finished_one(tmp_path):
    src = tmp_path / "in.jsonl"
    shutil.copy(SAMPLES / "messages.jsonl", src)
    result, out = _curate(tmp_path, src)
    assert result.exit_code == 0, result.output
    again, _ = _curate(tmp_path, src)
    assert again.exit_code == 0, again.output
    with src.open("a") as fh:
        fh.write(json.dumps({"messages": [{"role": "user", "content": "One more question?"},
                                          {"role": "assistant", "content": "One more answer."}]}) + "\n")
    result, _ = _curate(tmp_path, src)
    assert "was curated from another version of" in _one_line_error(result)


# -- builds: prompts in the shapes people have -------------------------------------------------


def _pairs_recipe(tmp_path: Path, model: Path, reward: Path, prompts: dict) -> Path:
    recipe = {"name": "byod", "model": {"model": str(model), "max_model_len": 1024, "seed": 0},
              "output": {"shard_size": 6},
              "synthesizer": {"kind": "reward_pairs", "prompts": prompts, "k": 2,
                              "sampling": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 16},
                              "reward_model": {"model": str(reward), "max_model_len": 1024}}}
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_csv_of_questions_builds_pairs_and_an_edited_file_is_refused(tmp_path, chatml_engine, tiny_chatml_path,
                                                                       tiny_rm_chatml_path):
    prompts = tmp_path / "questions.csv"
    shutil.copy(SAMPLES / "questions.csv", prompts)
    recipe = _pairs_recipe(tmp_path, tiny_chatml_path, tiny_rm_chatml_path, {"path": str(prompts)})
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "11 rows of prompts from prompt='question'" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    (described,) = manifest["inputs"].values()
    assert described["format"] == "prompt" and described["columns"] == {"prompt": "question"}
    asked = {r["prompt"][-1]["content"] for r in _read(out)} | {
        json.loads(r["record"]).get("question") or json.loads(r["record"])["prompt"][-1]["content"]
        for r in _read(out, "rejects")}
    assert "日本の首都はどこですか？" in asked and "List, in order, the first three planets\nfrom the Sun." in asked

    prompts.write_text(prompts.read_text().replace("Spanish", "French"))
    result = CliRunner().invoke(app, ["build", str(recipe), "--out", str(out)])
    assert "was built from another version of" in _one_line_error(result)


def test_prompt_and_sharegpt_files_are_prompts_for_a_build(tmp_path):
    """What a prompted synthesizer reads from each shape (its input, opened and checked; no model)."""
    from roost.synthesizers.common.prompted import PromptRows, PromptSource

    def prompts(name, **kw):
        rows = PromptRows(PromptSource(path=str(SAMPLES / name), **kw), who="test")
        return [parsed.prompt for _, parsed, problem, _ in rows.rows(0, rows.total) if not problem]

    assert prompts("prompts.jsonl")[2] == [{"role": "user", "content": "日本の首都はどこですか？"}]
    share = prompts("sharegpt.json")
    assert share[0] == [{"role": "system", "content": "You are a concise assistant."},
                        {"role": "user", "content": "What is the capital of France?"}]
    assert share[1][-1] == {"role": "user", "content": "And the secondary ones?"}  # up to the last user turn
    assert prompts("alpaca.json")[7][0]["content"] == "Answer the question below.\n\nWhat is the boiling point of water at sea level?"


# -- the Hub: by config and commit, downloaded once (the loopback stand-in Hub, tests/fake_hub.py) --

CARD = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*.parquet
- config_name: socratic
  data_files:
  - split: train
    path: socratic/train-*.parquet
---
# A GSM8K-shaped set
"""


def _parquet(rows: list[dict]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


def _qa(n: int, tag: str) -> list[dict]:
    return [{"question": f"{tag} question {i}: what is {i} plus {i}?",
             "answer": f"{i} plus {i} makes {2 * i}.\n#### {2 * i}"} for i in range(n)]


def _hub_env(tmp_path: Path, hub, offline: bool = False) -> dict:
    from procs import tagged_env

    return tagged_env(HF_ENDPOINT=hub.url, HF_TOKEN="hf_test_token", HF_HOME=str(tmp_path / "hf-home"),
                      HF_DATASETS_CACHE=str(tmp_path / "datasets-cache"), HF_HUB_OFFLINE="1" if offline else "0",
                      PREFECT_HOME=str(tmp_path / "prefect-home"))


def _run(env: dict, *args, timeout: float = 600):
    import subprocess

    from procs import roost

    return subprocess.run(roost(*args), env=env, capture_output=True, text=True, timeout=timeout)


def test_a_hub_dataset_by_config_and_commit_downloaded_once_and_a_moved_branch_refused(tmp_path):
    from fake_hub import FakeHub

    with FakeHub("hf_test_token") as hub:
        first = hub.put("example/gsm8k-mini", {"README.md": CARD.encode(), "main/train-0.parquet": _parquet(_qa(6, "main")),
                                               "socratic/train-0.parquet": _parquet(_qa(5, "socratic"))})
        env = _hub_env(tmp_path, hub)
        recipe = tmp_path / "c.yaml"
        recipe.write_text("input: {format: pair}\nstages: [{kind: exact_dedup}]\n")
        out = tmp_path / "out"
        done = _run(env, "curate", "hf://example/gsm8k-mini?name=main", "--out", out, "--recipe", recipe)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "6 rows of prompt/response pairs from prompt='question', response='answer'" in done.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["input"]["revision"] == first and manifest["input"]["config"] == "main"
        assert manifest["input_identity"] == {"dataset": "example/gsm8k-mini", "config": "main", "split": "train",
                                              "revision": first}
        assert [r["question"] for r in _read(out)] == [r["question"] for r in _qa(6, "main")]
        # three passes over the input, one download of the config's file; the other config's never
        got = [r.path for r in hub.requests if r.route == "resolve" and r.method == "GET"]
        assert got.count(f"/datasets/example/gsm8k-mini/resolve/{first}/main/train-0.parquet") == 1, got
        assert not [p for p in got if "socratic" in p]

        moved = hub.put("example/gsm8k-mini", {"README.md": CARD.encode(), "main/train-0.parquet": _parquet(_qa(7, "main")),
                                               "socratic/train-0.parquet": _parquet(_qa(5, "socratic"))})
        again = _run(env, "curate", "hf://example/gsm8k-mini?name=main", "--out", out, "--recipe", recipe)
        assert again.returncode == 2, again.stderr[-3000:]
        assert f"was curated from another version of hf://example/gsm8k-mini?name=main (then commit {first[:12]}, " \
               f"now commit {moved[:12]})" in again.stderr
        pinned = f"hf://example/gsm8k-mini?name=main&revision={first}"
        offline = _run(_hub_env(tmp_path, hub, offline=True), "curate", pinned, "--out", tmp_path / "pinned",
                       "--recipe", recipe)
        assert offline.returncode == 0, offline.stderr[-3000:]  # the commit from the cache, no request
        assert len(_read(tmp_path / "pinned")) == 6
        nothing = _run(env, "curate", "hf://example/no-such-set", "--out", tmp_path / "o3", "--recipe", recipe)
        assert nothing.returncode == 2 and "hf://example/no-such-set: cannot resolve revision 'main'" in nothing.stderr


def test_a_build_over_a_hub_set_reads_it_once_and_a_moved_branch_is_not_resumed(tmp_path, tiny_chatml_path):
    """SPIN over a Hub set of conversations in 3 shards: one download for the build; the branch
    moves while the output is unfinished, and the resume is refused naming the commit to pin."""
    from fake_hub import FakeHub

    rows = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in (
        [(f"Question {i} of the set?", f"The answer to question {i}.") for i in range(9)])]
    with FakeHub("hf_test_token") as hub:
        first = hub.put("example/chats", {"data/train-0.parquet": _parquet(rows)})
        recipe = tmp_path / "spin.yaml"
        recipe.write_text(yaml.safe_dump({
            "name": "hub-spin", "model": {"model": str(tiny_chatml_path), "max_model_len": 1024, "seed": 0},
            "output": {"shard_size": 3},
            "synthesizer": {"kind": "spin", "input": {"path": "hf://example/chats"}, "sampling": {"max_tokens": 8}}}))
        env = _hub_env(tmp_path, hub)
        out = tmp_path / "out"
        done = _run(env, "build", recipe, "--out", out)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "input: hf://example/chats: 9 rows of ShareGPT" in done.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["num_shards"] == 3 and manifest["inputs"]["input"]["revision"] == first
        got = [r.path for r in hub.requests if r.route == "resolve" and r.method == "GET"]
        assert got == [f"/datasets/example/chats/resolve/{first}/data/train-0.parquet"], got  # once, for 3 shards

        (out / "data" / sorted(p.name for p in (out / "data").iterdir())[-1]).unlink()  # unfinished again
        moved = hub.put("example/chats", {"data/train-0.parquet": _parquet(rows[:6])})
        again = _run(env, "build", recipe, "--out", out)
        assert again.returncode == 2, again.stderr[-3000:]
        assert (f"was built from another version of hf://example/chats (commit {first[:12]}, now {moved[:12]}); "
                f"pin revision: {first} to resume it") in again.stderr
