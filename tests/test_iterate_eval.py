"""`roost iterate` with `loop.eval`: every trained model measured on held-out problems, the loop
stopping when it gains nothing, and the inputs it must refuse. Real processes: the CLI in its
own process (the loop frees its engines before training), real vLLM on the tiny math model,
outcome pairs graded by math-verify. The "training" commands here are stand-ins on purpose: a
copy of the model (it cannot gain: the same weights and seeds score the same) and one that
zeroes the output layer (a model that scores 0); what is tested is the loop, not TRL."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from test_iterate import roost

REPO = Path(__file__).resolve().parents[1]
PROBLEMS = REPO / "data" / "arithmetic_problems.jsonl"

ZERO = """
import shutil, sys
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst)
weights = load_file(f"{dst}/model.safetensors")
weights["lm_head.weight"].zero_()
save_file(weights, f"{dst}/model.safetensors", metadata={"format": "pt"})
"""


def loop_recipe(model: Path, tmp_path: Path, train: str, **eval_block) -> Path:
    raw = yaml.safe_load((REPO / "recipes" / "reward-pairs-verifier.yaml").read_text())
    raw["model"]["model"] = str(model)
    raw["output"] = {"num_rows": 12, "shard_size": 12}
    raw["synthesizer"]["prompts"]["path"] = str(PROBLEMS)
    raw["synthesizer"]["sampling"]["max_tokens"] = 160
    raw["loop"] = {"iterations": 3, "train": train, "eval": {
        "problems": {"path": str(PROBLEMS), "start": 2000, "stop": 2040}, "samples": 2,
        "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 160}, "metric": "sampled_accuracy",
        "min_gain": 0.01, **eval_block}}
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_loop_measures_each_model_and_stops_on_no_gain(tmp_path, tiny_math_path):
    path = loop_recipe(tiny_math_path, tmp_path, "true {data} && cp -r {model} {output}")
    out = tmp_path / "loop"
    result = roost("iterate", str(path), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = json.loads((out / "iterations.json").read_text())
    base = manifest["baseline"]
    assert base["model"] == str(tiny_math_path) and base["metric"] == "sampled_accuracy" and 0 < base["value"] <= 1
    assert json.loads((out / "eval-base" / "summary.json").read_text())["metrics"]["problems"] == 40
    # the copied model scores exactly what the base scored (same weights, same seeds): gain 0 < 0.01
    (step,) = manifest["iterations"]
    assert step["eval"]["value"] == base["value"] and step["eval"]["gain"] == 0
    assert manifest["stopped"]["iteration"] == 0 and "min_gain 0.01" in manifest["stopped"]["reason"]
    assert manifest["best_model"] == str(tiny_math_path) and manifest["best"]["iteration"] is None
    assert not (out / "iter-1").exists()
    assert "stopped after iteration 0" in result.stdout and "best model" in result.stdout

    # a re-run finds the iteration done and its evaluation too, and stops at the same place
    again = roost("iterate", str(path), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads((out / "iterations.json").read_text())["stopped"] == manifest["stopped"]
    assert "done before" in again.stderr

    # the report (and so the dataset card) shows the held-out metric of the base and of iteration 0's model
    report = roost("report", str(out), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    page = (out / "report" / "report.html").read_text()
    assert "held-out sampled_accuracy" in page and (out / "report" / "figures" / "iterations.png").is_file()


def test_a_model_that_scores_zero_fails_the_loop_in_one_line(tmp_path, tiny_math_path):
    script = tmp_path / "zero.py"
    script.write_text(ZERO)
    path = loop_recipe(tiny_math_path, tmp_path, f"{sys.executable} {script} {{model}} {{output}} {{data}}")
    result = roost("iterate", str(path), "--out", str(tmp_path / "loop"), cwd=tmp_path)
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(lines) == 1 and "scores 0 sampled_accuracy" in lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    manifest = json.loads((tmp_path / "loop" / "iterations.json").read_text())
    assert manifest["status"] == "failed" and manifest["iterations"][0]["status"] == "failed"


def test_overlapping_held_out_set_and_unknown_metric_are_refused(tmp_path, tiny_math_path):
    for block, needle in [({"problems": {"path": str(PROBLEMS), "start": 5, "stop": 40}}, "loop.eval.problems"),
                          ({"metric": "accuracy"}, "unknown metric 'accuracy'"),
                          ({"metric": "pass@8"}, "unknown metric 'pass@8'")]:
        path = loop_recipe(tiny_math_path, tmp_path, "true {data} && cp -r {model} {output}", **block)
        result = roost("iterate", str(path), "--out", str(tmp_path / "o"), cwd=tmp_path)
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], (needle, result.stderr[-2000:])
