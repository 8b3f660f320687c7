"""SPPO: the win-matrix -> pair arithmetic against SPPO's own formulas (pure logic), and the
synthesizer end to end through the CLI on the tiny policy (real vLLM) with both preference
models: the policy as its own pairwise judge, and Bradley-Terry over the tiny reward model."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.schemas import MESSAGES
from roost.synthesizers.sppo import SPPO_ROWS, SPPO_SUBSET, bradley_terry, choose, complete
from test_reward_pairs import PROMPTS as ALL_PROMPTS

PROMPTS = ALL_PROMPTS[:8]
SPPO_COLUMNS = ["chosen", "rejected", "chosen_probs", "chosen_probs_win", "chosen_probs_lose"]


# -- the arithmetic: scripted rewards and matrices stand in for models (exact values are the point)


def sppo_reference(scores: list[float]) -> dict:
    """uclaml/SPPO scripts/compute_prob.py (from_ranks + prepare_score), transcribed for any K."""
    k = len(scores)
    prb = [[1 / (1 + math.exp(scores[j] - scores[i])) for j in range(k)] for i in range(k)]
    w = max(range(k), key=lambda i: (scores[i], -i))  # np.argmax: the first maximum
    lo = min(range(k), key=lambda i: (scores[i], i))
    return {"chosen": w, "rejected": lo, "chosen_probs": prb[w][lo],
            "chosen_probs_win": sum(prb[w]) / k, "chosen_probs_lose": sum(prb[lo]) / k}


def test_k2_by_hand():
    probs = bradley_terry([1.0, 0.0])
    assert probs == [[0.5, pytest.approx(0.7310585786300049)], [pytest.approx(0.2689414213699951), 0.5]]
    choice, problem = choose(probs, ["good", "bad"])
    assert problem is None and (choice.chosen, choice.rejected) == (0, 1)
    assert choice.chosen_probs == pytest.approx(0.7310585786300049)
    assert choice.chosen_probs_win == pytest.approx((0.5 + 0.7310585786300049) / 2)  # 0.61552...
    assert choice.chosen_probs_lose == pytest.approx((0.2689414213699951 + 0.5) / 2)  # 0.38447...


def test_scripted_judge_matrix_by_hand():
    probs = [[0.5, 0.7, 0.9], [0.3, 0.5, 0.6], [0.1, 0.4, 0.5]]
    choice, problem = choose(probs, ["a", "b", "c"])
    assert problem is None and (choice.chosen, choice.rejected) == (0, 2)
    assert choice.win_rates == [pytest.approx(0.7), pytest.approx(1.4 / 3), pytest.approx(1 / 3)]
    assert (choice.chosen_probs, choice.chosen_probs_win, choice.chosen_probs_lose) == (
        0.9, pytest.approx(0.7), pytest.approx(1 / 3))


@pytest.mark.parametrize("k", [2, 5, 7])
def test_bradley_terry_matches_sppo_compute_prob(k):
    rng = random.Random(k)
    for _ in range(20):
        scores = [rng.gauss(0, 2) for _ in range(k)]
        probs = bradley_terry(scores)
        for i in range(k):
            assert probs[i][i] == 0.5
            for j in range(k):
                assert probs[i][j] + probs[j][i] == 1.0  # exact, not within rounding
        choice, problem = choose(probs, [f"r{i}" for i in range(k)])
        ref = sppo_reference(scores)
        assert problem is None and (choice.chosen, choice.rejected) == (ref["chosen"], ref["rejected"])
        for c in ("chosen_probs", "chosen_probs_win", "chosen_probs_lose"):
            assert getattr(choice, c) == pytest.approx(ref[c], abs=1e-12)


def test_temperature_and_left_out_samples_k7():
    rewards = [2.0, None, -1.0, 0.5, None, 0.0, 1.0]
    probs = bradley_terry(rewards, temperature=2.0)
    assert probs[0][2] == pytest.approx(1 / (1 + math.exp(-1.5)))  # sigmoid((2 - -1) / 2)
    assert probs[1] == [None] * 7 and all(row[4] is None for row in probs)
    choice, _ = choose(probs, [f"r{i}" for i in range(7)])
    assert (choice.chosen, choice.rejected) == (0, 2)
    valid = [0, 2, 3, 5, 6]
    assert choice.win_rates[1] is None and choice.win_rates[4] is None
    assert choice.chosen_probs_win == pytest.approx(sum(probs[0][j] for j in valid) / 5)  # over the 5 usable
    assert choice.chosen_probs_lose == pytest.approx(sum(probs[2][j] for j in valid) / 5)


def test_incomplete_matrices_ties_and_too_few():
    # sample 1's questions could not be read against 2 and 3: it is the one left out
    probs = [[0.5, 0.6, 0.7, 0.8], [0.4, 0.5, None, None], [0.3, None, 0.5, 0.55], [0.2, None, 0.45, 0.5]]
    kept, dropped = complete(probs)
    assert dropped == [1] and kept[1] == [None] * 4 and kept[0] == [0.5, None, 0.7, 0.8]
    assert choose(kept, list("abcd"))[0].rejected == 3
    assert choose(bradley_terry([1.0, 1.0, 1.0]), list("abc"))[1][0] == "tied_win_rates"
    assert choose(bradley_terry([2.0, 1.0, 0.0]), ["same", "x", "same"])[1][0] == "identical_texts"
    assert choose(bradley_terry([2.0, None]), ["a", "b"])[1] == ("too_few_valid", "1 of 2 samples usable")


# -- end to end ---------------------------------------------------------------------------------


def _recipe(model: Path, prompts: dict, preference: dict, k: int = 3, **synth) -> dict:
    return {
        "name": "sppo-test",
        # same engine identity as the conftest fixture, so the process reuses that engine
        "model": {"model": str(model), "max_model_len": 1024, "seed": 0},
        "output": {"shard_size": 5},
        "synthesizer": {"kind": "sppo", "prompts": prompts, "k": k,
                        "sampling": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 40},
                        "preference": preference, **synth},
    }


@pytest.fixture()
def prompt_file(tmp_path) -> Path:
    rows = [{"messages": [{"role": "user", "content": p}]} for p in PROMPTS]
    rows.insert(2, {"messages": None})  # bad rows: rejected with a reason, not lost
    rows.insert(6, {"messages": [{"role": "assistant", "content": "no question"}]})
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([pa.field("messages", MESSAGES)])), path)
    return path


def _build(tmp_path: Path, raw: dict, name: str) -> tuple[Path, list[dict], list[dict], dict]:
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / name
    result = CliRunner().invoke(app, ["build", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    read = lambda kind: [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]  # noqa: E731
    return out, read("data"), read("rejects"), json.loads((out / "manifest.json").read_text())


def _check_rows(rows: list[dict], rejects: list[dict], k: int) -> None:
    bad = [r for r in rejects if r["reason"] == "bad_input"]
    assert len(bad) == 2
    made = {r["prompt"][-1]["content"] for r in rows}
    refused = {json.loads(r["record"])["prompt"][-1]["content"] for r in rejects if r["stage"] == "sppo"}
    assert made | refused == set(PROMPTS) and not made & refused  # nothing lost
    assert len(rows) >= 3
    for r in rows:
        assert SPPO_ROWS.problem(r) is None and r["method"] == "sppo"
        probs, rates = r["probability"], r["win_rates"]
        assert len(probs) == k and all(len(row) == k for row in probs) and len(r["all_responses"]) == k
        valid = [i for i in range(k) if probs[i][i] is not None]
        for i in valid:
            assert probs[i][i] == 0.5 and rates[i] == pytest.approx(sum(probs[i][j] for j in valid) / len(valid))
            for j in valid:
                assert 0 <= probs[i][j] <= 1 and probs[i][j] + probs[j][i] == pytest.approx(1.0, abs=1e-9)
        w = max(valid, key=lambda i: (rates[i], -i))
        lo = min(valid, key=lambda i: (rates[i], i))
        assert r["chosen"] == [{"role": "assistant", "content": r["all_responses"][w]}]
        assert r["rejected"] == [{"role": "assistant", "content": r["all_responses"][lo]}]
        assert (r["chosen_probs"], r["chosen_probs_win"], r["chosen_probs_lose"]) == (probs[w][lo], rates[w], rates[lo])
        assert r["sampling"]["n"] == k and r["model_revision"].startswith("local-sha256:")
        assert r["preference_model_revision"].startswith("local-sha256:")


def _check_sppo_subset(out: Path, rows: list[dict]) -> None:
    files = sorted((out / "sppo").glob("*.parquet"))
    assert [f.name for f in files] == sorted(p.name for p in (out / "data").glob("*.parquet"))
    assert all(pq.read_schema(f).names == SPPO_COLUMNS for f in files)
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(out / "sppo"), split="train")
    assert ds.column_names == SPPO_COLUMNS and pq.read_schema(files[0]).equals(SPPO_SUBSET)
    by_prompt = {json.dumps(r["prompt"]): r for r in rows}
    assert len(ds) == len(rows)
    for s in ds:
        row = by_prompt[json.dumps(s["chosen"][:-1])]  # SPPO's trainer: the prompt is chosen[:-1]
        assert s["rejected"][:-1] == row["prompt"] and s["chosen"][-1] == row["chosen"][0]
        assert s["rejected"][-1] == row["rejected"][0] and s["chosen_probs_win"] == row["chosen_probs_win"]


def test_sppo_with_the_policy_as_judge_through_the_cli_and_trl(tmp_path, prompt_file, chatml_engine, tiny_chatml_path):
    raw = _recipe(tiny_chatml_path, {"path": str(prompt_file)}, {"kind": "judge"})
    out, rows, rejects, manifest = _build(tmp_path, raw, "judge")
    _check_rows(rows, rejects, 3)
    assert manifest["kind"] == "preference" and manifest["num_shards"] == 2
    assert manifest["rejects_by_reason"]["bad_input"] == 2
    assert all(r["all_scores"] is None and r["preference_kind"] == "judge" for r in rows)
    assert all(r["preference_model"] == str(tiny_chatml_path) for r in rows)
    pref = manifest["preference"]
    assert pref["kind"] == "pairwise_judge" and pref["template_version"] == "roost-pairwise-1"
    assert manifest["subsets"] == {"sppo": "sppo/train-*.parquet"} and manifest["sppo"]["pairs"] == len(rows)
    assert manifest["sampling"]["n"] == 3 and manifest["sampling"]["temperature"] == 1.0
    _check_sppo_subset(out, rows)

    # TRL's DPOTrainer trains on data/ as is with SPPO's hard-label loss (one step, tiny policy)
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", use_cpu=True, max_length=256, loss_type="sppo_hard")
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_chatml_path), args=args, train_dataset=ds,
                         processing_class=AutoTokenizer.from_pretrained(tiny_chatml_path))
    assert trainer.train().training_loss > 0


def test_sppo_with_bradley_terry_over_a_reward_model(tmp_path, prompt_file, chatml_engine, tiny_chatml_path,
                                                     tiny_rm_chatml_path):
    pref = {"kind": "bradley_terry", "reward_model": {"model": str(tiny_rm_chatml_path), "max_model_len": 1024},
            "temperature": 0.5}
    out, rows, rejects, manifest = _build(tmp_path, _recipe(tiny_chatml_path, {"path": str(prompt_file)}, pref, k=4), "bt")
    _check_rows(rows, rejects, 4)
    for r in rows:
        scores = r["all_scores"]
        valid = [i for i in range(4) if r["probability"][i][i] is not None]
        assert [scores[i] is not None for i in range(4)] == [i in valid for i in range(4)]
        w = max(valid, key=lambda i: (scores[i], -i))  # SPPO's argmax of the scores...
        assert r["chosen"][0]["content"] == r["all_responses"][w]  # ...is the argmax of the win rates
        i, j = valid[:2]
        assert r["probability"][i][j] == pytest.approx(1 / (1 + math.exp(-(scores[i] - scores[j]) / 0.5)))
    assert manifest["preference"]["kind"] == "bradley_terry" and manifest["preference"]["temperature"] == 0.5
    assert manifest["preference"]["reward_model"]["revision"].startswith("local-sha256:")
    _check_sppo_subset(out, rows)


def test_sppo_recipe_errors_are_one_line_exit_2(tmp_path, prompt_file, tiny_chatml_path):
    template = tmp_path / "judge.txt"
    template.write_text("Better: {response_a} or {response_b}? A or B.")

    def run(preference, **synth):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(_recipe(tiny_chatml_path, {"path": str(prompt_file)}, preference, **synth)))
        result = CliRunner().invoke(app, ["build", str(path), "--out", str(tmp_path / "o")])
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        return result.exit_code, " ".join(lines), len(lines)

    cases = [
        ({"kind": "judge"}, {"k": 1}, "synthesizer.k"),
        ({"kind": "judge", "template": str(template)}, {}, "has no {conversation} placeholder"),
        ({"kind": "judge", "template": str(tmp_path / "nope.txt")}, {}, "cannot read judge template"),
        ({"kind": "judge", "template": str(prompt_file)}, {}, "(not UTF-8 text)"),
        ({"kind": "bradley_terry", "reward_model": {"model": str(tiny_chatml_path)}, "temperature": 0}, {},
         "temperature"),
        ({"kind": "bradley_terry", "reward_model": {"model": str(tiny_chatml_path)}}, {}, "classification head"),
        ({"kind": "pairrm"}, {}, "synthesizer.preference"),
    ]
    for preference, synth, needle in cases:
        code, text, n = run(preference, **synth)
        assert code == 2 and needle in text and n == 1, (needle, text)


def test_demo_recipe_validates():
    from roost.recipe import load_recipe

    root = Path(__file__).resolve().parents[1]
    for name in ("sppo-demo.yaml", "sppo.yaml"):
        recipe = load_recipe(root / "recipes" / name)
        assert recipe.synthesizer.kind == "sppo"
