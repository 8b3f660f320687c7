"""Curation end to end: real sentence-transformers, real FAISS, real vLLM scorer, real Parquet."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from roost.cli import app
from roost.curation.runner import curate
from roost.recipe import CurateRecipe
from roost.schemas import MESSAGES


def conv(q: str, a: str = "Here is a careful and complete answer to that question.") -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


ROWS = [
    # 0..3 distinct, clean
    {"messages": conv("How do I reverse a list in Python?"), "source": "a"},
    {"messages": conv("What is the capital of France?"), "source": "a"},
    {"messages": conv("Explain photosynthesis to a ten year old."), "source": "b"},
    {"messages": conv("Write a haiku about autumn leaves."), "source": "b"},
    # 4: exact duplicate of 0 after normalization (case, whitespace)
    {"messages": conv("how do I   REVERSE a list in python?", "A different answer, still long enough."), "source": "c"},
    # 5: paraphrase of 1 (semantic duplicate)
    {"messages": conv("What's the capital city of France?"), "source": "c"},
    # 6..9: bad input
    {"messages": None, "source": "bad"},
    {"messages": [], "source": "bad"},
    {"messages": [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "Odd order?"}], "source": "bad"},
    {"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "Empty question."}], "source": "bad"},
    # 10: heuristics: not a request
    {"messages": conv("Here is my text:"), "source": "d"},
]

SCHEMA = pa.schema([pa.field("messages", MESSAGES), pa.field("source", pa.string())])


@pytest.fixture()
def input_path(tmp_path) -> Path:
    path = tmp_path / "input.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS, schema=SCHEMA), path)
    return path


def _read(out: Path, kind: str) -> list[dict]:
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_dedup_and_filters_keep_one_per_group_and_lose_nothing(tmp_path, input_path):
    recipe = CurateRecipe.model_validate({"input": {"path": str(input_path), "batch_size": 4}, "stages": [
        {"kind": "heuristics"}, {"kind": "exact_dedup"}, {"kind": "semantic_dedup", "threshold": 0.85}]})
    out = tmp_path / "out"
    manifest = curate(recipe, out, progress=False)
    rows, rejects = _read(out, "data"), _read(out, "rejects")

    assert len(rows) + len(rejects) == len(ROWS) == manifest["input_rows"]
    kept_questions = [r["messages"][0]["content"] for r in rows]
    assert kept_questions == [ROWS[i]["messages"][0]["content"] for i in (0, 1, 2, 3)]  # input order, first wins
    assert all(r["source"] in {"a", "b"} for r in rows)  # input columns are kept

    by_source = {}
    for r in rejects:
        by_source.setdefault(json.loads(r["record"])["source"], []).append(r)
    ids = {r["messages"][0]["content"]: r["id"] for r in rows}
    (exact,) = [r for r in by_source["c"] if r["reason"] == "exact_duplicate"]
    assert exact["duplicate_of"] == ids["How do I reverse a list in Python?"]
    (semantic,) = [r for r in by_source["c"] if r["reason"] == "semantic_duplicate"]
    assert semantic["duplicate_of"] == ids["What is the capital of France?"]
    assert "cosine" in semantic["detail"]
    assert sorted(r["reason"] for r in by_source["bad"]) == ["bad_input"] * 4
    assert [r["reason"] for r in by_source["d"]] == ["not_a_request"]

    # Magpie's tags on every output row, pointing at real rows (kept or removed)
    all_ids = set(ids.values()) | {r["id"] for r in rejects if r["id"]}
    assert semantic["id"] and exact["id"]
    for r in rows:
        assert r["min_neighbor_distance"] is not None and r["repeat_count"] >= 0
        assert r["nearest_id"] in all_ids and r["nearest_id"] != r["id"]
    france = next(r for r in rows if r["id"] == ids["What is the capital of France?"])
    assert france["repeat_count"] == 1  # its paraphrase, found before removal
    assert france["nearest_similarity"] >= 0.85
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["validate"]["removed"] == {"bad_input": 4}
    assert stages["exact_dedup"]["removed"] == {"exact_duplicate": 1}
    assert stages["semantic_dedup"]["removed"] == {"semantic_duplicate": 1}
    assert stages["semantic_dedup"]["settings"]["index"] == "flat"


def test_instruction_response_columns_and_missing_columns(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"instruction": ["Name three primes.", None, "Name three primes."],
                             "response": ["2, 3 and 5 are prime numbers.", "x", "2, 3, 5."]}), path)
    out = tmp_path / "out"
    recipe = CurateRecipe.model_validate({"input": {"path": str(path)},
                                          "stages": [{"kind": "heuristics"}, {"kind": "exact_dedup"}]})
    manifest = curate(recipe, out, progress=False)
    assert manifest["rows"] == 1 and manifest["rejects_by_reason"] == {"bad_input": 1, "exact_duplicate": 1}
    (row,) = _read(out, "data")
    assert row["instruction"] == "Name three primes." and row["id"]

    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"text": ["hello"]}), wrong)
    result = CliRunner().invoke(app, ["curate", str(wrong), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2
    assert "cannot tell what the rows are (columns: text)" in result.output and "input.format" in result.output


def test_scores_selection_rerun_and_mismatch(tmp_path, input_path, chatml_engine, tiny_chatml_path):
    out = tmp_path / "out"
    model = str(tiny_chatml_path)
    args = ["curate", str(input_path), "--out", str(out), "--scorer", model, "--budget", "2", "--tau", "0.9"]
    # same identity as the session engine fixture (max_model_len 1024) so the engine is reused
    recipe_path = tmp_path / "curate.yaml"
    recipe_path.write_text("stages: [{kind: heuristics}, {kind: exact_dedup}, {kind: semantic_dedup},"
                           " {kind: deita, max_model_len: 1024}]\n")
    result = CliRunner().invoke(app, [*args, "--recipe", str(recipe_path)])
    assert result.exit_code == 0, result.output
    rows, rejects = _read(out, "data"), _read(out, "rejects")
    assert len(rows) == 2
    for r in rows:
        c, q = r["complexity_scores"], r["quality_scores"]
        assert len(c) == len(q) == 1 and 1.0 <= c[0] <= 6.0 and 1.0 <= q[0] <= 6.0
        assert r["deita_score"] == pytest.approx(c[0] * q[0])
    over = [r for r in rejects if r["reason"] in {"over_budget", "too_similar_to_selected"}]
    assert len(over) == 2  # 4 rows survived dedup, 2 selected
    assert sorted(r["selection_rank"] for r in rows) == [0, 1]  # the two best scores
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["deita"]["settings"]["complexity"]["method"] == "deita-expected-score"
    assert stages["selection"]["settings"]["score"] == "deita_score"

    again = CliRunner().invoke(app, [*args, "--recipe", str(recipe_path)])
    assert again.exit_code == 0 and "already curated" in again.output

    other = CliRunner().invoke(app, [*args[:-4], "--budget", "3", "--recipe", str(recipe_path)])
    assert other.exit_code == 2 and "different dataset" in other.output


def test_bad_curation_options_exit_2(tmp_path, input_path):
    result = CliRunner().invoke(app, ["curate", str(input_path), "--out", str(tmp_path / "o"), "--threshold", "1.5"])
    assert result.exit_code == 2 and "stages[2](semantic_dedup).threshold" in result.output
    result = CliRunner().invoke(app, ["curate", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such file" in result.output
    # a Hub dataset that cannot be opened (offline here) is one clear error, not a traceback
    result = CliRunner().invoke(app, ["curate", "hf://no-such-org/no-such-dataset", "--out", str(tmp_path / "o3")])
    assert result.exit_code == 2 and "hf://no-such-org/no-such-dataset: cannot open" in result.output


def test_exact_dedup_matches_a_plain_python_statement_of_the_rule():
    # Pure logic: the one (numpy) implementation against the rule written the obvious way.
    import math

    import numpy as np

    from roost.algorithms.exact_dedup import exact_dedup

    def reference(keys, pri):
        best = {}
        for i, k in enumerate(keys):
            p = -math.inf if pri is None or pri[i] is None else pri[i]
            if k not in best or p > best[k][0]:
                best[k] = (p, i)
        return [best[k][1] for k in keys]

    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 60))
        keys = [f"Key {int(rng.integers(0, 8))}" for _ in range(n)]
        pri = [None if v == 0 else float(v) for v in rng.integers(0, 4, size=n)] if trial % 2 else None
        survivor = reference(keys, pri)
        r = exact_dedup(keys, [str(i) for i in range(n)], pri)
        assert r.keep.tolist() == [survivor[i] == i for i in range(n)]
        assert r.duplicate_of == [None if survivor[i] == i else str(survivor[i]) for i in range(n)]


def test_unfinished_curation_is_redone_without_stale_shards(tmp_path, input_path):
    from roost.dataset.writer import base_manifest

    recipe = CurateRecipe.model_validate({"input": {"path": str(input_path)}, "shard_size": 4,
                                          "stages": [{"kind": "heuristics"}, {"kind": "exact_dedup"}]})
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    # what a killed run of the same recipe leaves: a "running" manifest and a shard of an older plan
    (out / "manifest.json").write_text(json.dumps(base_manifest("curated", {}, recipe.fingerprint(), status="running")))
    stale = out / "data" / "train-00000-of-00009.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS[:2], schema=SCHEMA), stale)
    manifest = curate(recipe, out, progress=False)
    assert manifest["status"] == "complete" and not stale.exists()
    files = sorted(p.name for p in (out / "data").iterdir())
    assert files == [f"train-0000{i}-of-00002.parquet" for i in range(2)]
    rows, rejects = _read(out, "data"), _read(out, "rejects")
    assert len(rows) == manifest["rows"] == 5 and len(rows) + len(rejects) == len(ROWS)
    assert len({r["id"] for r in rows}) == len(rows)


def test_one_rule_set_for_every_language_and_for_broken_text(tmp_path):
    rows = [{"messages": conv("用一句话解释量子纠缠。", "两个粒子的状态彼此关联，测量一个会立即确定另一个的状态。"), "source": "zh"},
            {"messages": conv("量子もつれを一文で説明してください。", "二つの粒子の状態が結びついていることです。"), "source": "ja"},
            {"messages": conv("What is entanglement?", "Correlated \x00 states."), "source": "nul"},
            {"messages": conv("What is superposition?", "Several states at \ufffd once."), "source": "fffd"}]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    recipe = CurateRecipe.model_validate({"input": {"path": str(path)}, "stages": [{"kind": "heuristics"}]})
    manifest = curate(recipe, tmp_path / "out", progress=False)
    assert sorted(r["source"] for r in _read(tmp_path / "out", "data")) == ["ja", "zh"]
    rejects = {json.loads(r["record"])["source"]: r for r in _read(tmp_path / "out", "rejects")}
    assert rejects["nul"]["reason"] == rejects["fffd"]["reason"] == "broken_text"
    assert "control character" in rejects["nul"]["detail"] and "U+FFFD" in rejects["fffd"]["detail"]
    assert manifest["stages"][1]["removed"] == {"broken_text": 2}


def _pref(q, good="A careful, complete and correct answer.", bad="No."):
    return {"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}]}


def test_preference_rows_are_deduplicated_on_the_prompt_and_scored(tmp_path, tiny_rm_chatml_path, chatml_engine,
                                                                   tiny_chatml_path):
    from roost.engines import RewardModelConfig
    from roost.scorers.reward import get_reward_scorer

    rows = [_pref("How do I reverse a list in Python?"), _pref("What is the capital of France?"),
            _pref("how do I REVERSE a list in python?", "Use reversed() or slicing.", "Never."),  # same prompt
            _pref("What's the capital city of France?"),  # paraphrase
            {**_pref("Explain recursion."), "prompt": None},  # bad rows
            {**_pref("Explain recursion."), "chosen": []},
            _pref("Write a haiku about autumn leaves.")]
    schema = pa.schema([pa.field(c, MESSAGES) for c in ("prompt", "chosen", "rejected")])
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    rm = {"model": str(tiny_rm_chatml_path), "max_model_len": 1024}
    recipe = CurateRecipe.model_validate({"input": {"path": str(path)}, "stages": [
        {"kind": "heuristics"}, {"kind": "exact_dedup"}, {"kind": "semantic_dedup", "threshold": 0.85},
        {"kind": "reward", "model": rm}, {"kind": "deita", "complexity_model": str(tiny_chatml_path),
                                          "quality_model": str(tiny_chatml_path), "max_model_len": 1024},
        {"kind": "selection", "budget": 2, "score": "chosen_reward"}]})
    out = tmp_path / "out"
    manifest = curate(recipe, out, progress=False)
    assert manifest["row_kind"] == "preference"
    kept, rejects = _read(out, "data"), _read(out, "rejects")
    assert len(kept) + len(rejects) == len(rows)
    reasons = {s["name"]: s["removed"] for s in manifest["stages"]}
    assert reasons["validate"] == {"bad_input": 2}
    assert reasons["exact_dedup"] == {"exact_duplicate": 1} and reasons["semantic_dedup"] == {"semantic_duplicate": 1}
    assert sum(reasons["selection"].values()) == 1 and len(kept) == 2
    dup = next(r for r in rejects if r["reason"] == "exact_duplicate")
    assert json.loads(dup["record"])["chosen"][0]["content"] == "Use reversed() or slicing."
    # the columns hold what the reward model says of these very answers
    scorer = get_reward_scorer(RewardModelConfig(**rm))
    for r in kept:
        c, rj = scorer.score([r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]])
        assert r["chosen_reward"] == pytest.approx(c.value, abs=1e-5)
        assert r["rejected_reward"] == pytest.approx(rj.value, abs=1e-5)
        assert r["reward_margin"] == pytest.approx(c.value - rj.value, abs=1e-5)
        assert r["chosen_reward_outputs"] == pytest.approx(c.outputs, abs=1e-5)
        assert len(r["complexity_scores"]) == 1 and r["deita_score"] is not None
    assert [r["selection_rank"] for r in sorted(kept, key=lambda r: -r["chosen_reward"])] == [0, 1]


def test_reward_stage_on_sft_rows_with_a_minimum(tmp_path, input_path, tiny_rm_chatml_path):
    rm = {"model": str(tiny_rm_chatml_path), "max_model_len": 1024}
    first = CurateRecipe.model_validate({"input": {"path": str(input_path)}, "stages": [{"kind": "reward", "model": rm}]})
    scored = curate(first, tmp_path / "all", progress=False)
    rewards = sorted(r["reward"] for r in _read(tmp_path / "all", "data"))
    assert scored["rows"] == len(rewards) == 7  # 11 rows, 4 bad input, no other stage
    cut = (rewards[2] + rewards[3]) / 2
    second = CurateRecipe.model_validate({"input": {"path": str(input_path)},
                                          "stages": [{"kind": "reward", "model": rm, "min_reward": cut}]})
    manifest = curate(second, tmp_path / "cut", progress=False)
    assert manifest["rows"] == 4 and manifest["rejects_by_reason"]["low_reward"] == 3
    low = [r for r in _read(tmp_path / "cut", "rejects") if r["reason"] == "low_reward"]
    assert all(f"< {cut}" in r["detail"] for r in low)

    bad = CliRunner().invoke(app, ["curate", str(input_path), "--out", str(tmp_path / "x"), "--recipe",
                                   str(_yaml(tmp_path, {"stages": [{"kind": "reward", "model": rm, "min_margin": 0.1}]}))])
    assert bad.exit_code == 2 and "min_margin needs preference rows" in bad.output
    bad = CliRunner().invoke(app, ["curate", str(input_path), "--out", str(tmp_path / "y"), "--recipe",
                                   str(_yaml(tmp_path, {"stages": [{"kind": "selection", "budget": 2}]}))])
    assert bad.exit_code == 2 and "stages[0] (selection): needs scores" in bad.output


def _yaml(tmp_path, data) -> Path:
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_spelling_out_the_default_dedup_threshold_is_the_same_recipe():
    """The threshold's default depends on the embedding (0.9 MiniLM, 0.94 static): writing that
    default out keeps the fingerprint an output was curated under; any other value changes it."""
    from roost.recipe import CurateRecipe, validate

    def fp(embedding: dict, threshold: float | None) -> str:
        dedup = {"kind": "semantic_dedup"} | ({"threshold": threshold} if threshold is not None else {})
        raw = {"embedding": embedding, "stages": [{"kind": "heuristics"}, {"kind": "exact_dedup"}, dedup]}
        return validate(CurateRecipe, raw, "t").fingerprint()

    minilm, static = {}, {"model": "static"}
    assert fp(minilm, 0.9) == fp(minilm, None) == validate(CurateRecipe, {}, "t").fingerprint()
    assert fp(static, 0.94) == fp(static, None) != fp(minilm, None)
    assert fp(minilm, 0.94) != fp(minilm, None) and fp(static, 0.9) != fp(static, None)
