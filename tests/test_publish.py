"""`roost publish`: the staged folder read back by `datasets` and huggingface_hub's card
classes offline, and the upload against tests/fake_hub.py (a loopback HTTP server standing in
for the Hub) — one commit, the bytes of the dry-run folder, no commit when nothing changed,
and the token nowhere in what the run writes.

The outputs are made here (CI has no out/): shards written by roost's own DatasetWriter with
the real row schemas and manifests shaped like a real build's, and one real `roost curate`.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from roost.cli import app
from roost.dataset.writer import DatasetWriter, Reject, base_manifest, summarize, write_manifest
from roost.schemas import PREFERENCE_ROWS, SFT_ROWS, row_id
from tests.fake_hub import FakeHub

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_roostPlanted" + secrets.token_hex(12)  # planted: must appear nowhere the runs write
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "max_tokens": 96}


# -- small roost outputs, written by roost's writer ---------------------------------------

def _conv(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question number {i}: how do I sort a list of {i} numbers in Python?"},
            {"role": "assistant", "content": f"Call sorted(xs) on the {i} numbers: it returns a new ordered list "
                                          "and leaves the original one as it was."}]


def _manifest(kind: str, synthesizer: str, name: str, stats, shards: int, **extra) -> dict:
    recipe = {"name": name, "model": {"model": "org/tiny-policy", "revision": None, "seed": 0},
              "synthesizer": {"kind": synthesizer}, "output": {"num_rows": None, "shard_size": 8, "split": "train"},
              "iteration": 0, "loop": None}
    return base_manifest(kind, recipe, hashlib.sha256(name.encode()).hexdigest()[:16], status="complete",
                         schema=kind, split="train", num_shards=shards, synthesizer=synthesizer,
                         model="org/tiny-policy", seed=0, iteration=0, revision="0123abcd",
                         engine={"engine": "vllm", "model": "org/tiny-policy", "revision": "0123abcd"},
                         sampling=SAMPLING, **summarize(stats), **extra)


def make_sft(root: Path, n: int = 20, shards: int = 2) -> Path:
    writer = DatasetWriter(root, SFT_ROWS, num_shards=shards)
    stats = []
    for s in range(shards):
        rows = [{"id": row_id(_conv(i)), "messages": _conv(i), "n_turns": 1, "language": "en", "model": "org/tiny-policy",
                 "pre_query_template": "<|im_start|>user\n", "input_tokens": 10 + i, "output_tokens": 20 + i}
                for i in range(s * n // shards, (s + 1) * n // shards)]
        rejects = [Reject("generate", "empty", {"i": s}), Reject("generate", "truncated", {"i": s}, detail="max_tokens")]
        stats.append(writer.write_shard(s, rows, rejects, {"synthesizer": "magpie"}))
    write_manifest(root, _manifest("sft", "magpie", "sft-test", stats, shards))
    return root


def _pair(i: int) -> dict:
    prompt = [{"role": "user", "content": f"Which is larger, {i} or {i + 1}? Explain briefly."}]
    chosen = [{"role": "assistant", "content": f"{i + 1} is larger than {i} by one."}]
    rejected = [{"role": "assistant", "content": f"{i} is larger, I think."}]
    return {"id": row_id(prompt, chosen, rejected), "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "method": "reward_ranked", "model": "org/tiny-policy", "iteration": 0}


SCORED = PREFERENCE_ROWS.extend([pa.field("score_gap", pa.float64())])


def make_pairs(root: Path, n: int = 24, shards: int = 3) -> Path:
    """Reward-ranked pairs with easy/ and hard/ subsets and no rejects (so no rejects config)."""
    writer = DatasetWriter(root, SCORED, num_shards=shards)
    stats = []
    for s in range(shards):
        rows = [{**_pair(i), "score_gap": float(i % 5)} for i in range(s * n // shards, (s + 1) * n // shards)]
        easy = [r for r in rows if r["score_gap"] >= 2]
        hard = [r for r in rows if r["score_gap"] < 2]
        stats.append(writer.write_shard(s, rows, [], {"synthesizer": "reward_pairs"},
                                        subsets={"easy": (SCORED.arrow, easy), "hard": (SCORED.arrow, hard)}))
    subsets = {"easy": "easy/train-*.parquet", "hard": "hard/train-*.parquet"}
    write_manifest(root, _manifest("preference", "reward_pairs", "pairs-test", stats, shards,
                                   reward_model={"kind": "reward_model", "model": "org/tiny-rm", "revision": "feed01"},
                                   difficulty={"threshold": 2.0, "subsets": subsets}))
    return root


STEP_DPO = pa.schema([("prompt", pa.string()), ("initial_reason_steps", pa.string()), ("chosen", pa.string()),
                      ("rejected", pa.string()), ("answer", pa.string())])
PRM = pa.schema([("prompt", pa.string()), ("completions", pa.list_(pa.string())), ("labels", pa.list_(pa.bool_()))])


def make_step_dpo(root: Path, shards: int = 3) -> Path:
    """Pairs plus step_dpo/ and prm/ subsets; shard 1 has no step_dpo rows (an empty file)."""
    writer = DatasetWriter(root, PREFERENCE_ROWS, num_shards=shards)
    stats = []
    for s in range(shards):
        rows = [{**_pair(i), "method": "step_dpo"} for i in range(s * 4, s * 4 + 4)]
        step = [] if s == 1 else [{"prompt": f"What is {i} + 1?", "initial_reason_steps": "Step 1:",
                                   "chosen": f" {i} + 1 = {i + 1}.", "rejected": f" {i} + 1 = {i + 2}.",
                                   "answer": str(i + 1)} for i in range(s * 4, s * 4 + 4)]
        prm = [{"prompt": f"What is {i} + 1?", "completions": ["Step 1: add one.", f"The answer is {i + 1}."],
                "labels": [True, i % 2 == 0]} for i in range(s * 4, s * 4 + 5)]
        rejects = [Reject("solutions", "unsolved_problem", {"i": s})]
        stats.append(writer.write_shard(s, rows, rejects, {"synthesizer": "step_dpo"},
                                        subsets={"step_dpo": (STEP_DPO, step), "prm": (PRM, prm)}))
    write_manifest(root, _manifest("preference", "step_dpo", "step-dpo-test", stats, shards,
                                   subsets={"step_dpo": "step_dpo/train-*.parquet", "prm": "prm/train-*.parquet"}))
    return root


def make_iterate(root: Path) -> Path:
    """An `roost iterate` OUT: two SPIN rounds, each a build in iter-<t>/data."""
    steps = []
    for t in range(2):
        data = root / f"iter-{t}" / "data"
        writer = DatasetWriter(data, PREFERENCE_ROWS, num_shards=1)
        rows = [{**_pair(i + 10 * t), "method": "spin", "iteration": t} for i in range(6 + t)]
        stats = [writer.write_shard(0, rows, [Reject("generate", "empty", {"t": t})], {"synthesizer": "spin"})]
        model = "org/tiny-policy" if t == 0 else str(root / "iter-0" / "model")
        write_manifest(data, {**_manifest("preference", "spin", "spin-test", stats, 1), "iteration": t, "model": model})
        steps.append({"iteration": t, "model": model, "data": str(data), "rows": len(rows),
                      "output": str(root / f"iter-{t}" / "model"), "status": "trained", "exit_code": 0})
    (root / "iterations.json").write_text(json.dumps(
        {"recipe_hash": "abc", "recipe": {"name": "spin-test", "loop": {"iterations": 2}}, "roost_version": "0.1.0",
         "iterations": steps, "status": "complete", "final_model": steps[-1]["output"]}, indent=2))
    return root


# -- helpers --------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _hub_env(tmp_path, monkeypatch):
    """The planted token in HF_TOKEN, no login cache, the datasets cache in tmp, and the Hub
    client allowed to make requests (conftest sets HF_HUB_OFFLINE=1 for the model tests)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-home" / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


