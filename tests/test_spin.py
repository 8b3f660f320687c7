"""SPIN: which turn is paired (pure logic), the synthesizer end to end on the tiny policy (real
vLLM) through the CLI, and its bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.schemas import MESSAGES
from roost.synthesizers.spin import SPIN_ROWS, Spin

REPO = Path(__file__).resolve().parents[1]


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def seed_rows(n: int) -> list[dict]:
    lines = (REPO / "data" / "seed_conversations.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:n]]


def write_sft(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([pa.field("messages", MESSAGES)])), path)
    return path


def spin_recipe(model: Path, data: Path, **synth) -> dict:
    return {
        "name": "spin-test",
        "model": {"model": str(model), "max_model_len": 1024, "seed": 0},  # the session engine's identity
        "output": {"shard_size": 8},
        "synthesizer": {"kind": "spin", "input": {"path": str(data)},
                        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": 64}, **synth},
    }


def test_split_turn_last_and_first():
    conv = _msgs(("system", "be brief"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"))
    prompt, gold = Spin.split_turn(conv, "last")
    assert prompt == conv[:4] and gold == conv[4]
    prompt, gold = Spin.split_turn(conv, "first")
    assert prompt == conv[:2] and gold == conv[2]
    assert Spin.split_turn(_msgs(("user", "only a question")), "last") is None


def _build(tmp_path, recipe: dict, name: str = "o") -> tuple[object, Path]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / name
    return CliRunner().invoke(app, ["build", str(path), "--out", str(out)]), out


def test_spin_build_end_to_end(tmp_path, chatml_engine, tiny_chatml_path):
    multi = _msgs(("system", "You answer questions about Python."), ("user", "What does `len` return?"),
                  ("assistant", "The number of items in a container."), ("user", "And for a string?"),
                  ("assistant", "The number of characters in it."))
    rows = seed_rows(10) + [{"messages": multi}, {"messages": None}, {"messages": _msgs(("user", "no answer here"))}]
    data = write_sft(tmp_path / "sft.parquet", rows)
    result, out = _build(tmp_path, {**spin_recipe(tiny_chatml_path, data), "iteration": 3})
    assert result.exit_code == 0, result.output
    table = pq.read_table(sorted((out / "data").glob("*.parquet"))[0]).cast(SPIN_ROWS.arrow)
    written = [r for p in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    rejects = [r for p in sorted((out / "rejects").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert table.schema.names == SPIN_ROWS.arrow.names
    # nothing lost: every input row is a pair or a reject with its reason
    assert len(written) + len(rejects) == len(rows)
    reasons = {r["reason"] for r in rejects}
    assert {"bad_input", "no_gold_answer"} <= reasons, reasons
    assert len(written) >= 5, rejects
    assert reasons <= {"bad_input", "no_gold_answer", "truncated", "empty", "broken_text", "same_as_gold"}
    gold_by_prompt = {json.dumps(Spin.split_turn(r["messages"], "last")[0]): Spin.split_turn(r["messages"], "last")[1]
                      for r in rows if r["messages"] and Spin.split_turn(r["messages"], "last")}
    for row in written:
        assert SPIN_ROWS.problem(row) is None
        assert row["method"] == "spin" and row["iteration"] == 3 and row["model"] == str(tiny_chatml_path)
        gold = gold_by_prompt[json.dumps(row["prompt"])]
        assert row["chosen"] == [gold] and row["rejected"][0]["content"] != gold["content"]
        # SPIN's own columns: the conversation (no system message) ending in the gold / generated answer
        body = [m for m in row["prompt"] if m["role"] != "system"]
        assert row["real"] == body + row["chosen"] and row["generated"] == body + row["rejected"]
        assert row["real"][0]["role"] == "user"
        assert row["sampling"]["max_tokens"] == 64 and row["turn"] == "last"
    # the multi-turn row is paired on its last turn, the earlier turns kept in the prompt
    multi_rows = [r for r in written if r["prompt"][0]["role"] == "system"]
    if multi_rows:  # (unless the tiny model's answer was unusable: then it is a reject, counted above)
        assert multi_rows[0]["prompt"] == multi[:4] and multi_rows[0]["chosen"] == [multi[4]]
    else:
        assert any(r["reason"] in ("truncated", "empty", "broken_text", "same_as_gold") for r in rejects)

    # turn: first keeps only the first exchange (SPIN's reformat.py)
    result, out = _build(tmp_path, spin_recipe(tiny_chatml_path, write_sft(tmp_path / "m.parquet", [{"messages": multi}] * 1),
                                               turn="first", keep_truncated=True), "first")
    assert result.exit_code == 0, result.output
    (row,) = pq.read_table(out / "data").to_pylist() or [None]
    if row is not None:
        assert row["prompt"] == multi[:2] and row["chosen"] == [multi[2]] and row["turn"] == "first"


def test_spin_bad_input_is_one_line_exit_2(tmp_path, tiny_chatml_path):
    def run(data: Path, **synth):
        result, _ = _build(tmp_path, spin_recipe(tiny_chatml_path, data, **synth))
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        return result.exit_code, lines

    prompts_only = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "What is a list?"}]), prompts_only)
    code, lines = run(prompts_only)
    assert code == 2 and len(lines) == 1 and "no gold answers" in lines[0], lines
    no_gold = write_sft(tmp_path / "nogold.parquet", [{"messages": _msgs(("user", "a question"))}] * 3)
    code, lines = run(no_gold)
    assert code == 2 and len(lines) == 1 and "no gold answers" in lines[0], lines
    code, lines = run(no_gold, turn="middle")
    assert code == 2 and len(lines) == 1 and "synthesizer" in lines[0] and "turn" in lines[0], lines
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "chosen": "a", "rejected": "b"}]), pairs)
    code, lines = run(pairs)
    assert code == 2 and len(lines) == 1 and "preference rows" in lines[0], lines


@pytest.mark.parametrize("template,message", [
    ("python train.py {data} {model}", "needs {output}"),
    ("python train.py {data} {model} {output} {epochs}", "unknown placeholder {epochs}"),
])
def test_loop_template_errors_are_one_line(tmp_path, tiny_chatml_path, template, message):
    data = write_sft(tmp_path / "sft.parquet", seed_rows(2))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(spin_recipe(tiny_chatml_path, data)))
    result = CliRunner().invoke(app, ["iterate", str(path), "--train", template, "--out", str(tmp_path / "it")])
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "loop.train" in lines[0] and message in lines[0], lines
    result = CliRunner().invoke(app, ["iterate", str(path), "--out", str(tmp_path / "it")])
    assert result.exit_code == 2 and "loop.train" in result.output
