"""`roost iterate` for real: SPIN on a copy of the tiny model, TRL's DPOTrainer as the training
command (a few CPU steps), two iterations, through the CLI in its own process (the loop frees
its engines before training, so it must not share this process's session engines).

One output directory goes through the loop's life: a training command that fails, one that
exits 0 without saving a model, then the real one (resuming the built data), then a re-run
that finds everything done."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from test_spin import seed_rows, spin_recipe, write_sft

REPO = Path(__file__).resolve().parents[1]
TRAIN = (f"{sys.executable} {REPO / 'scripts' / 'train_dpo.py'} --data {{data}} --model {{model}} "
         "--output {output} --steps 6 --lr 5e-3 --batch-size 4 --max-length 256")


def roost(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "roost.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def rows_of(folder: Path) -> list[dict]:
    return [r for p in sorted(folder.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_iterate_spin_two_real_iterations(tmp_path, tiny_chatml_path):
    model = tmp_path / "policy"
    shutil.copytree(tiny_chatml_path, model)  # its own identity: the loop frees its own engines
    data = write_sft(tmp_path / "sft.parquet", seed_rows(24))
    recipe = spin_recipe(model, data)
    recipe["model"]["max_model_len"] = 512
    recipe["synthesizer"]["keep_truncated"] = True  # the tiny model rambles; SPIN itself keeps them
    path = tmp_path / "spin.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "loop"

    # 1. the training command fails: one line, exit 1, the failure and its log in the manifest
    fail = f"{sys.executable} -c 'import sys; print(\"boom\"); sys.exit(3)' {{data}} {{model}} {{output}}"
    result = roost("iterate", str(path), "--train", fail, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "iteration 0: the training command exited with 3" in result.stderr and "Traceback" not in result.stderr
    manifest = json.loads((out / "iterations.json").read_text())
    (step,) = manifest["iterations"]
    assert manifest["status"] == "failed" and step["status"] == "failed" and step["exit_code"] == 3
    assert "boom" in Path(step["log"]).read_text()
    built = rows_of(out / "iter-0" / "data" / "data")
    assert built and all(r["iteration"] == 0 and r["model"] == str(model) for r in built)

    # 2. exits 0 but saves nothing at {output}: a failed iteration too
    result = roost("iterate", str(path), "--train", "true {data} {model} {output}", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 1 and "left no loadable model" in result.stderr, result.stderr[-3000:]

    # 3. the real loop: iteration 0's data is reused (its shards are kept), then two trainings
    result = roost("iterate", str(path), "--train", TRAIN, "--iterations", "2", "--mix-previous",
                   "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    assert rows_of(out / "iter-0" / "data" / "data") == built
    manifest = json.loads((out / "iterations.json").read_text())
    assert manifest["status"] == "complete" and [s["status"] for s in manifest["iterations"]] == ["trained"] * 2
    first, second = manifest["iterations"]
    assert first["model"] == str(model) and second["model"] == first["output"]
    assert manifest["final_model"] == second["output"] and first["exit_code"] == second["exit_code"] == 0
    assert "trained 6 steps" in Path(second["log"]).read_text()

    # iteration 1 generated with the model iteration 0 trained, same prompts, same seed: its
    # answers differ only because the model does
    again = rows_of(out / "iter-1" / "data" / "data")
    assert again and all(r["iteration"] == 1 and r["model"] == first["output"] for r in again)
    before = {r["prompt_id"]: r["rejected"][0]["content"] for r in built}
    after = {r["prompt_id"]: r["rejected"][0]["content"] for r in again}
    common = before.keys() & after.keys()
    assert len(common) >= 10
    assert sum(before[k] != after[k] for k in common) >= len(common) // 2
    # ...and iteration 1 trained on iteration 0's rows plus its own (SPIN's mix)
    mixed = rows_of(Path(second["train_data"]))
    assert sorted(r["id"] for r in mixed) == sorted(r["id"] for r in built + again)

    # 4. a re-run finds both iterations done: nothing rebuilt, nothing retrained
    stamps = [(Path(s["output"]) / "config.json").stat().st_mtime_ns for s in (first, second)]
    logs = [Path(s["log"]).read_text() for s in (first, second)]
    result = roost("iterate", str(path), "--train", TRAIN, "--iterations", "2", "--mix-previous",
                   "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(Path(s["output"]) / "config.json").stat().st_mtime_ns for s in (first, second)] == stamps
    assert [Path(s["log"]).read_text() for s in (first, second)] == logs
    assert json.loads((out / "iterations.json").read_text())["iterations"] == manifest["iterations"]


def test_iteration_recipe_and_command(tmp_path, tiny_chatml_path):
    from roost.building.iterate import iteration_recipe, model_problem, render_command
    from roost.recipe import validate_recipe

    raw = spin_recipe(tiny_chatml_path, tmp_path / "prompts-{iteration}.parquet")
    raw["loop"] = {"train": "train.sh --data {data} --model {model} --out {output} --round {iteration}"}
    recipe = validate_recipe(raw)
    assert recipe.fingerprint() == validate_recipe({k: v for k, v in raw.items() if k != "loop"}).fingerprint()
    first = iteration_recipe(recipe, 0, recipe.model.model)
    assert first.model == recipe.model and first.iteration == 0 and first.loop is None
    assert first.synthesizer.input.path == str(tmp_path / "prompts-0.parquet")
    later = iteration_recipe(recipe, 2, str(tmp_path / "iter-1" / "model"))
    assert later.model.model == str(tmp_path / "iter-1" / "model") and later.model.revision is None
    assert later.iteration == 2 and later.synthesizer.input.path == str(tmp_path / "prompts-2.parquet")
    assert later.model.seed == recipe.model.seed  # the model changes between iterations, not the seed
    command = render_command(recipe.loop, data=tmp_path / "a b", model="m; rm -rf /", output=tmp_path / "o", t=1)
    assert command == (f"train.sh --data '{tmp_path / 'a b'}' --model 'm; rm -rf /' --out {tmp_path / 'o'} --round 1")
    assert model_problem(tmp_path) == "no config.json"
    assert model_problem(tiny_chatml_path) is None
