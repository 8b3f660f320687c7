"""Reward-ranked preference pairs: the pair rules (pure logic), and the synthesizer end to end
on the tiny policy (real vLLM) and the tiny reward model, through the CLI and the Prefect flow."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.recipe import validate_recipe
from roost.schemas import MESSAGES
from roost.scorers.reward import Reward
from roost.synthesizers.base import Shard
from roost.synthesizers.reward_pairs import PAIRS, RewardPairs

PROMPTS = [
    "Explain what a Python list comprehension is.",
    "How do I read a file line by line in Python?",
    "What does the zip function do?",
    "Write a function that reverses a string.",
    "What is the difference between a tuple and a list?",
    "How do I sort a dictionary by value?",
    "Explain what a decorator does.",
    "How can I remove duplicates from a list?",
    "What is a generator expression?",
    "How do I format a float with two decimals?",
]


def _recipe(model: Path, reward: Path, prompts: dict, **synth) -> dict:
    return {
        "name": "pairs-test",
        # same engine identity as the conftest fixture, so the process reuses that engine
        "model": {"model": str(model), "max_model_len": 1024, "seed": 0},
        "output": {"shard_size": 4},
        "synthesizer": {"kind": "reward_pairs", "prompts": prompts, "k": 4,
                        "sampling": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 48},
                        "reward_model": {"model": str(reward), "max_model_len": 1024}, **synth},
    }


@pytest.fixture()
def prompt_file(tmp_path) -> Path:
    rows = [{"messages": [{"role": "user", "content": p}]} for p in PROMPTS]
    rows.insert(3, {"messages": None})  # bad rows: rejected with a reason, not lost
    rows.insert(7, {"messages": []})
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([pa.field("messages", MESSAGES)])), path)
    return path


# -- pair rules: pure logic over scripted rewards (no model; exact scores are the point) -----


def _synth(**cfg) -> RewardPairs:
    raw = _recipe(Path("policy"), Path("rm"), {"path": "unused"}, **cfg)
    synth = RewardPairs(validate_recipe(raw).synthesizer, validate_recipe(raw))
    synth._rev = {"model": "policy-rev", "reward_model": "rm-rev"}
    return synth


PROMPT = [{"role": "user", "content": "Q?"}]
SHARD = Shard(0, 1, seed=7, start=0, stop=1)


def _group(*items):
    """(text, tokens, finished) per response, and its scripted reward."""
    return [(t, n, ok) for t, n, ok, _ in items], [Reward(r) if ok else None for *_, ok, r in items]


def test_best_vs_worst_with_scores_tokens_and_provenance():
    group, rewards = _group(("a", 10, True, 0.2), ("b", 30, True, 1.5), ("c", 5, True, -0.4), ("d", 64, False, None))
    rows, problem = _synth()._pairs("p1", PROMPT, group, rewards, random.Random(0), SHARD)
    assert problem is None and len(rows) == 1
    row = rows[0]
    assert row["chosen"] == [{"role": "assistant", "content": "b"}] and row["rejected"][0]["content"] == "c"
    assert (row["chosen_score"], row["rejected_score"], row["score_gap"]) == (1.5, -0.4, pytest.approx(1.9))
    assert (row["chosen_tokens"], row["rejected_tokens"]) == (30, 5)
    assert row["all_scores"] == [0.2, 1.5, -0.4, None] and row["all_tokens"] == [10, 30, 5, 64]
    assert row["sampling"]["n"] == 4 and row["sampling"]["seed"] == 7 and row["model_revision"] == "policy-rev"
    assert PAIRS.problem(row) is None


def test_length_penalty_changes_the_ranking():
    group, rewards = _group(("long", 400, True, 1.0), ("short", 20, True, 0.8), ("mid", 100, True, 0.1))
    plain, _ = _synth()._pairs("p", PROMPT, group, rewards, random.Random(0), SHARD)
    assert plain[0]["chosen"][0]["content"] == "long"
    penalized, _ = _synth(length_penalty=0.001)._pairs("p", PROMPT, group, rewards, random.Random(0), SHARD)
    assert penalized[0]["chosen"][0]["content"] == "short"  # 0.78 > 0.6 > 0.0
    assert penalized[0]["score_gap"] == pytest.approx(0.78 - 0.0)


def test_other_pair_rules_and_the_groups_that_make_no_pair():
    group, rewards = _group(("a", 1, True, 3.0), ("b", 1, True, 2.0), ("c", 1, True, 1.0), ("d", 1, True, 0.95))
    every, _ = _synth(pair_rule="all_above_margin", margin=0.5)._pairs("p", PROMPT, group, rewards, random.Random(0), SHARD)
    assert sorted((r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in every) == [
        ("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")]
    picks = {_synth(pair_rule="best_random")._pairs("p", PROMPT, group, rewards, random.Random(s), SHARD)[0][0]
             ["rejected"][0]["content"] for s in range(30)}
    assert picks == {"b", "c", "d"}

    tie, r = _group(("a", 1, True, 1.0), ("b", 1, True, 1.05))
    assert _synth(margin=0.1)._pairs("p", PROMPT, tie, r, random.Random(0), SHARD)[1][0] == "tie_within_margin"
    same, r = _group(("same", 1, True, 2.0), ("same", 1, True, 1.0))
    assert _synth()._pairs("p", PROMPT, same, r, random.Random(0), SHARD)[1][0] == "tie_within_margin"
    dead, r = _group(("", 0, False, None), ("cut", 48, False, None))
    assert _synth()._pairs("p", PROMPT, dead, r, random.Random(0), SHARD)[1][0] == "all_truncated_or_empty"
    one, r = _group(("ok", 3, True, 1.0), ("cut", 48, False, None))
    assert _synth()._pairs("p", PROMPT, one, r, random.Random(0), SHARD)[1][0] == "too_few_scored"


@pytest.mark.parametrize("subsets", [False, True])
def test_a_quantile_cut_labels_the_rows_of_data_and_the_manifest_counts_them(tmp_path, subsets):
    """`difficulty: {quantile}` is decided at the build's end: finish() writes the labels into
    data/ (not only into easy/ and hard/), keeps each shard's provenance, and a second finish
    rewrites nothing."""
    from roost.dataset.writer import DatasetWriter, read_roost_metadata

    synth = _synth(difficulty={"quantile": 0.5, "subsets": subsets})
    writer = DatasetWriter(tmp_path / "out", PAIRS, num_shards=3)
    for s in range(3):
        rows = []
        for i in range(s * 9, s * 9 + 9):  # gaps 0.5 .. 27 (distinct, so the median splits 13 / 14)
            group, rewards = _group(("good", 5, True, float(i + 1)), ("bad", 5, True, 0.5))
            prompt = [{"role": "user", "content": f"Q{i}?"}]
            made, _ = synth._pairs(f"p{i}", prompt, group, rewards, random.Random(i), SHARD)
            rows += made
        assert all(r["difficulty"] is None for r in rows)  # undecided while the shards are written
        writer.write_shard(s, rows, [], {"synthesizer": "reward_pairs", "shard": s})
    d = synth.finish(writer)["difficulty"]
    rows = _read(writer.root)
    assert len(rows) == 27 and d["quantile"] == 0.5 and d["easy"] + d["hard"] == 27
    assert [r["difficulty"] for r in rows].count("easy") == d["easy"] == 14
    assert [r["difficulty"] for r in rows].count("hard") == d["hard"] == 13
    assert all((r["score_gap"] >= d["threshold"]) == (r["difficulty"] == "easy") for r in rows)
    for s in range(3):  # still the same shard: provenance and stats in its metadata
        meta = read_roost_metadata(writer.data_path(s))
        assert meta["provenance"]["shard"] == s and meta["shard"]["rows"] == 9
        assert pq.read_schema(writer.data_path(s)).field("difficulty").type == pa.string()
    assert (writer.root / "easy").is_dir() == subsets and (("subsets" in d) == subsets)
    if subsets:
        assert len(_read(writer.root, "easy")) == 14 and len(_read(writer.root, "hard")) == 13
    mtimes = [writer.data_path(s).stat().st_mtime_ns for s in range(3)]
    assert synth.finish(writer)["difficulty"] == d
    assert [writer.data_path(s).stat().st_mtime_ns for s in range(3)] == mtimes  # labels right: nothing rewritten


# -- end to end ------------------------------------------------------------------------------


def _read(out: Path, kind: str = "data") -> list[dict]:
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_pairs_build_end_to_end_through_the_cli(tmp_path, prompt_file, chatml_engine, tiny_chatml_path, tiny_rm_chatml_path):
    recipe = tmp_path / "pairs.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tiny_chatml_path, tiny_rm_chatml_path, {"path": str(prompt_file)},
                                             difficulty={"subsets": True})))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows, rejects = _read(out), _read(out, "rejects")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "preference" and manifest["num_shards"] == 3  # 12 input rows / 4
    assert sorted(p.name for p in (out / "data").iterdir()) == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    bad = [r for r in rejects if r["reason"] == "bad_input"]
    assert len(bad) == 2 and manifest["rejects_by_reason"]["bad_input"] == 2
    # every good prompt ends as a pair or as a reject saying why: nothing lost
    made = {r["prompt"][-1]["content"] for r in rows}
    refused = {json.loads(r["record"])["prompt"][-1]["content"] for r in rejects if r["stage"] == "reward_pairs"}
    assert made | refused == set(PROMPTS) and not made & refused
    assert len(rows) > 0
    for r in rows:
        assert PAIRS.problem(r) is None
        assert r["chosen_score"] > r["rejected_score"] and r["score_gap"] == pytest.approx(r["chosen_score"] - r["rejected_score"])
        assert len(r["all_scores"]) == len(r["all_tokens"]) == len(r["all_responses"]) == 4
        assert max(s for s in r["all_scores"] if s is not None) == r["chosen_score"]
        assert r["chosen"][0]["content"] in r["all_responses"] and r["model"] == str(tiny_chatml_path)
        assert r["reward_model_revision"].startswith("local-sha256:") and r["iteration"] == 0
    # provenance: policy and reward model with revisions, sampling, seed
    assert manifest["reward_model"]["revision"].startswith("local-sha256:")
    assert manifest["sampling"]["n"] == 4 and manifest["seed"] == 0
    # easy/hard by the build's median gap, as subsets
    d = manifest["difficulty"]
    assert d["easy"] + d["hard"] == len(rows) and d["quantile"] == 0.5
    easy, hard = _read(out, "easy"), _read(out, "hard")
    assert len(easy) == d["easy"] and len(hard) == d["hard"]
    assert all(r["score_gap"] >= d["threshold"] and r["difficulty"] == "easy" for r in easy)
    assert all(r["score_gap"] < d["threshold"] and r["difficulty"] == "hard" for r in hard)
    # ...and data/ carries the same labels: the manifest's counts are the rows'
    assert [r["difficulty"] for r in rows].count("easy") == d["easy"]
    assert [r["difficulty"] for r in rows].count("hard") == d["hard"]

    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(ds) == len(rows) and ds[0]["chosen"][0]["role"] == "assistant"
    assert ds[0]["prompt"][-1]["role"] == "user"
    # ...and TRL's DPOTrainer trains on it as is (one step on the tiny policy, every column kept)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", use_cpu=True, max_length=256)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_chatml_path), args=args, train_dataset=ds,
                         processing_class=AutoTokenizer.from_pretrained(tiny_chatml_path))
    assert trainer.train().training_loss > 0


def test_pairs_from_magpie_prompts_and_reproducible_shards(tmp_path, chatml_engine, tiny_chatml_path, tiny_rm_chatml_path):
    from roost.building.runner import Build

    magpie = {"max_rounds": 4, "instruction": {"temperature": 1.0, "max_tokens": 48}}
    raw = _recipe(tiny_chatml_path, tiny_rm_chatml_path, {"magpie": magpie})
    raw["output"] = {"num_rows": 12, "shard_size": 6}
    recipe = validate_recipe(raw)
    # shard 1 built alone equals shard 1 built after shard 0: a shard depends on nothing before it
    both = Build(recipe, tmp_path / "both")  # one build, its shards one after another
    both.run_shard(0)
    both.run_shard(1)
    Build(recipe, tmp_path / "alone").run_shard(1)
    name = "train-00001-of-00002.parquet"
    both, alone = pq.read_table(tmp_path / "both" / "data" / name), pq.read_table(tmp_path / "alone" / "data" / name)
    assert both.num_rows > 0
    assert both.column("id").to_pylist() == alone.column("id").to_pylist()
    assert both.column("all_scores").to_pylist() == alone.column("all_scores").to_pylist()
    for row in both.to_pylist():
        assert [m["role"] for m in row["prompt"]] == ["user"] and PAIRS.problem(row) is None


def test_pairs_bad_input_is_one_line_exit_2(tmp_path, prompt_file, tiny_chatml_path, tiny_rm_chatml_path):
    def run(prompts, **synth):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(_recipe(tiny_chatml_path, tiny_rm_chatml_path, prompts, **synth)))
        result = CliRunner().invoke(app, ["build", str(path), "--out", str(tmp_path / "o")])
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        return result.exit_code, " ".join(lines), len(lines)

    no_column = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"text": ["hello"]}), no_column)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist([], schema=pa.schema([pa.field("messages", MESSAGES)])), empty)
    cases = [
        (({"path": str(no_column)},), {}, f"{no_column}: cannot tell what the rows are (columns: text)"),
        (({"path": str(empty)},), {}, "no rows"),
        (({"path": str(tmp_path / "missing")},), {}, "no such file"),
        (({"path": str(prompt_file)},), {"k": 1}, "synthesizer.k"),
        (({"path": str(prompt_file)},), {"length_penalty": -0.1}, "synthesizer.length_penalty"),
        (({"path": str(prompt_file)},), {"reward_model": {"model": str(tiny_chatml_path)}}, "classification head"),
        (({"path": str(prompt_file), "magpie": {}},), {}, "exactly one of prompts.path and prompts.magpie"),
    ]
    for (prompts,), synth, needle in cases:
        code, text, n = run(prompts, **synth)
        assert code == 2 and needle in text and n <= 2, (needle, text)


def test_a_synthesizer_that_needs_sft_rows_refuses_preference_input_in_one_line(tmp_path):
    # Input checking shared by every synthesizer that works through a dataset (SPIN will need
    # gold SFT answers): a preference dataset is named as such, before any model loads.
    from roost.errors import InputError
    from roost.synthesizers.base import DatasetInput, InputRows

    path = tmp_path / "prefs.parquet"
    row = {"prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", "content": "A."}],
           "rejected": [{"role": "assistant", "content": "B."}]}
    pq.write_table(pa.Table.from_pylist([row], schema=pa.schema([pa.field(c, MESSAGES) for c in row])), path)
    with pytest.raises(InputError, match=r"prefs.parquet: preference rows, but the spin synthesizer needs sft rows"):
        InputRows(DatasetInput(path=str(path)), accepts=("sft",), who="spin")
    rows = InputRows(DatasetInput(path=str(path)), accepts=("sft", "preference"), who="reward_pairs")
    ((raw, parsed, problem, rid),) = list(rows.rows(0, 1))
    assert problem is None and parsed.prompt == row["prompt"] and rid
