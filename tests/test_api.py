"""roost as a library (roost.api): the same outputs as the command on the same recipe, the same
resume and fingerprint rules, the same one-line errors (as UserError subclasses), results that
explain themselves. Real vLLM on the tiny ChatML model (the session's engine), real Prefect for
the command's side, real sentence-transformers for semantic dedup."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

import roost
from roost.cli import app
from roost.errors import ConfigError, OutputMismatch, UserError
from roost.schemas import MESSAGES

REPO = Path(__file__).resolve().parents[1]


def _cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _rows(folder: Path) -> dict[str, list[dict]]:
    """Every Parquet file of a folder, by name: its rows."""
    return {f.name: pq.read_table(f).to_pylist() for f in sorted(folder.glob("*.parquet"))}


def _error_line(output: str) -> str:
    (line,) = [line for line in output.strip().splitlines() if line.strip()]
    assert line.startswith("error: "), output
    return line[len("error: "):]


# -- build ---------------------------------------------------------------------------------------


@pytest.fixture()
def recipe(tmp_path, tiny_chatml_path) -> Path:
    data = {
        "name": "api-build",
        # the conftest engine's identity, so the process reuses that engine
        "model": {"model": str(tiny_chatml_path), "max_model_len": 1024, "seed": 0},
        "output": {"num_rows": 8, "shard_size": 4},
        "synthesizer": {"kind": "magpie", "max_rounds": 4, "instruction": {"temperature": 1.0, "max_tokens": 32},
                        "response": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 48}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_importing_roost_is_light_and_its_names_are_lazy():
    code = ("import sys, roost; heavy = [m for m in ('pyarrow', 'pydantic', 'vllm', 'torch', 'prefect', 'datasets', "
            "'numpy', 'yaml') if m in sys.modules]; assert not heavy, heavy; "
            "assert callable(roost.build) and callable(roost.curate) and roost.eval is roost.evaluate; "
            "import roost.api; assert roost.build is roost.api.build and roost.curate is roost.api.curate; "
            "import inspect; assert 'num_rows' in inspect.signature(roost.build).parameters; "
            "assert roost.CurateRecipe.__name__ == 'CurateRecipe'; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    assert set(roost.__all__) >= {"build", "curate", "evaluate", "Recipe", "CurateRecipe"} and "eval" not in roost.__all__


def test_build_from_python_is_the_command_s_build_and_resumes(tmp_path, recipe, chatml_engine):
    api_out, cli_out = tmp_path / "api", tmp_path / "cli"
    result = roost.build(recipe, out=api_out, progress=False)
    code, output = _cli("build", recipe, "--out", cli_out)
    assert code == 0, output[-3000:]

    # the same recipe and seed: the same shards, row for row, and the same rejects
    assert result.status == "complete" and result.manifest["skipped_shards"] == 0
    data = _rows(api_out / "data")
    assert list(data) == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert data == _rows(cli_out / "data") and _rows(api_out / "rejects") == _rows(cli_out / "rejects")
    on_disk = json.loads((cli_out / "manifest.json").read_text())
    assert result.manifest["recipe_hash"] == on_disk["recipe_hash"] and result.rows == on_disk["rows"] > 0

    # the result explains itself
    ds = result.dataset()
    assert len(ds) == result.rows and ds["id"] == [r["id"] for rows in data.values() for r in rows]
    assert ds[0]["messages"][0]["role"] == "user"
    rejects = result.rejects()
    assert len(rejects) == result.rejected and set(rejects.column_names) >= {"stage", "reason", "record"}
    assert sum(n for reasons in result.counts.values() for n in reasons.values()) == result.rejected
    text = repr(result)
    assert f"{result.rows} rows kept, {result.rejected} rejected" in text and str(api_out / "data") in text
    assert roost.Result.load(cli_out).rows == result.rows

    # calling it again: every shard kept, nothing rewritten; the command's output resumes the same way
    mtimes = {f: f.stat().st_mtime_ns for f in (api_out / "data").iterdir()}
    again = roost.build(recipe, out=api_out, progress=False)
    assert again.manifest["skipped_shards"] == 2 and {f: f.stat().st_mtime_ns for f in mtimes} == mtimes
    assert "2 finished shard(s) kept" in repr(again)
    assert roost.build(recipe, out=cli_out, progress=False).manifest["skipped_shards"] == 2

    # a lost shard is rebuilt, to the same rows
    (api_out / "data" / "train-00001-of-00002.parquet").unlink()
    resumed = roost.build(recipe, out=api_out, progress=False)
    assert resumed.manifest["skipped_shards"] == 1 and _rows(api_out / "data") == data

    # a recipe object works as well as its file; another seed is another recipe: refused, as the command does
    rec = roost.Recipe.model_validate(yaml.safe_load(recipe.read_text()))
    assert roost.build(rec, out=api_out, progress=False).manifest["skipped_shards"] == 2
    with pytest.raises(OutputMismatch) as e:
        roost.build(rec, out=api_out, seed=1)
    code, output = _cli("build", recipe, "--out", api_out, "--seed", "1")
    assert code == 2 and _error_line(output) == str(e.value)


# -- curate --------------------------------------------------------------------------------------


def conv(q: str, a: str = "Here is a careful and complete answer to that question.") -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


ROWS = [
    {"messages": conv("How do I reverse a list in Python?")},
    {"messages": conv("What is the capital of France?")},
    {"messages": conv("Explain photosynthesis to a ten year old.")},
    {"messages": conv("how do I   REVERSE a list in python?", "A different answer, still long enough.")},  # exact dup
    {"messages": conv("What's the capital city of France?")},  # semantic dup
    {"messages": None},  # bad input
    {"messages": conv("Here is my text:")},  # not a request
]


@pytest.fixture()
def rows_path(tmp_path) -> Path:
    path = tmp_path / "input.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS, schema=pa.schema([pa.field("messages", MESSAGES)])), path)
    return path


def test_curate_from_python_is_the_command_s_curation(tmp_path, rows_path):
    from roost.stages.heuristics import HeuristicsConfig
    from roost.stages.semantic_dedup import SemanticDedupConfig

    api_out, cli_out = tmp_path / "api", tmp_path / "cli"
    stages = [HeuristicsConfig(), "exact_dedup", SemanticDedupConfig(threshold=0.85)]
    result = roost.curate(rows_path, out=api_out, stages=stages, progress=False)
    recipe = tmp_path / "curate.yaml"
    recipe.write_text(yaml.safe_dump({"stages": [{"kind": "heuristics"}, {"kind": "exact_dedup"},
                                                 {"kind": "semantic_dedup", "threshold": 0.85}]}))
    code, output = _cli("curate", rows_path, "--out", cli_out, "--recipe", recipe)
    assert code == 0, output[-3000:]

    assert result.manifest["recipe_hash"] == json.loads((cli_out / "manifest.json").read_text())["recipe_hash"]
    assert _rows(api_out / "data") == _rows(cli_out / "data") and _rows(api_out / "rejects") == _rows(cli_out / "rejects")
    assert result.counts == {"validate": {"bad_input": 1}, "heuristics": {"not_a_request": 1},
                             "exact_dedup": {"exact_duplicate": 1}, "semantic_dedup": {"semantic_duplicate": 1}}
    assert result.rows == 3 and result.rejected == 4 and result.kind == "curate"
    assert [m[0]["content"] for m in result.dataset()["messages"]] == [ROWS[i]["messages"][0]["content"] for i in range(3)]
    rejects = result.rejects()
    assert sorted(rejects["reason"]) == ["bad_input", "exact_duplicate", "not_a_request", "semantic_duplicate"]
    text = repr(result)
    assert "7 input rows -> 3 kept, 4 rejected" in text and "semantic_duplicate 1" in text

    # again, from Python, into either output (the recipe file this time): nothing to do
    again = roost.curate(rows_path, out=cli_out, recipe=recipe, progress=False)
    assert again.manifest["skipped"] and "nothing was done" in repr(again)
    assert roost.curate(rows_path, out=api_out, stages=stages, progress=False).manifest["skipped"]

    # no rejects (the curated rows, curated again): an empty dataset with the rejects' columns
    none = roost.curate(api_out, out=tmp_path / "again", stages=["exact_dedup"], progress=False)
    assert none.rejected == 0 and len(none.rejects()) == 0 and "reason" in none.rejects().column_names
    assert len(none.dataset()) == 3


def test_the_command_s_flags_and_the_api_s_keywords_make_one_recipe(tmp_path, rows_path):
    from roost.api import curate_recipe
    from roost.recipe import CurateRecipe

    by_flags = curate_recipe(input=rows_path, threshold=0.85, budget=2, tau=0.8, exact_field="conversation")
    spelled = CurateRecipe.model_validate({"input": {"path": str(rows_path)}, "stages": [
        {"kind": "heuristics"}, {"kind": "exact_dedup", "view": "conversation"},
        {"kind": "semantic_dedup", "threshold": 0.85}, {"kind": "selection", "budget": 2, "tau": 0.8}]})
    assert by_flags.fingerprint() == spelled.fingerprint()
    assert curate_recipe(rows_path, semantic=False).stages[-1].kind == "exact_dedup"
    # a whole recipe in the first place, as an object or a mapping, is taken as it is
    assert curate_recipe(spelled) is spelled
    assert curate_recipe(spelled.model_dump(mode="json")).fingerprint() == spelled.fingerprint()
    with pytest.raises(ConfigError, match=r"stages\[1\]: a stage config"):
        curate_recipe(rows_path, stages=["heuristics", 3])


# -- errors ----------------------------------------------------------------------------------------


def test_user_errors_are_the_command_s_line(tmp_path, recipe, rows_path, tiny_chatml_path):
    cases = [
        (lambda: roost.build(recipe, out=tmp_path / "o", overrides={"output.shard_size": 0}),
         ["build", recipe, "--out", tmp_path / "o", "--set", "output.shard_size=0"], ConfigError),
        (lambda: roost.build(recipe, out="/proc/roost-cannot-write-here"),
         ["build", recipe, "--out", "/proc/roost-cannot-write-here"], ConfigError),
        (lambda: roost.build(recipe, out=tmp_path / "o", model=str(tmp_path / "nowhere")),
         ["build", recipe, "--out", tmp_path / "o", "--model", tmp_path / "nowhere"], UserError),
        (lambda: roost.curate(rows_path, out=tmp_path / "c", threshold=1.5),
         ["curate", rows_path, "--out", tmp_path / "c", "--threshold", "1.5"], ConfigError),
        (lambda: roost.curate(tmp_path / "nope", out=tmp_path / "c"),
         ["curate", tmp_path / "nope", "--out", tmp_path / "c"], UserError),
        (lambda: roost.eval(problems=str(REPO / "data" / "arithmetic_problems.jsonl"), rows="0:4"),
         ["eval", "--problems", REPO / "data" / "arithmetic_problems.jsonl", "--rows", "0:4"], ConfigError),
        (lambda: roost.eval(model=str(tiny_chatml_path), rows="a:b"),
         ["eval", "--model", tiny_chatml_path, "--rows", "a:b"], ConfigError),
    ]
    for call, args, kind in cases:
        with pytest.raises(kind) as e:
            call()
        code, output = _cli(*args)
        assert code == 2 and _error_line(output) == str(e.value).splitlines()[0], (args, output)


# -- eval ------------------------------------------------------------------------------------------


def test_eval_from_python_is_the_command_s_eval(tmp_path, tiny_chatml_path, chatml_engine):
    problems = REPO / "data" / "arithmetic_problems.jsonl"
    settings = {"sampling.max_tokens": 24, "max_tokens": 24, "model.max_model_len": 1024, "model.seed": 0}
    result = roost.eval(model=str(tiny_chatml_path), problems=str(problems), rows="0:3", samples=2,
                        overrides=settings, out=tmp_path / "api")
    code, output = _cli("eval", "--model", tiny_chatml_path, "--problems", problems, "--rows", "0:3", "--samples", "2",
                        *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")], "--out", tmp_path / "cli")
    assert code == 0, output[-3000:]
    assert _rows(tmp_path / "api" / "outcomes") == _rows(tmp_path / "cli" / "outcomes")
    cli_summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert result.metrics == cli_summary["metrics"] and result.summary["recipe_hash"] == cli_summary["recipe_hash"]
    assert len(result.outcomes()) == result.metrics["problems"] == 3
    assert "greedy_accuracy" in repr(result) and roost.EvalResult.load(tmp_path / "cli").metrics == result.metrics


# -- a plain script --------------------------------------------------------------------------------

SCRIPT = '''
import json, sys
import roost

if __name__ == "__main__":  # vLLM spawns its engine process: a script guards its main
    recipe, out = sys.argv[1], sys.argv[2]
    built = roost.build(recipe, out=out + "/built")
    curated = roost.curate(built.out, out=out + "/curated", stages=["heuristics", "exact_dedup"])
    print(json.dumps({"built": built.rows, "curated": curated.rows, "counts": curated.counts,
                      "ids": list(curated.dataset()["id"])}))
'''


def test_a_plain_script_builds_and_curates_as_the_commands_do(tmp_path, recipe, chatml_engine):
    script = tmp_path / "make_data.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(recipe), str(tmp_path / "script")], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])

    cli = tmp_path / "cli"
    code, output = _cli("build", recipe, "--out", cli / "built")
    assert code == 0, output[-3000:]
    code, output = _cli("curate", cli / "built", "--out", cli / "curated", "--no-semantic")
    assert code == 0, output[-3000:]
    for part in ("built/data", "built/rejects", "curated/data", "curated/rejects"):
        assert _rows(tmp_path / "script" / part) == _rows(cli / part), part
    curated = roost.Result.load(cli / "curated")
    assert said["built"] == roost.Result.load(cli / "built").rows > 0
    assert said["curated"] == curated.rows and said["counts"] == curated.counts
    assert said["ids"] == [r["id"] for rows in _rows(cli / "curated" / "data").values() for r in rows]
