"""`roost eval`'s open-ended half: the win rate against a reference and AlpacaEval 2's
length-controlled win rate (pure logic on scripted preferences), then end to end on the tiny
chat model (real vLLM) with the tiny reward model and the pairwise judge, through the API and
the CLI, and the bad inputs that must be one line."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.evaluation.winrate import fit_logistic, length_controlled, summarize

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "data" / "seed_conversations.jsonl"
RECIPE = REPO / "recipes" / "eval-open-ended.yaml"


# -- pure logic ------------------------------------------------------------------------------------


def _lengths(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng, rng.integers(60, 400, n), rng.integers(20, 200, n)  # the model mostly answers longer


def test_length_explains_the_preference_lc_is_50_raw_is_not():
    _, mt, rt = _lengths()
    d = mt - rt
    prefs = 1 / (1 + np.exp(-3 * np.tanh(d / d.std(ddof=1))))  # a judge that only likes length
    lc = length_controlled(prefs, mt, rt)
    assert prefs.mean() > 0.7  # raw: far from a coin toss
    assert lc.share == pytest.approx(0.5, abs=1e-6) and lc.length_coefficient == pytest.approx(3.0, abs=1e-5)
    assert lc.length_scale == pytest.approx(d.std(ddof=1))


def test_preference_length_does_not_explain_lc_agrees_with_raw():
    rng, mt, rt = _lengths(seed=1)
    prefs = np.clip(0.75 + rng.normal(0, 0.1, len(mt)), 0, 1)  # independent of length
    lc = length_controlled(prefs, mt, rt)
    assert abs(lc.share - prefs.mean()) < 0.01 and abs(lc.length_coefficient) < 0.2
    # a length-driven part on top of a real edge: LC keeps the edge, drops the length part
    d = mt - rt
    prefs = 1 / (1 + np.exp(-(1.0 + 2 * np.tanh(d / d.std(ddof=1)))))
    lc = length_controlled(prefs, mt, rt)
    assert lc.share == pytest.approx(1 / (1 + math.exp(-1.0)), abs=1e-6) and prefs.mean() > lc.share + 0.05


def test_logistic_fit_is_the_soft_label_optimum_and_degenerate_cases_hold():
    rng = np.random.default_rng(2)
    x = np.column_stack([np.ones(50), rng.normal(size=50)])
    y = rng.uniform(size=50)
    w = fit_logistic(x, y)
    s = 1 / (1 + np.exp(-x @ w))
    assert np.abs(x.T @ (y - s)).max() < 1e-6  # the score equations hold
    # equal lengths: the length column is 0 and LC is the raw mean exactly; a single prompt too
    assert length_controlled([0.2, 0.9, 0.7], [5, 5, 5], [3, 3, 3]).share == pytest.approx(0.6, abs=1e-6)
    assert length_controlled([0.5] * 4, [7] * 4, [7] * 4).share == 0.5
    assert length_controlled([0.8], [3], [9]).stderr is None
    assert length_controlled([1.0] * 5, [3, 4, 5, 6, 7], [3] * 5).share > 0.999  # separable: no blow-up


def _row(i, p, mt=10, rt=10, reason=None):
    return {"id": f"p{i}", "p_win": p, "model_tokens": mt, "reference_tokens": rt, "model_truncated": mt > 50,
            "reference_truncated": None, "reason": reason}


def test_summary_counts_wins_ties_and_unjudged():
    rows = [_row(0, 0.9, 20), _row(1, 0.5), _row(2, 0.2, 60), _row(3, None, reason="no_gold_answer"),
            _row(4, 0.7), _row(5, None, reason="reward_null")]
    s = summarize(rows)
    m, se = s["metrics"], s["stderr"]
    p = [0.9, 0.5, 0.2, 0.7]
    assert m["prompts"] == 6 and m["judged"] == 4 and m["unjudged"] == 2 and m["unjudged_share"] == pytest.approx(1 / 3)
    assert m["win_share"] == pytest.approx(np.mean(p)) and m["win_rate"] == pytest.approx(100 * np.mean(p))
    assert se["win_rate"] == pytest.approx(100 * np.std(p, ddof=1) / 2, abs=1e-4)
    assert (m["wins"], m["losses"], m["ties"], m["tie_share"]) == (2, 1, 1, 0.25)
    assert m["mean_answer_tokens_model"] == 25 and m["mean_answer_tokens_reference"] == 10
    assert m["model_truncated"] == 0.25 and "reference_truncated" not in m  # gold answers are never cut
    assert s["unjudged"] == {"count": 2, "by_reason": {"no_gold_answer": 1, "reward_null": 1}, "ids": ["p3", "p5"]}
    assert summarize([_row(0, None, reason="no_gold_answer")])["metrics"] == {
        "prompts": 1, "judged": 0, "unjudged": 1, "unjudged_share": 1.0}


def test_recipe_validates_and_needs_one_half():
    from roost.errors import ConfigError
    from roost.evaluation.config import EvalRecipe
    from roost.recipe import read_yaml, validate

    rec = validate(EvalRecipe, read_yaml(RECIPE), str(RECIPE))
    assert rec.problems is None and rec.open_ended.gold and rec.open_ended.judge.kind == "reward_model"
    with pytest.raises(ConfigError, match="field 'problems': required: give problems"):
        validate(EvalRecipe, {"model": {"model": "m"}}, "options")
    oe = {"prompts": {"path": str(SEED)}, "judge": {"kind": "pairwise"}, "reference": {"model": {"model": "base"}}}
    rec = validate(EvalRecipe, {"model": {"model": "m"}, "open_ended": oe}, "options")
    assert rec.open_ended.reference.model.model == "base" and rec.open_ended.judge.model is None
    # a verifiable-only recipe keeps its fingerprint (open_ended unset is left out of it)
    plain = {"model": {"model": "m"}, "problems": {"path": "p.jsonl"}}
    assert validate(EvalRecipe, plain, "o").fingerprint() == validate(EvalRecipe, {**plain, "open_ended": None},
                                                                      "o").fingerprint()


# -- end to end ------------------------------------------------------------------------------------


def _model(path) -> dict:
    return {"model": str(path), "max_model_len": 1024, "seed": 0}  # chatml_engine's identity: one engine


def _rm(path) -> dict:
    return {"kind": "reward_model", "reward_model": {"model": str(path), "max_model_len": 1024}}


def _recipe(model_path, **open_ended) -> dict:
    oe = {"prompts": {"path": str(SEED)}, "sampling": {"temperature": 0.0, "max_tokens": 48}, "max_prompts": 16,
          **open_ended}
    return {"model": _model(model_path), "open_ended": oe}


def _run(tmp_path, raw, name):
    from roost.evaluation.config import EvalRecipe
    from roost.evaluation.run import preflight, run_eval

    recipe = EvalRecipe.model_validate(raw)
    out = tmp_path / name
    preflight(recipe, out)
    summary = run_eval(recipe, out)
    rows = [r for p in sorted((out / "open_ended" / "outcomes").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return out, summary, rows


def _eval(*args):
    result = CliRunner().invoke(app, ["eval", *map(str, args)])
    return result, [line for line in result.output.strip().splitlines() if line.strip()]


def test_model_against_itself_is_exactly_50(tmp_path, chatml_engine, tiny_chatml_path, tiny_rm_chatml_path):
    raw = _recipe(tiny_chatml_path, reference={"model": _model(tiny_chatml_path)}, judge=_rm(tiny_rm_chatml_path))
    out, summary, rows = _run(tmp_path, raw, "self")
    m = summary["open_ended"]["metrics"]
    assert len(rows) == m["prompts"] == m["judged"] == 16 and summary["open_ended"]["reference"]["kind"] == "model"
    assert all(r["model_tokens"] > 0 for r in rows)
    if all(r["identical"] for r in rows):  # same model, greedy, same seeds: the same answers
        assert m["win_rate"] == 50.0 and m["length_controlled_win_rate"] == 50.0 and m["ties"] == 16
        assert all(r["model_reward"] == r["reference_reward"] and r["p_win"] == 0.5 for r in rows)
        assert m["mean_answer_tokens_model"] == m["mean_answer_tokens_reference"]
    else:
        assert 30 <= m["win_rate"] <= 70
    assert json.loads((out / "summary.json").read_text())["open_ended"] == summary["open_ended"]
    assert json.loads((out / "open_ended" / "summary.json").read_text()) == summary["open_ended"]


def test_model_against_gold_with_the_reward_model_through_the_cli(tmp_path, chatml_engine, tiny_chatml_path,
                                                                 tiny_rm_chatml_path):
    out = tmp_path / "gold"
    args = [RECIPE, "--set", f"model.model={tiny_chatml_path}", "--set", f"open_ended.judge.reward_model.model="
            f"{tiny_rm_chatml_path}", "--set", "open_ended.max_prompts=24", "--set", "chunk_size=10", "--out", out]
    result, _ = _eval(*args)
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert "metrics" not in summary and summary["recipe"]["problems"] is None
    oe = summary["open_ended"]
    m = oe["metrics"]
    parts = sorted((out / "open_ended" / "outcomes").glob("*.parquet"))
    rows = [r for p in parts for r in pq.read_table(p).to_pylist()]
    assert len(parts) == 3 and len(rows) == m["prompts"] == m["judged"] == 24 and m["unjudged"] == 0
    gold = [json.loads(line)["messages"] for line in SEED.read_text().splitlines()[:24]]
    for r, conv in zip(rows, gold):
        assert r["prompt"] == conv[:1] and r["reference_answer"] == conv[1]["content"].strip()
        assert r["p_win"] == pytest.approx(1 / (1 + math.exp(-(r["model_reward"] - r["reference_reward"]))))
        assert r["reference_truncated"] is None and r["model_answer"] is not None
    p = [r["p_win"] for r in rows]
    assert m["win_share"] == pytest.approx(np.mean(p), abs=1e-6) and m["win_rate"] == pytest.approx(100 * np.mean(p), abs=1e-4)
    lc = length_controlled(p, [r["model_tokens"] for r in rows], [r["reference_tokens"] for r in rows])
    assert m["length_controlled_win_rate"] == pytest.approx(100 * lc.share, abs=1e-4)
    assert 0 < m["win_rate"] < 100 and 0 < m["length_controlled_win_rate"] < 100
    assert oe["judge"]["kind"] == "reward_model" and oe["judge"]["reward_model"]["revision"].startswith("local-sha256:")
    assert oe["reference"] == {"kind": "gold", "path": "data/seed_conversations.jsonl"}  # as the recipe says
    assert "length_controlled_win_rate" in result.output and "win_rate" in result.output

    # killed after its first part: a re-run keeps it and evaluates the rest, to the same outcomes
    first = parts[0].stat().st_mtime_ns
    (out / "summary.json").unlink()
    parts[2].unlink()
    result, _ = _eval(*args)
    assert result.exit_code == 0, result.output[-3000:]
    assert parts[0].stat().st_mtime_ns == first
    assert [r for p in parts for r in pq.read_table(p).to_pylist()] == rows
    assert json.loads((out / "summary.json").read_text())["open_ended"]["metrics"] == m
    result, lines = _eval(*args[:-2], "--set", "open_ended.judge.temperature=2.0", "--out", out)
    assert result.exit_code == 2 and len(lines) == 1 and "other settings" in lines[0], result.output


def test_pairwise_judge_on_8_prompts(tmp_path, chatml_engine, tiny_chatml_path):
    raw = _recipe(tiny_chatml_path, judge={"kind": "pairwise"}, max_prompts=8)  # the evaluated model judges
    _, summary, rows = _run(tmp_path, raw, "pairwise")
    oe = summary["open_ended"]
    m = oe["metrics"]
    assert len(rows) == m["prompts"] == 8 and m["judged"] + m["unjudged"] == 8 and m["judged"] >= 6
    for r in rows:
        if r["p_win"] is None:
            assert r["reason"] == "judge_unreadable" and r["detail"]
        elif not r["identical"]:  # both orders asked, averaged
            assert r["p_win"] == pytest.approx(0.5 * (r["judge_model_first"] + 1 - r["judge_reference_first"]))
            assert 0 < r["p_win"] < 1 and r["model_reward"] is None
    assert oe["judge"]["kind"] == "pairwise_judge" and oe["judge"]["model"] == str(tiny_chatml_path)
    assert 0 <= m["win_rate"] <= 100 and 0 <= m["length_controlled_win_rate"] <= 100


def test_prompts_without_gold_answers_are_counted(tmp_path, chatml_engine, tiny_chatml_path, tiny_rm_chatml_path):
    convs = [json.loads(line) for line in SEED.read_text().splitlines()[:5]]
    convs[1] = {"messages": convs[1]["messages"][:1]}  # ends with its user turn: no gold answer
    convs[3] = {"messages": None}  # not a conversation at all
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({**c, "id": f"r{i}"}) + "\n" for i, c in enumerate(convs)))
    out = tmp_path / "o"
    raw = _recipe(tiny_chatml_path, prompts={"path": str(data)}, judge=_rm(tiny_rm_chatml_path))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    result, _ = _eval(path, "--out", out)
    assert result.exit_code == 0, result.output[-3000:]
    oe = json.loads((out / "summary.json").read_text())["open_ended"]
    assert oe["metrics"]["prompts"] == 4 and oe["metrics"]["judged"] == 3 and oe["metrics"]["unjudged_share"] == 0.25
    assert oe["unjudged"] == {"count": 1, "by_reason": {"no_gold_answer": 1}, "ids": ["r1"]}
    assert oe["unusable"]["by_reason"] == {"bad_input": 1} and oe["unusable"]["ids"] == ["r3"]
    assert pq.read_table(out / "open_ended" / "unusable.parquet").column("id").to_pylist() == ["r3"]
    rows = pq.read_table(out / "open_ended" / "outcomes" / "part-00000.parquet").to_pylist()
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r4"] and rows[1]["model_answer"] is None
    assert 'unjudged: 1 {"no_gold_answer": 1}' in result.output


def test_open_ended_bad_input_is_one_line_exit_2(tmp_path, tiny_chatml_path):
    no_gold = tmp_path / "q.jsonl"
    no_gold.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi?"}]}) + "\n")
    rm = {"kind": "reward_model", "reward_model": {"model": str(tiny_chatml_path)}}

    made = []

    def recipe(**oe) -> Path:
        raw = _recipe(tiny_chatml_path, **{"judge": {"kind": "pairwise"}, **oe})
        made.append(raw)
        path = tmp_path / f"r{len(made)}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    cases = [
        ([recipe(reference={"model": {"model": str(tmp_path / "nowhere")}})], "open_ended.reference.model"),
        ([recipe(reference={"model": {"model": str(tmp_path / "nowhere")}})], "no such directory"),
        ([recipe(prompts={"path": str(no_gold)})], "none of rows [0, 1)"),
        ([recipe(prompts={"path": str(tmp_path / "missing.jsonl")})], "missing.jsonl"),
        ([recipe(prompts={"magpie": {}})], "not prompts.magpie"),
        ([recipe(judge=rm)], "classification head"),
        ([recipe(judge={"kind": "pairrm"})], "open_ended.judge"),
        ([recipe(judge={"kind": "pairwise", "template": str(tmp_path / "nope.txt")})], "cannot read judge template"),
        (["--model", tiny_chatml_path], "field 'problems'"),
    ]
    for args, needle in cases:
        result, lines = _eval(*args, "--out", tmp_path / "o")
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], (needle, result.output)
    assert not (tmp_path / "o" / "summary.json").exists()
