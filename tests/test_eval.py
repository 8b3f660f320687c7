"""`roost eval`: the metrics (pure logic, exact values), and the command end to end on the tiny
math model through the CLI and its Prefect flow (real vLLM sampling, real math-verify), with
resume, and the bad inputs that must be one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from roost.cli import app
from roost.evaluation.verifiable import majority, pass_at_k, summarize

REPO = Path(__file__).resolve().parents[1]
PROBLEMS = REPO / "data" / "arithmetic_problems.jsonl"


# -- pure logic ----------------------------------------------------------------------------------


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 4) == 1.0  # n - c < k: any 4 of 5 hold a right one
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_majority_vote_ties_go_to_the_first_answer_and_none_is_no_vote():
    assert majority(["3", "4", "4", None], [False, True, True, False]) == ("4", True)
    assert majority(["3", "4", None, None], [True, False, False, False]) == ("3", True)
    assert majority([None, None], [False, False]) == (None, False)


def _row(steps, greedy, samples):
    return {"steps": steps, "greedy_correct": greedy, "greedy_tokens": 10, "greedy_truncated": False,
            "sample_correct": samples, "sample_tokens": [20] * len(samples), "sample_truncated": [False] * len(samples),
            "majority_correct": sum(samples) * 2 > len(samples)}


def test_summary_metrics_and_by_steps():
    rows = [_row(2, True, [True, True, False, False]), _row(2, False, [False, False, False, True]),
            _row(3, True, [True, True, True, True])]
    s = summarize(rows, samples=4, ks=[1, 4])
    m = s["metrics"]
    assert m["problems"] == 3 and m["greedy_accuracy"] == pytest.approx(2 / 3)
    assert m["sampled_accuracy"] == pytest.approx((0.5 + 0.25 + 1) / 3)
    assert m["pass@1"] == pytest.approx(m["sampled_accuracy"]) and m["pass@4"] == 1.0
    assert m["maj@4"] == pytest.approx(1 / 3)  # a 2-2 split is no majority here
    assert s["by_steps"]["2"]["problems"] == 2 and s["by_steps"]["3"]["greedy_accuracy"] == 1.0
    assert s["stderr"]["greedy_accuracy"] == pytest.approx(((2 / 3) * (1 / 3) / 3) ** 0.5, rel=1e-4)


# -- end to end ----------------------------------------------------------------------------------


def _eval(*args):
    result = CliRunner().invoke(app, ["eval", *map(str, args)])
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    return result, lines


def _outcomes(out: Path) -> list[dict]:
    return [r for p in sorted((out / "outcomes").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_eval_end_to_end_resumes_to_the_same_outcomes(tmp_path, tiny_math_path):
    from roost.reasoning.answers import last_boxed

    out = tmp_path / "eval"
    args = ["--model", tiny_math_path, "--problems", PROBLEMS, "--rows", "2000:2060", "--samples", "3",
            "--set", "chunk_size=20", "--set", "sampling.max_tokens=200", "--set", "model.max_model_len=1024",
            "--out", out]
    result, _ = _eval(*args)
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = _outcomes(out)
    m = summary["metrics"]
    assert len(rows) == m["problems"] == 60 and summary["set"]["rows"] == [2000, 2060]
    assert summary["engine"]["model"] == str(tiny_math_path)
    # the tiny model really solves most of these, and sampling loses some of it
    assert 0.6 <= m["greedy_accuracy"] <= 1.0 and 0.4 <= m["sampled_accuracy"] <= m["pass@3"]
    assert m["greedy_tokens"] > 20 and m["greedy_truncated"] == 0
    gold = {json.loads(line)["question"]: json.loads(line)["answer"].split("####")[1].strip()
            for line in PROBLEMS.read_text().splitlines()[2000:2060]}
    for r in rows:  # every grade checked again here: the last \boxed{} against the #### gold
        assert r["gold"] == gold[r["question"]]
        assert r["greedy_correct"] == (last_boxed(r["greedy_text"]) == r["gold"])
        assert r["sample_correct"] == [last_boxed(t) == r["gold"] for t in r["sample_texts"]]
        assert len(r["sample_texts"]) == 3 and r["correct_samples"] == sum(r["sample_correct"])
    assert m["greedy_accuracy"] == pytest.approx(sum(r["greedy_correct"] for r in rows) / 60)
    assert set(summary["by_steps"]) == {"2", "3"} and "greedy_accuracy" in result.output

    # killed after its first part: the summary and the later parts are gone; a re-run evaluates
    # only what is missing and gives the same outcomes (a part's seeds are its own)
    parts = sorted((out / "outcomes").glob("*.parquet"))
    assert len(parts) == 3
    first = parts[0].stat().st_mtime_ns
    (out / "summary.json").unlink()
    for p in parts[1:]:
        p.unlink()
    result, _ = _eval(*args)
    assert result.exit_code == 0, result.output[-3000:]
    assert parts[0].stat().st_mtime_ns == first and _outcomes(out) == rows
    assert json.loads((out / "summary.json").read_text())["metrics"] == m

    # other settings into the same --out: refused, one line
    result, lines = _eval(*args[:-2], "--set", "samples=2", "--out", out)
    assert result.exit_code == 2 and len(lines) == 1 and "other settings" in lines[0], result.output


def test_unparsable_gold_answers_are_counted_and_listed(tmp_path, tiny_math_path):
    rows = [json.loads(line) for line in PROBLEMS.read_text().splitlines()[2000:2006]]
    rows[1]["answer"] = "no marker"
    rows[4]["answer"] = "Step 1: ...\n#### \\frac{"
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({**r, "id": f"p{i}"}) + "\n" for i, r in enumerate(rows)))
    out = tmp_path / "eval"
    result, _ = _eval("--model", tiny_math_path, "--problems", data, "--samples", "0",
                      "--set", "model.max_model_len=1024", "--out", out)
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["problems"] == 4 and "sampled_accuracy" not in summary["metrics"]
    assert summary["unusable"] == {"count": 2, "by_reason": {"no_gold_answer": 1, "unparsable_gold_answer": 1},
                                   "ids": ["p1", "p4"]} or summary["unusable"]["ids"] == ["p1", "p4"]
    assert sorted(pq.read_table(out / "unusable.parquet").column("id").to_pylist()) == ["p1", "p4"]
    assert "unusable rows: 2" in result.output


def test_eval_bad_input_is_one_line_exit_2(tmp_path, tiny_math_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    shutil.copy(tiny_math_path / "config.json", broken / "config.json")  # no weights, no tokenizer
    no_gold = tmp_path / "q.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "What is 2 + 2?"}]), no_gold)
    no_usable = tmp_path / "no-usable.jsonl"  # every row without a gold answer: nothing kept, not a success
    no_usable.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": "no marker"}) + "\n"
                                 for i in range(3)))
    cases = [
        (["--model", broken, "--problems", PROBLEMS], "no weights"),
        (["--model", tmp_path / "nowhere", "--problems", PROBLEMS], "no such directory"),
        (["--model", tiny_math_path, "--problems", no_gold], "no 'answer' column"),
        (["--model", tiny_math_path, "--problems", PROBLEMS, "--rows", "5000:5100"], "past its last row"),
        (["--model", tiny_math_path, "--problems", PROBLEMS, "--rows", "20:10"], "must be greater than start"),
        (["--model", tiny_math_path, "--problems", PROBLEMS, "--rows", "a:b"], "--rows"),
        (["--model", tiny_math_path, "--problems", PROBLEMS, "--samples", "0", "--set", "greedy=false"], "nothing to evaluate"),
        (["--model", tiny_math_path, "--problems", PROBLEMS, "--set", "pass_k=[8]"], "pass_k"),
        (["--model", tiny_math_path], "field 'problems'"),
        (["--model", tiny_math_path, "--problems", no_usable], "none of rows [0, 3) is a usable problem"),
        (["--model", tiny_math_path, "--harness", "no_such_task"], "unknown lm-eval task 'no_such_task'"),
        (["--harness", "roost_arithmetic"], "--harness: needs --model"),
    ]
    for args, needle in cases:
        result, lines = _eval(*args, "--out", tmp_path / "o")
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], (needle, result.output)
    assert not (tmp_path / "o" / "summary.json").exists()
