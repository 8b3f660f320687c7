"""The build end to end: Prefect flow, Parquet output, manifest, resume after a kill, bad recipes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from roost.cli import app
from roost.dataset.writer import DatasetWriter, Reject, read_roost_metadata
from roost.recipe import load_recipe
from roost.schemas import SFT_ROWS

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp_path, model_path, **output) -> Path:
    data = {
        "name": "test-build",
        # same engine identity as the conftest fixture, so the process reuses that engine
        "model": {"model": str(model_path), "max_model_len": 1024, "seed": 0},
        "output": {"num_rows": 30, "shard_size": 10, **output},
        "synthesizer": {
            "kind": "magpie",
            "max_rounds": 6,
            "instruction": {"temperature": 1.0, "max_tokens": 64},
            "response": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 96},
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _all_ids(out: Path) -> list[str]:
    return [i for f in sorted((out / "data").glob("*.parquet")) for i in pq.read_table(f).column("id").to_pylist()]


def test_flow_writes_hub_style_shards_with_provenance_and_resumes(tmp_path, chatml_engine, tiny_chatml_path):
    from roost.flows.build import build_flow

    recipe = load_recipe(_recipe(tmp_path, tiny_chatml_path))
    out = tmp_path / "out"
    manifest = build_flow(recipe, str(out))

    files = sorted(p.name for p in (out / "data").iterdir())
    assert files == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert sorted(p.name for p in (out / "rejects").iterdir()) == files
    assert manifest["status"] == "complete"
    ids = _all_ids(out)
    assert manifest["rows"] == len(ids) > 0 and len(set(ids)) == len(ids)

    # provenance: manifest and every shard's Parquet metadata
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["recipe_hash"] == recipe.fingerprint()
    assert on_disk["revision"].startswith("local-sha256:")
    assert on_disk["sampling"]["instruction"]["max_tokens"] == 64
    assert on_disk["roost_version"] and on_disk["seed"] == 0 and on_disk["recipe"]["name"] == "test-build"
    meta = read_roost_metadata(out / "data" / files[0])
    assert meta["provenance"]["recipe_hash"] == recipe.fingerprint()
    # manifest.json: the shards' file mode (0644 under umask 022, not mkstemp's 0600), and no
    # absolute path of this machine (roost.dataset.portable); the model's identity is its revision
    mode = lambda p: (p.stat().st_mode & 0o777)  # noqa: E731
    assert mode(out / "manifest.json") == mode(out / "data" / files[0])
    text = (out / "manifest.json").read_text()
    assert str(tmp_path) not in text and str(REPO) not in text and str(tiny_chatml_path) not in text
    from roost.dataset.portable import portable_path

    assert on_disk["model"] == on_disk["recipe"]["model"]["model"] == portable_path(str(tiny_chatml_path), out)

    # the datasets library loads it as is
    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(ds) == len(ids) and ds[0]["messages"][0]["role"] == "user"

    # re-running skips every finished shard and rewrites nothing
    mtimes = {f: (out / "data" / f).stat().st_mtime_ns for f in files}
    again = build_flow(recipe, str(out))
    assert again["skipped_shards"] == 3
    assert {f: (out / "data" / f).stat().st_mtime_ns for f in files} == mtimes
    assert _all_ids(out) == ids

    # a recipe that spells out options at their defaults (as a newer roost adds options) is the
    # same recipe: the output still resumes
    raw = yaml.safe_load(_recipe(tmp_path, tiny_chatml_path).read_text())
    raw["synthesizer"].update(extra_stop=[], n_turns=1, task=None)
    raw["model"].update(trust_remote_code=False, throughput={"max_num_seqs": 64})
    raw["iteration"] = 0
    spelled = tmp_path / "spelled.yaml"
    spelled.write_text(yaml.safe_dump(raw))
    assert build_flow(load_recipe(spelled), str(out))["skipped_shards"] == 3


def test_fingerprint_ignores_new_options_at_their_default_and_throughput(tmp_path, tiny_chatml_path):
    from roost.recipe import Recipe
    from roost.synthesizers.magpie import MagpieConfig

    recipe = load_recipe(_recipe(tmp_path, tiny_chatml_path))

    class NextMagpieConfig(MagpieConfig):  # what a later version adds: a new option, off by default
        dedup_across_shards: bool = False

    newer = recipe.model_copy(update={"synthesizer": NextMagpieConfig(**recipe.synthesizer.model_dump())})
    assert newer.fingerprint() == recipe.fingerprint()
    turned_on = recipe.model_copy(update={"synthesizer": NextMagpieConfig(**recipe.synthesizer.model_dump(),
                                                                         dedup_across_shards=True)})
    assert turned_on.fingerprint() != recipe.fingerprint()
    faster = recipe.model_copy(update={"model": recipe.model.model_copy(update={"throughput": {"max_num_seqs": 8}})})
    assert faster.fingerprint() == recipe.fingerprint()
    hotter = Recipe.model_validate({**recipe.model_dump(), "synthesizer": {
        **recipe.synthesizer.model_dump(), "instruction": {"temperature": 0.5, "max_tokens": 64}}})
    assert hotter.fingerprint() != recipe.fingerprint()


def test_recipes_in_the_0_1_shape_still_load_with_the_same_meaning(tmp_path, tiny_chatml_path):
    new = yaml.safe_load(_recipe(tmp_path, tiny_chatml_path).read_text())
    old = {**new, "synthesizer": "magpie", "magpie": {k: v for k, v in new["synthesizer"].items() if k != "kind"}}
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    assert load_recipe(path).fingerprint() == load_recipe(_recipe(tmp_path, tiny_chatml_path)).fingerprint()


def test_user_errors_are_one_line_exit_2_bugs_keep_their_traceback(tmp_path, tiny_chatml_path, monkeypatch):
    recipe = _recipe(tmp_path, tiny_chatml_path)
    cases = [
        (["--model", "no-such-org/no-such-model-xyz"], "no-such-org/no-such-model-xyz"),
        (["--model", str(tmp_path / "nowhere")], "no such directory"),
        (["--model", str(tmp_path)], "not a model directory"),
        (["--out", "/proc/roost-cannot-write-here"], "cannot write there"),
    ]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for args, needle in cases:
        out = [] if "--out" in args else ["--out", str(tmp_path / "o")]
        result = CliRunner().invoke(app, ["build", str(recipe), *args, *out])
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert len(lines) <= 2 and needle in " ".join(lines), (args, result.output)

    # an internal bug is not dressed up as a user error: it propagates with its traceback
    from roost.building.runner import Build

    def broken(*a, **k):
        raise KeyError("internal")

    monkeypatch.setattr(Build, "check_resumable", broken)
    result = CliRunner().invoke(app, ["build", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


def test_output_of_another_recipe_is_refused(tmp_path, tiny_chatml_path):
    recipe = _recipe(tmp_path, tiny_chatml_path)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "manifest.json").write_text(json.dumps({"recipe_hash": "something-else"}))
    result = CliRunner().invoke(app, ["build", str(recipe), "--out", str(out)])
    assert result.exit_code == 2
    assert "different recipe" in result.output


def _step_dpo_recipe(tmp_path, model_path) -> Path:
    """Step-DPO over 60 shipped problems, 6 shards of 10."""
    data = {"name": "test-step-dpo", "model": {"model": str(model_path), "max_model_len": 1024, "seed": 0},
            "output": {"num_rows": 60, "shard_size": 10},
            "synthesizer": {"kind": "step_dpo", "problems": {"path": str(REPO / "data" / "arithmetic_problems.jsonl")},
                            "samples": 3, "sampling": {"max_tokens": 160}, "locate": {"rollouts": 4},
                            "rectify": {"samples": 4}}}
    path = tmp_path / "step-dpo.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _pairs_recipe(tmp_path, model_path, reward_path) -> Path:
    """Reward-ranked pairs over 60 seed prompts, 6 shards of 10."""
    import pyarrow as pa

    from roost.schemas import MESSAGES
    from roost.tiny.models import load_seed_conversations

    prompts = tmp_path / "prompts.parquet"
    rows = [{"messages": [c[0]]} for c in load_seed_conversations()[:60]]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([pa.field("messages", MESSAGES)])), prompts)
    data = {"name": "test-pairs", "model": {"model": str(model_path), "max_model_len": 1024, "seed": 0},
            "output": {"shard_size": 10},
            "synthesizer": {"kind": "reward_pairs", "prompts": {"path": str(prompts)}, "k": 3,
                            "sampling": {"max_tokens": 48}, "reward_model": {"model": str(reward_path)}}}
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _rows_but_difficulty(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "difficulty"} for r in pq.read_table(path).to_pylist()]


@pytest.mark.parametrize("kind", ["magpie", "reward_pairs", "step_dpo"])
def test_killed_build_resumes_without_redoing_or_duplicating(tmp_path, tiny_chatml_path, tiny_rm_chatml_path, kind,
                                                             request):
    if kind == "magpie":
        recipe = _recipe(tmp_path, tiny_chatml_path, num_rows=60, shard_size=10)
    elif kind == "reward_pairs":
        recipe = _pairs_recipe(tmp_path, tiny_chatml_path, tiny_rm_chatml_path)
    else:
        recipe = _step_dpo_recipe(tmp_path, request.getfixturevalue("tiny_math_path"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "roost.cli", "build", str(recipe), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "data" / "train-00000-of-00006.parquet"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), "first shard never appeared"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: CLI and vLLM engine processes
    proc.wait()
    done_before = sorted(p.name for p in (out / "data").glob("*.parquet"))
    assert len(done_before) < 6, "killed too late to test resuming"
    mtimes = {f: (out / "data" / f).stat().st_mtime_ns for f in done_before}
    before = {f: _rows_but_difficulty(out / "data" / f) for f in done_before}
    # no half-written file is visible where readers look
    assert all(not p.name.startswith(".") for p in (out / "data").iterdir())

    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    # quiet by default: library logs went to the log file, not the terminal
    assert " INFO " not in result.stdout + result.stderr
    assert "vllm" in (out / "logs" / "roost.log").read_text()
    assert f"skipped {len(done_before)} finished shard(s)" in result.stdout
    assert len(list((out / "data").glob("*.parquet"))) == 6
    if kind == "reward_pairs":
        # the build's end labels every row easy/hard by the quantile cut of all its pairs: finished
        # shards get that label written in (atomically), their rows otherwise as they were
        assert {f: _rows_but_difficulty(out / "data" / f) for f in done_before} == before
        labels = [r["difficulty"] for f in (out / "data").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
        assert labels and set(labels) <= {"easy", "hard"}
    else:
        assert {f: (out / "data" / f).stat().st_mtime_ns for f in done_before} == mtimes
    ids = _all_ids(out)
    assert len(ids) == len(set(ids))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rows"] == len(ids)
    if kind == "reward_pairs":  # one pair or one reject per prompt: no prompt lost or doubled
        rejects = [r for f in (out / "rejects").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
        assert len(ids) + len(rejects) == 60 and manifest["rejects"] == len(rejects)
    if kind == "step_dpo":  # every shard's subsets are whole too, and each solution has one PRM row at most
        for sub in ("prm", "step_dpo"):
            assert len(list((out / sub).glob("*.parquet"))) == 6
        prm = [r for f in (out / "prm").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
        assert prm and sum(s["solutions"] for s in manifest["shards"].values()) >= len(prm)


def test_invalid_rows_go_to_rejects_on_write(tmp_path):
    from roost.schemas import row_id

    good_msgs = [{"role": "user", "content": "Hi there?"}, {"role": "assistant", "content": "Hello."}]
    good = {"id": row_id(good_msgs), "messages": good_msgs}
    swapped = [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi there?"}]
    rows = [
        good,
        {"id": row_id(swapped), "messages": swapped},
        {"id": "not-the-hash", "messages": good_msgs},
        {**good, "n_turns": "two"},
        {"messages": good_msgs},
    ]
    writer = DatasetWriter(tmp_path, SFT_ROWS, num_shards=1)
    stats = writer.write_shard(0, rows, [Reject("magpie.instruction", "empty", {"raw_text": ""})], {})
    assert stats.rows == 1
    assert stats.rejects_by_reason == {"invalid_row": 4, "empty": 1}
    rejects = pq.read_table(writer.rejects_path(0)).to_pylist()
    details = " | ".join(r["detail"] or "" for r in rejects)
    assert "expected role 'user'" in details
    assert "id: does not match content" in details
    assert "type error" in details
    assert "missing required field(s): id" in details


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"synthesizer": {"instruction": {"temperature": -1}}}, "synthesizer.instruction.temperature"),
        ({"output": {"num_rows": 0}}, "output.num_rows"),
        ({"synthesizer": {"n_turn": 2}}, "synthesizer.n_turn"),
        ({"synthesizer": {"kind": "magpi"}}, "synthesizer"),
        ({"synthesizer": {"system_prompt": {"a": {"text": "x", "weight": 0}}}}, "synthesizer.system_prompt"),
        ({"model": {"seed": "abc"}}, "model.seed"),
    ],
)
def test_bad_recipe_is_one_line_naming_the_field_exit_2(tmp_path, patch, field):
    data = yaml.safe_load((REPO / "recipes" / "magpie.yaml").read_text())
    for key, value in patch.items():
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, dict) and isinstance(data[key].get(k), dict):
                    data[key][k].update(v)
                else:
                    data[key][k] = v
        else:
            data[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["build", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(" ".join(lines)) < 300
    assert f"field '{field}" in " ".join(lines)


def test_unreadable_recipes_exit_2(tmp_path):
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("name: [unclosed\n")
    for path, needle in ((bad_yaml, "not valid YAML"), (tmp_path / "missing.yaml", "no such file")):
        result = CliRunner().invoke(app, ["build", str(path)])
        assert result.exit_code == 2 and needle in result.output


def test_shipped_recipes_are_valid():
    from roost.recipe import load_curate_recipe, load_eval_recipe

    for path in (REPO / "recipes").glob("*.yaml"):
        kind = next((k for k in ("curate", "eval") if path.name.startswith(k)), "build")
        recipe = {"curate": load_curate_recipe, "eval": load_eval_recipe, "build": load_recipe}[kind](path)
        assert recipe.fingerprint()


def test_a_shard_does_not_depend_on_what_ran_before_it(tmp_path, chatml_engine, tiny_chatml_path):
    """Shard 2 built alone equals shard 2 built after shards 0 and 1 (and after unrelated
    generation): each shard and each engine call has its own derived seed."""
    from roost.building.runner import Build
    from roost.engines import Sampling

    recipe = load_recipe(_recipe(tmp_path, tiny_chatml_path))
    build = Build(recipe, tmp_path / "all")
    for i in range(3):
        build.run_shard(i)
    chatml_engine.generate(["<|im_start|>user\n"] * 7, Sampling(max_tokens=20, temperature=1.0))  # disturb the RNG
    Build(recipe, tmp_path / "alone").run_shard(2)
    name = "train-00002-of-00003.parquet"
    after, alone = (pq.read_table(tmp_path / d / "data" / name).to_pylist() for d in ("all", "alone"))
    assert len(after) > 0 and after == alone
    rejected = (pq.read_table(tmp_path / d / "rejects" / name).column("record").to_pylist() for d in ("all", "alone"))
    assert next(rejected) == next(rejected)