def _invoke(*args: str):
    return CliRunner().invoke(app, ["publish", *map(str, args)])


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of OUT but its logs: bytes and mtime (publish must change neither)."""
    return {k: (v, (out / k).stat().st_mtime_ns) for k, v in _tree(out).items() if not k.startswith("logs/")}


def _no_token(*texts) -> None:
    for text in texts:
        blob = text if isinstance(text, bytes) else str(text).encode()
        assert TOKEN.encode() not in blob


def _load(folder: Path, config: str):
    import datasets

    return datasets.load_dataset(str(folder), config, split="train")


def _card(folder: Path):
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    card = DatasetCard.load(folder / "README.md")
    assert isinstance(card.data, DatasetCardData)
    configs = MetadataConfigs.from_dataset_card_data(card.data)  # validates the configs' shapes
    return card, configs


def _dry_run(out: Path, dest: Path, repo: str = "roost-test/data", *extra: str) -> None:
    result = _invoke(out, "--repo", repo, "--dry-run", dest, *extra)
    assert result.exit_code == 0, result.output + result.stderr
    _no_token(result.output, result.stderr)


# -- the staged folder, offline -------------------------------------------------------------

def test_sft_dry_run_loads_by_its_configs_and_leaves_out_untouched(tmp_path):
    out = make_sft(tmp_path / "sft")
    before = _snapshot(out)
    dest = tmp_path / "staged"
    _dry_run(out, dest, "roost-test/sft", "--license", "apache-2.0")

    assert _snapshot(out) == before
    files = set(_tree(dest))
    assert {"README.md", "manifest.json", "roost_recipe.yaml"} <= files
    assert {f for f in files if f.endswith(".parquet")} == {
        f"{d}/train-0000{i}-of-00002.parquet" for d in ("data", "rejects") for i in range(2)}
    assert any(f.startswith("figures/") and f.endswith(".png") for f in files)
    for f in ("data/train-00000-of-00002.parquet", "manifest.json"):  # hard links, not copies
        assert (dest / f).stat().st_ino == (out / f).stat().st_ino

    card, configs = _card(dest)
    assert list(configs) == ["default", "rejects"]
    assert configs["default"]["data_files"] == [{"split": "train", "path": "data/train-*"}]
    assert card.data.license == "apache-2.0" and card.data.language == ["en"]
    assert card.data.size_categories == ["n<1K"] and card.data.task_categories == ["text-generation"]
    assert {"synthetic", "roost", "magpie", "sft"} <= set(card.data.tags)
    body = card.text
    assert "org/tiny-policy" in body and "0123abcd" in body  # policy and its revision
    assert 'load_dataset("roost-test/sft", "default", split="train")' in body and "SFTTrainer" in body
    assert body.count("```json") >= 3  # the sampling block and three example rows
    assert "figures/" in body

    rows = _load(dest, "default")
    assert len(rows) == 20 and rows.column_names[:2] == ["id", "messages"]
    assert rows[0]["messages"][0]["role"] == "user"
    rejects = _load(dest, "rejects")
    assert len(rejects) == 4 and {"stage", "reason", "record"} <= set(rejects.column_names)

    # deterministic: staging again gives the same bytes (so a re-publish commits nothing)
    first = _tree(dest)
    _dry_run(out, dest, "roost-test/sft", "--license", "apache-2.0")
    assert _tree(dest) == first


def test_preference_dry_run_has_easy_and_hard_configs_and_no_empty_rejects(tmp_path):
    out = make_pairs(tmp_path / "pairs")
    dest = tmp_path / "staged"
    _dry_run(out, dest, "roost-test/pairs")
    card, configs = _card(dest)
    assert list(configs) == ["default", "easy", "hard"]  # rejects/ holds no rows: no config
    assert card.data.license == "other"
    assert {"synthetic", "roost", "dpo", "reward-ranked"} <= set(card.data.tags)
    assert "org/tiny-rm" in card.text and "feed01" in card.text and "DPOTrainer" in card.text
    counts = {c: len(_load(dest, c)) for c in configs}
    assert counts == {"default": 24, "easy": 14, "hard": 10}
    assert _load(dest, "easy").column_names == SCORED.arrow.names


def test_step_dpo_dry_run_has_step_dpo_and_prm_configs(tmp_path):
    out = make_step_dpo(tmp_path / "step")
    dest = tmp_path / "staged"
    _dry_run(out, dest, "roost-test/step")
    card, configs = _card(dest)
    assert list(configs) == ["default", "step_dpo", "prm", "rejects"]
    assert {"step-dpo", "dpo", "prm"} <= set(card.data.tags)
    prm = _load(dest, "prm")
    assert len(prm) == 15 and prm.column_names == ["prompt", "completions", "labels"]
    assert prm[0]["labels"] == [True, True]
    step = _load(dest, "step_dpo")  # one of its three files is empty
    assert len(step) == 8 and step.column_names == STEP_DPO.names
    assert len(_load(dest, "default")) == 12 and len(_load(dest, "rejects")) == 3


def test_curated_output_from_a_real_curate_run(tmp_path):
    from roost.curation.runner import curate
    from roost.recipe import CurateRecipe

    source = make_sft(tmp_path / "sft", n=12)
    out = tmp_path / "curated"
    recipe = CurateRecipe.model_validate({"name": "curate-test", "input": {"path": str(source)},
                                          "stages": [{"kind": "heuristics"}, {"kind": "exact_dedup"}]})
    manifest = curate(recipe, out, progress=False)
    dest = tmp_path / "staged"
    _dry_run(out, dest, "roost-test/curated")
    card, configs = _card(dest)
    assert {"roost", "curated", "sft", "magpie", "synthetic"} <= set(card.data.tags)
    assert len(_load(dest, "default")) == manifest["rows"]
    assert "exact_dedup" in card.text


def test_a_curated_card_names_the_model_and_recipe_that_made_its_input(tmp_path):
    from roost.curation.runner import curate
    from roost.recipe import CurateRecipe

    source = make_sft(tmp_path / "sft", n=12)
    out = tmp_path / "curated"
    recipe = CurateRecipe.model_validate({"name": "curate-test", "input": {"path": str(source / "data")},
                                          "stages": [{"kind": "exact_dedup"}]})
    curate(recipe, out, progress=False)
    prov = json.loads((out / "manifest.json").read_text())["input_provenance"]
    assert (prov["kind"], prov["synthesizer"], prov["model"], prov["revision"]) == ("build", "magpie", "org/tiny-policy", "0123abcd")
    assert prov["recipe"] == {"name": "sft-test", "hash": hashlib.sha256(b"sft-test").hexdigest()[:16]}

    dest = tmp_path / "staged"
    _dry_run(out, dest, "roost-test/curated")
    card, _ = _card(dest)
    made = next(line for line in card.text.splitlines() if "made by `roost build`" in line)
    assert "`magpie` synthesizer" in made and "recipe `sft-test`" in made and "policy `org/tiny-policy`" in made
    assert "revision `0123abcd`" in made
    assert "| input: policy | `org/tiny-policy` | `0123abcd` |" in card.text  # in the models table too

    # a curation of that curation names the build at the start of the chain, and the curation between
    again = tmp_path / "again"
    curate(CurateRecipe.model_validate({"name": "curate-again", "input": {"path": str(out)},
                                        "stages": [{"kind": "exact_dedup"}]}), again, progress=False)
    _dry_run(again, tmp_path / "staged-again", "roost-test/again")
    text = _card(tmp_path / "staged-again")[0].text
    assert "itself a `roost curate` output: recipe `curate-test`" in text and "recipe `sft-test`" in text


def _sft_of(root: Path, texts: list[str], shards: int = 2) -> Path:
    writer = DatasetWriter(root, SFT_ROWS, num_shards=shards)
    stats = []
    for s in range(shards):
        rows = []
        for i in range(s, len(texts), shards):
            conv = [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": texts[i]}, {"role": "assistant", "content": texts[i] + " " + str(i)}]
            rows.append({"id": row_id(conv), "messages": conv, "n_turns": 1, "language": None, "model": "org/tiny-policy"})
        stats.append(writer.write_shard(s, rows, [], {"synthesizer": "magpie"}))
    write_manifest(root, _manifest("sft", "magpie", root.name, stats, shards))
    return root


@pytest.mark.parametrize("texts, expected", [
    (["用一句话解释量子纠缠。", "请写一首关于秋天的诗。", "如何在 Python 中反转列表？"] * 4, ["zh"]),
    (["量子もつれを一文で説明してください。", "秋についての詩を書いてください。", "東京都の人口を教えてください。"] * 4, ["ja"]),
    (["用一句话解释量子纠缠。"] * 6 + ["What is the difference between a list and a tuple?"] * 4 + ["今日は何をしますか？"] * 2,
     ["zh", "en", "ja"]),
])
def test_card_language_is_read_from_the_rows_text(tmp_path, texts, expected):
    out = _sft_of(tmp_path / "rows", texts)
    dest = tmp_path / "staged"
    _dry_run(out, dest, "roost-test/lang")
    assert _card(dest)[0].data.language == expected


def test_no_absolute_path_in_the_staged_card_manifests_or_recipe(tmp_path, monkeypatch):
    """An output written before paths were recorded portably (absolute model, input and cache
    paths in its manifest), and an iterate loop (absolute paths in iterations.json and its
    training commands): the staged folder holds none of this machine's paths."""
    monkeypatch.chdir(tmp_path)  # a working directory that holds none of them
    model = tmp_path / "models" / "tiny-policy"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    old = make_sft(tmp_path / "old", n=6)
    m = json.loads((old / "manifest.json").read_text())
    m.pop("paths", None)
    m["recipe"]["model"]["model"] = m["model"] = m["engine"]["model"] = str(model)
    m["cache"] = {"dir": str(old / ".cache")}
    (old / "manifest.json").write_text(json.dumps(m, indent=2))  # as an older roost wrote it
    loop = make_iterate(tmp_path / "loop")
    steps = json.loads((loop / "iterations.json").read_text())
    steps["iterations"][0]["command"] = f"python train.py --data {loop}/iter-0/data --model {model} --output {loop}/iter-0/model"
    (loop / "iterations.json").write_text(json.dumps(steps, indent=2))

    machine = [str(tmp_path), str(REPO), str(Path.home())]
    for out, repo in ((old, "roost-test/old"), (loop, "roost-test/loop")):
        dest = tmp_path / f"staged-{out.name}"
        monkeypatch.chdir(REPO)  # publish from elsewhere than where it was made
        _dry_run(out, dest, repo)
        for name in ("README.md", "roost_recipe.yaml", "manifest.json", "iterations.json", "iter-1/manifest.json"):
            if (dest / name).exists():
                text = (dest / name).read_text()
                assert not [p for p in machine if p in text], (name, [p for p in machine if p in text])
    staged = json.loads((tmp_path / "staged-old" / "manifest.json").read_text())
    assert staged["model"] == "../models/tiny-policy" and staged["cache"]["dir"] == ".cache"  # beside OUT; in it
    assert (tmp_path / "staged-old" / "manifest.json").stat().st_ino != (old / "manifest.json").stat().st_ino  # a copy
    assert json.loads((old / "manifest.json").read_text()) == m  # OUT untouched
    card = (tmp_path / "staged-loop" / "README.md").read_text()
    assert "`iter-0/model`" in card  # the iterations table: paths relative to the loop's folder
    loop_json = json.loads((tmp_path / "staged-loop" / "iterations.json").read_text())
    assert loop_json["iterations"][0]["command"] == ("python train.py --data iter-0/data --model ../models/tiny-policy "
                                                     "--output iter-0/model")


