"""Step-DPO: gold answers, steps and the search for the first wrong step (pure logic), and the
synthesizer end to end through the CLI on the tiny math model (real vLLM sampling: it solves
a real share of the shipped problems, so wrong solutions, recoverable prefixes and rectified
steps all happen), with TRL reading both outputs."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.reasoning.answers import grade, read_gold
from roost.reasoning.arithmetic import make_problems, solution
from roost.reasoning.locate_judge import read_decision
from roost.reasoning.steps import Estimate, Search, first_step_of, locate, split_steps

REPO = Path(__file__).resolve().parents[1]


# -- pure logic ----------------------------------------------------------------------------------


def test_gold_answers_in_each_convention():
    assert read_gold("Step 1: 2 + 2 = 4.\n#### 1,204", "gsm8k")[0].text == "1204"
    assert read_gold("so it is \\boxed{\\frac{1}{2}} and not \\boxed{2}", "math")[0].text == "2"
    assert read_gold("so it is \\boxed{\\frac{1}{2}}.", "math")[0].text == "\\frac{1}{2}"
    assert read_gold("42", "plain")[0].text == "42"
    assert read_gold("no marker here", "gsm8k") == (None, "no '#### <answer>' line")
    assert read_gold(None, "plain")[0] is None
    gold, _ = read_gold("\\boxed{\\frac{1}{2}}", "math")
    assert grade(gold, "... The answer is \\boxed{0.5}.").correct
    assert grade(gold, "The answer is 0.5").reason == "no_final_answer"
    assert grade(gold, "\\boxed{3}").reason == "wrong_answer"


def test_generated_solutions_split_and_grade():
    for problem in make_problems(50, seed=3):
        text = solution(problem)
        steps = split_steps(text)
        assert len(steps) == len(problem.steps) and "\\boxed" in steps[-1]
        gold, _ = read_gold(str(problem.answer), "plain")
        assert grade(gold, text).correct
        j = len(problem.steps)
        assert not grade(gold, solution(problem, wrong_step=j)).correct
    assert split_steps("no headers at all") == []
    assert split_steps("Step 1: a\nStep 3: b") == []  # not numbered 1..n
    assert first_step_of(" 5 + 3 = 8.\nStep 3: more") == "5 + 3 = 8."


def _scripted(p: dict[int, float]):
    """A stand-in for rollouts: p_k scripted per prefix (exact values are the point here)."""
    calls = []

    def estimate(asks):
        calls.append(len(asks))
        return [Estimate(k, p[k], 8, round(p[k] * 8)) for _, k in asks]
    return estimate, calls


@pytest.mark.parametrize("truth,n", [(1, 2), (3, 6), (7, 9), (12, 16)])
def test_binary_search_finds_the_step_of_a_monotone_p_in_log_rounds(truth, n):
    p = {k: (0.9 - 0.05 * k if k < truth else 0.0) for k in range(n)}
    for mode in ("binary", "linear"):
        estimate, calls = _scripted(p)
        searches = [Search(n, 0.9, 0.0, mode)]
        rounds = locate(searches, estimate)
        assert searches[0].first_wrong == truth
        if mode == "binary":
            assert rounds <= max(1, (n - 1).bit_length()) and sum(calls) == rounds
        else:
            assert rounds == 1 and sum(calls) == n - 1


def test_non_monotone_p_binary_finds_a_boundary_linear_the_first():
    p = {0: 0.9, 1: 0.0, 2: 0.5, 3: 0.6, 4: 0.0, 5: 0.0}  # step 1 looks wrong, then recovers
    estimate, _ = _scripted(p)
    linear, binary = [Search(6, 0.9, 0.0, "linear")], [Search(6, 0.9, 0.0, "binary")]
    locate(linear, estimate)
    locate(binary, estimate)
    assert linear[0].first_wrong == 1
    k = binary[0].first_wrong
    assert p[k] <= 0.0 < p[k - 1]  # a boundary, though not the first one


def test_unsolved_problem_is_not_searched_and_rounds_are_shared():
    estimate, calls = _scripted({k: 0.5 if k < 2 else 0.0 for k in range(8)})
    searches = [Search(8, 0.0, 0.0), Search(8, 0.5, 0.0), Search(4, 0.5, 0.0)]
    rounds = locate(searches, estimate)
    assert searches[0].first_wrong is None and searches[1].first_wrong == 2 and searches[2].first_wrong == 2
    assert rounds == 3 and calls[0] == 2  # one request per round, for every live search


def test_judge_decisions_are_read_or_refused_with_a_reason():
    assert read_decision("analysis...\nFinal Decision:\nStep 1: correct; Step 2: neutral; Step 3: incorrect", 3) == (2, None)
    assert read_decision("Step 2: incorrect, I think", 3)[0] is None
    assert read_decision("Final Decision: all good", 3)[0] is None
    assert read_decision("Final Decision: Step 9: incorrect", 3)[0] is None


# -- end to end on the tiny math model ---------------------------------------------------------


def step_dpo_recipe(model: Path, data: Path, **synth) -> dict:
    return {
        "name": "step-dpo-test",
        "model": {"model": str(model), "max_model_len": 1024, "seed": 0},
        "output": {"shard_size": 12},
        "synthesizer": {"kind": "step_dpo", "problems": {"path": str(data), "dataset": "arith"},
                        "samples": 4, "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 192},
                        "locate": {"rollouts": 6}, "rectify": {"samples": 6}, **synth},
    }


def test_step_dpo_end_to_end(tmp_path, tiny_math_path):
    lines = (REPO / "data" / "arithmetic_problems.jsonl").read_text().splitlines()[:36]
    rows = [json.loads(line) for line in lines]
    rows[5]["answer"] = "I don't know"  # no '#### N': a reject, not a crash
    rows[9]["answer"] = "#### \\frac{"  # unparsable gold
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(step_dpo_recipe(tiny_math_path, problems)))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    read = lambda sub: [r for f in sorted((out / sub).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]  # noqa: E731
    data, rejects, prm, sd = read("data"), read("rejects"), read("prm"), read("step_dpo")
    reasons = Counter(r["reason"] for r in rejects)
    assert reasons["no_gold_answer"] + reasons["unparsable_gold_answer"] == 2, reasons
    stats = list(manifest["shards"].values())
    assert sum(s["correct"] for s in stats) > 0 and sum(s["solutions"] for s in stats) > sum(s["correct"] for s in stats)
    assert sum(s.get("located", 0) for s in stats) > 0, stats
    # the real path happened: wrong solutions were located and rectified into pairs
    assert data, (reasons, stats)
    for row in data:
        assert row["method"] == "step_dpo" and row["dataset"] == "arith"
        k = row["first_wrong_step"]
        assert 1 <= k <= row["num_steps"]
        assert row["prompt"].endswith(row["initial_reason_steps"]) and row["initial_reason_steps"].endswith(f"Step {k}:")
        assert row["initial_reason_steps"].startswith("Let's think step by step.\n")
        assert row["chosen_step"].strip() != row["rejected_step"].strip() and "Step " not in row["chosen_step"]
        # TRL's columns run to the end of the answer (the trainer ends them with EOS); the steps alone beside them
        assert row["chosen"] == row["full_chosen"] and row["rejected"] == row["full_rejected"]
        assert row["chosen"].startswith(row["chosen_step"]) and row["rejected"].startswith(row["rejected_step"])
        assert "\\boxed" in row["chosen"]
        assert "\\boxed" in row["full_chosen"] and row["chosen_answer"] is not None
        gold = read_gold(row["answer"], "plain")[0]
        assert grade(gold, row["full_chosen"]).correct and not grade(gold, row["solution"]).correct
        # the evidence: p before k above the threshold (0), p at k at or below it
        p = {e["k"]: e["p"] for e in row["estimates"]}
        assert all(e["rollouts"] == 6 for e in row["estimates"])
        assert row["solve_rate"] > 0 and all(v > 0 for kk, v in p.items() if kk < k)
        assert all(v == 0 for kk, v in p.items() if kk >= k)
    # step_dpo/: exactly Step-DPO's columns, its prompt the bare problem
    assert pq.read_schema(sorted((out / "step_dpo").glob("*.parquet"))[0]).names == [
        "dataset", "prompt", "initial_reason_steps", "chosen", "rejected", "full_chosen", "full_rejected", "answer"]
    assert [r["prompt"] for r in sd] == [r["problem"] for r in data]
    assert [(r["chosen"], r["rejected"]) for r in sd] == [(r["chosen_step"], r["rejected_step"]) for r in data]
    # prm/: TRL's step-wise supervision format; labels true before the first wrong step
    assert prm and all(len(r["completions"]) == len(r["labels"]) for r in prm)
    assert any(all(r["labels"]) for r in prm) and any(not all(r["labels"]) for r in prm)
    for r in prm:
        assert r["completions"][0].startswith("Step 1:") and r["labels"] == sorted(r["labels"], reverse=True)

    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    steps = datasets.load_dataset("parquet", data_dir=str(out / "prm"), split="train")
    assert steps.column_names == ["prompt", "completions", "labels"] and len(steps) == len(prm)
    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", use_cpu=True, max_length=512)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_math_path), args=args, train_dataset=ds,
                         processing_class=AutoTokenizer.from_pretrained(tiny_math_path))
    assert trainer.train().training_loss > 0


def test_step_dpo_bad_input_is_one_line_exit_2(tmp_path, tiny_math_path):
    def run(data, **synth):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(step_dpo_recipe(tiny_math_path, data, **synth)))
        result = CliRunner().invoke(app, ["build", str(path), "--out", str(tmp_path / "o")])
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        return result.exit_code, " ".join(lines), len(lines)

    no_answer = tmp_path / "q.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "What is 2 + 2?"}]), no_answer)
    code, text, n = run(no_answer)
    assert code == 2 and n == 1 and "no 'answer' column" in text, text
    good = REPO / "data" / "arithmetic_problems.jsonl"
    for synth, needle in [({"locate": {"rollouts": 0}}, "synthesizer.locate.rollouts"),
                          ({"format": {"header": "Step:"}}, "synthesizer.format.header"),
                          ({"locate": {"method": "judge"}}, "locate.judge"),
                          ({"problems": {"path": str(good), "convention": "latex"}}, "synthesizer.problems.convention")]:
        code, text, n = run(good, **synth)
        assert code == 2 and n == 1 and needle in text, (needle, text)


def test_unreadable_judge_locates_nothing(tmp_path, tiny_math_path):
    # the tiny math model as the judge: it never writes a "Final Decision", so every searched
    # solution is a judge_unreadable reject, and nothing is rectified from a guessed step
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(line + "\n" for line in (REPO / "data" / "arithmetic_problems.jsonl").read_text()
                                .splitlines()[:12]))
    judge = {"model": str(tiny_math_path), "max_model_len": 1024, "seed": 0}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(step_dpo_recipe(tiny_math_path, problems,
                                                   locate={"method": "judge", "judge": judge, "judge_max_tokens": 32})))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"] == 0 and manifest["rejects_by_reason"].get("judge_unreadable", 0) > 0, manifest
    assert not any(r in manifest["rejects_by_reason"] for r in ("not_rectified", "no_new_step"))


def test_malformed_jsonl_is_one_line_exit_2(tmp_path, tiny_math_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "What is 2 + 2?", "answer": "#### 4"}\n{"question": oops}\n')
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(step_dpo_recipe(tiny_math_path, bad)))
    result = CliRunner().invoke(app, ["build", str(path), "--out", str(tmp_path / "o")])
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "not valid JSON Lines" in lines[0], lines