def test_iterate_output_publishes_every_round_default_is_the_last(tmp_path):
    out = make_iterate(tmp_path / "loop")
    dest = tmp_path / "staged"
    _dry_run(out, dest, "roost-test/spin")
    card, configs = _card(dest)
    assert list(configs) == ["default", "iter-0", "iter-0-rejects", "iter-1", "iter-1-rejects"]
    assert configs["default"]["data_files"] == [{"split": "train", "path": "iter-1/data/train-*"}]
    assert {"iterations.json", "iter-0/manifest.json", "iter-1/manifest.json"} <= set(_tree(dest))
    assert {"spin", "iterative"} <= set(card.data.tags)
    assert [len(_load(dest, c)) for c in ("default", "iter-0", "iter-1")] == [7, 6, 7]


# -- bad input: one line, exit 2 ------------------------------------------------------------

def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output + result.stderr
    lines = result.stderr.strip().splitlines()  # progress lines may come first; the error is one line, last
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.stderr, result.stderr
    _no_token(result.output, result.stderr)
    return errors[0]


def test_bad_input_is_one_line_exit_2(tmp_path):
    out = make_sft(tmp_path / "sft")
    stray = tmp_path / "stray"
    stray.mkdir()
    assert "no manifest.json" in _one_line_error(_invoke(stray, "--repo", "a/b", "--dry-run", tmp_path / "d"))
    assert "no such directory" in _one_line_error(_invoke(tmp_path / "nope", "--repo", "a/b"))
    assert not (tmp_path / "nope").exists()  # no logs dir made for a bad OUT

    running = tmp_path / "running"
    make_sft(running)
    manifest = json.loads((running / "manifest.json").read_text())
    (running / "manifest.json").write_text(json.dumps({**manifest, "status": "partial"}))
    assert "not complete" in _one_line_error(_invoke(running, "--repo", "a/b", "--dry-run", tmp_path / "d"))

    for repo in ("just-a-name", "a/b/c", "org/na me", "-org/x", "org/x--y"):
        assert "expected ORG/NAME" in _one_line_error(_invoke(out, "--repo", repo, "--dry-run", tmp_path / "d"))
    assert "must be outside" in _one_line_error(_invoke(out, "--repo", "a/b", "--dry-run", out / "stage"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    assert "not an earlier" in _one_line_error(_invoke(out, "--repo", "a/b", "--dry-run", tmp_path / "busy"))
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_missing_token_is_one_line_exit_2(tmp_path, monkeypatch):
    out = make_sft(tmp_path / "sft")
    monkeypatch.delenv("HF_TOKEN")
    with FakeHub(TOKEN) as hub:
        line = _one_line_error(_invoke(out, "--repo", "roost-test/sft", "--endpoint", hub.url))
        assert "no Hugging Face token" in line and not hub.requests


# -- upload, against the fake Hub -----------------------------------------------------------

def _files_without_gitattributes(hub: FakeHub, repo: str, branch: str = "main") -> dict[str, bytes]:
    return {k: v for k, v in hub.files(repo, branch).items() if k != ".gitattributes"}


def test_upload_is_one_commit_of_the_dry_run_bytes_and_a_rerun_commits_nothing(tmp_path):
    """The CLI in a real subprocess (HF_ENDPOINT honoured, real stdout/stderr) twice, then
    everything the runs wrote grepped for the planted token."""
    out = make_step_dpo(tmp_path / "step")
    dest = tmp_path / "staged"
    _dry_run(out, dest, "roost-test/step")
    before = _snapshot(out)
    env = {**os.environ, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = tmp_path / "fake-hub.log"
    with FakeHub(TOKEN, log) as hub:
        env["HF_ENDPOINT"] = hub.url
        runs = [subprocess.run([sys.executable, "-m", "roost.cli", "publish", str(out), "--repo", "roost-test/step"],
                               env=env, capture_output=True, cwd=REPO, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr.decode()
    first = [c for c in hub.calls()[:7]]
    assert first == ["GET info", "POST create", "GET revision", "GET tree", "POST validate", "POST preupload",
                     "POST commit"]
    assert hub.calls()[7:] == ["GET info", "POST create", "GET revision", "GET tree", "POST validate",
                               "POST preupload", "GET revision"]  # nothing changed: no commit request
    assert [r.status for r in hub.requests if r.route == "create"] == [200, 409]
    assert all(r.auth == "ok" for r in hub.requests if r.route != "agents")
    commits = hub.commits("roost-test/step")
    assert len(commits) == 2  # the repo's initial commit and roost's one
    assert _files_without_gitattributes(hub, "roost-test/step") == _tree(dest)  # byte for byte
    assert b"published: commit" in runs[0].stdout and b"nothing changed" in runs[1].stdout
    assert _snapshot(out) == before
    assert not list(tmp_path.glob(".roost-publish-*"))  # the scratch staging is gone

    written = [runs[0].stdout, runs[0].stderr, runs[1].stdout, runs[1].stderr, log.read_bytes(),
               *_tree(dest).values(), *_tree(out / "logs").values(),
               *(r.body for r in hub.requests)]
    _no_token(*written)


def test_revision_branch_stale_shards_private_and_endpoint_option(tmp_path):
    sft = make_sft(tmp_path / "sft", shards=2)
    fewer = make_sft(tmp_path / "sft-one-shard", n=10, shards=1)
    with FakeHub(TOKEN) as hub:
        result = _invoke(sft, "--repo", "roost-test/x", "--revision", "dev", "--private", "--endpoint", hub.url)
        assert result.exit_code == 0, result.output + result.stderr
        assert "POST branch" in hub.calls() and hub.repos["roost-test/x"].private
        assert set(hub.files("roost-test/x", "main")) == {".gitattributes"}  # main untouched
        assert "data/train-00001-of-00002.parquet" in hub.files("roost-test/x", "dev")

        # a smaller output to the same branch: the old shards go in the same (one) commit
        result = _invoke(fewer, "--repo", "roost-test/x", "--revision", "dev", "--endpoint", hub.url)
        assert result.exit_code == 0, result.output + result.stderr
        _dry_run(fewer, tmp_path / "staged", "roost-test/x")
        assert _files_without_gitattributes(hub, "roost-test/x", "dev") == _tree(tmp_path / "staged")
        last = hub.commits("roost-test/x", "dev")[-1]
        assert "deletedFile:data/train-00001-of-00002.parquet" in last["operations"]
        assert len(hub.commits("roost-test/x", "dev")) == 3
        _no_token(result.output, result.stderr)


def test_failed_commit_says_what_was_uploaded_exit_1(tmp_path):
    out = make_sft(tmp_path / "sft")
    _dry_run(out, tmp_path / "staged", "roost-test/sft")
    n = len(_tree(tmp_path / "staged"))
    with FakeHub(TOKEN) as hub:
        hub.fail["commit"] = 500
        line = _one_line_error(_invoke(out, "--repo", "roost-test/sft", "--endpoint", hub.url), code=1)
        assert "repo roost-test/sft created" in line and "HTTP 500" in line and "nothing uploaded" in line
        assert f"commit of {n} file change(s) to roost-test/sft@main failed" in line
        assert len(hub.commits("roost-test/sft")) == 1  # only the repo's initial commit
        # fixed server: the same command goes through
        del hub.fail["commit"]
        assert _invoke(out, "--repo", "roost-test/sft", "--endpoint", hub.url).exit_code == 0
        assert len(hub.commits("roost-test/sft")) == 2


def test_refused_token_is_one_line_exit_2_without_the_token(tmp_path, monkeypatch):
    out = make_sft(tmp_path / "sft")
    wrong = "hf_wrongPlanted" + secrets.token_hex(12)
    monkeypatch.setenv("HF_TOKEN", wrong)
    with FakeHub(TOKEN) as hub:
        result = _invoke(out, "--repo", "roost-test/sft", "--endpoint", hub.url)
        line = _one_line_error(result)
        assert "HTTP 401" in line and "nothing uploaded" in line and "HF_TOKEN" in line
        assert wrong not in result.output + result.stderr
        assert [r.auth for r in hub.requests if r.route != "agents"] == ["wrong"] and not hub.repos


def test_prefect_task_publishes_and_its_artifact_holds_no_token(tmp_path, monkeypatch):
    import asyncio

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from roost.flows.publish import publish_task

    out = make_pairs(tmp_path / "pairs")
    with FakeHub(TOKEN) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the task has no endpoint parameter: HF_ENDPOINT

        @flow(name="roost-publish-test")
        def after_build(path: str) -> dict:
            return publish_task(path, "roost-test/pairs")

        result = after_build(str(out))
    assert result["committed"] and result["configs"] == {"default": 24, "easy": 14, "hard": 10}
    assert len(hub.commits("roost-test/pairs")) == 2

    async def read():
        async with get_client() as client:
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["publish-roost-test-pairs"])))
            return artifacts, await client.read_logs(), await client.read_task_runs()

    artifacts, logs, task_runs = asyncio.run(read())
    assert artifacts and "roost-test/pairs@main" in artifacts[0].data and logs
    _no_token(json.dumps(result), *(a.data for a in artifacts), *(log.message for log in logs),
              *(r.model_dump_json() for r in task_runs))


def test_the_failure_exception_holds_no_token(tmp_path, monkeypatch):
    """What a Prefect flow or a caller of the plain function would keep of a failed upload."""
    import pickle
    import traceback

    from roost.publish import UploadFailed, publish

    out = make_sft(tmp_path / "sft")
    with FakeHub(TOKEN) as hub:
        hub.fail["commit"] = 500
        with pytest.raises(UploadFailed) as info:
            publish(out, "roost-test/sft", endpoint=hub.url)
    e = info.value
    assert e.exit_code == 1 and e.__cause__ is None and e.__context__ is None  # no HTTP response chained
    _no_token(str(e), repr(e), pickle.dumps(e), "".join(traceback.format_exception(e)))


def test_a_staged_file_holding_the_token_is_not_published(tmp_path):
    """A token pasted into a training command lands in iterations.json: refused, nothing sent."""
    out = make_iterate(tmp_path / "loop")
    loop = json.loads((out / "iterations.json").read_text())
    loop["iterations"][0]["command"] = f"python train.py --hub-token {TOKEN}"
    (out / "iterations.json").write_text(json.dumps(loop))
    with FakeHub(TOKEN) as hub:
        line = _one_line_error(_invoke(out, "--repo", "roost-test/spin", "--endpoint", hub.url))
        assert "iterations.json holds your Hugging Face token" in line and not hub.calls()
    dry = _invoke(out, "--repo", "roost-test/spin", "--dry-run", tmp_path / "staged")
    assert dry.exit_code == 0 and "iterations.json holds your Hugging Face token" in dry.stderr
    _no_token(dry.output, dry.stderr)


def test_size_categories():
    from roost.publish.card import size_category

    assert [size_category(n) for n in (1, 999, 1_000, 9_999, 10_000, 250_000, 1_000_000, 10**12)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "n>1T"]
