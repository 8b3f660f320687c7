"""Resumable curation (roost.curation.cache): a killed curation resumes from what it finished,
and a cache written for another input, other settings or another embedding model is never
reused. Real sentence-transformers, FAISS, reward model and Parquet throughout."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from procs import power_cut, tagged_env, wait_gone

from roost.curation.runner import curate, preflight
from roost.dataset.writer import base_manifest, write_manifest
from roost.errors import OutputMismatch
from roost.recipe import CurateRecipe
from roost.schemas import MESSAGES

SCHEMA = pa.schema([pa.field("messages", MESSAGES), pa.field("source", pa.string())])


def conv(q: str, a: str = "Here is a careful and complete answer to that question.") -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


QUESTIONS = ["How do I reverse a list in Python?", "What is the capital of France?",
             "Explain photosynthesis to a ten year old.", "Write a haiku about autumn leaves.",
             "how do I   REVERSE a list in python?",  # exact duplicate of 0
             "What's the capital city of France?",  # paraphrase of 1
             "Here is my text:",  # not a request
             "Name three prime numbers between ten and thirty.", "Why is the sky blue during the day?"]
ROWS = [{"messages": conv(q), "source": str(i)} for i, q in enumerate(QUESTIONS)] + [{"messages": None, "source": "bad"}]


def _write(path: Path, rows=ROWS) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path


def _recipe(path: Path, *, threshold: float = 0.85, model: str | None = None, rm: Path | None = None,
            bench: Path | None = None, batch_size: int = 4) -> CurateRecipe:
    stages: list[dict] = [{"kind": "heuristics"}, {"kind": "exact_dedup"}, {"kind": "semantic_dedup", "threshold": threshold}]
    if rm is not None:
        stages.append({"kind": "reward", "model": {"model": str(rm), "max_model_len": 1024, "backend": "transformers"}})
    if bench is not None:
        stages.append({"kind": "decontaminate", "benchmarks": [{"name": "b", "path": str(bench), "text_column": "q"}],
                       "embedding": {"enabled": False}})
    return CurateRecipe.model_validate({"input": {"path": str(path), "batch_size": batch_size},
                                        "embedding": {"model": model} if model else {}, "stages": stages})


def _run(recipe: CurateRecipe, out: Path) -> dict:
    """One curation that keeps its cache, as a killed one does (curate() removes it when done)."""
    return preflight(recipe, out).run()


def _status(manifest: dict) -> dict[str, str]:
    return {**{s["name"]: s["cache"] for s in manifest["stages"]},
            **{name: e["status"] for name, e in manifest["cache"]["entries"].items()}}


def _embedded(manifest: dict) -> int:
    """Rows the run embedded (not read back from the cache)."""
    return manifest["cache"]["entries"]["embedding-first_instruction"]["embedded"]


def _read(out: Path, kind: str) -> list[dict]:
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _same_output(a: Path, b: Path) -> None:
    for kind in ("data", "rejects"):
        assert pq.read_schema(next((a / kind).glob("*.parquet"))).names == pq.read_schema(
            next((b / kind).glob("*.parquet"))).names
        assert _read(a, kind) == _read(b, kind), kind


def _model_copy(dest: Path) -> Path:
    """The bundled all-MiniLM-L6-v2 at another path (the weights linked, the small files copied)."""
    from roost.engines.embeddings import default_embedding_model

    src = Path(default_embedding_model())
    for f in src.rglob("*"):
        if f.is_file():
            target = dest / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.stat().st_size > 1 << 20:
                target.symlink_to(f)
            else:
                shutil.copy(f, target)
    return dest


def test_cache_is_reused_only_for_the_same_input_settings_and_model(tmp_path, tiny_rm_chatml_path):
    path = _write(tmp_path / "in.parquet")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"q": "Why is the sky blue during the day?"}) + "\n")
    out = tmp_path / "out"
    first = _recipe(path, rm=tiny_rm_chatml_path, bench=bench)

    m = _run(first, out)
    assert set(_status(m).values()) == {"miss"}
    assert _embedded(m) == m["stages"][1]["kept"] == 8  # all rows past heuristics
    assert m["rejects_by_reason"] == {"bad_input": 1, "not_a_request": 1, "exact_duplicate": 1,
                                      "semantic_duplicate": 1, "contaminated_ngram": 1}

    # the same curation again: everything read back, nothing embedded or scored; same output
    again = _run(first, tmp_path / "again")
    assert set(_status(again).values()) == {"miss"}  # another OUT, another cache
    m = _run(first, out)
    assert set(_status(m).values()) == {"hit"}, _status(m)
    assert _embedded(m) == 0
    assert m["stages"][4]["settings"]["reward_model"]  # what the scorer said when it ran
    assert m["embedding"] == again["embedding"]
    _same_output(out, tmp_path / "again")
    assert _read(out, "data")[0]["reward_outputs"]  # list columns come back whole

    # another stage setting: what is upstream of it holds, it and what follows are recomputed
    m = _run(_recipe(path, threshold=0.8, rm=tiny_rm_chatml_path, bench=bench), out)
    s = _status(m)
    assert [s[n] for n in ("validate", "heuristics", "exact_dedup", "embedding-first_instruction")] == ["hit"] * 4
    assert s["semantic_dedup"] == "stale (settings changed)"
    assert s["reward"] == s["decontaminate"] == "stale (upstream changed)"

    # another input file at the same path: nothing is reused
    rows = [*ROWS[:-2], {"messages": conv("Which planet is the largest in our solar system?"), "source": "new"}]
    _write(path, rows)
    second = _recipe(path, threshold=0.8, rm=tiny_rm_chatml_path, bench=bench)
    m = _run(second, out)
    assert set(_status(m).values()) == {"stale (input changed)"}, _status(m)
    assert _embedded(m) == m["stages"][1]["kept"] == 8
    fresh = curate(second, tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh" / ".cache").exists()  # a finished curation keeps no cache
    assert fresh["cache"]["entries"]["read"]["status"] == "miss"
    _same_output(out, tmp_path / "fresh")

    # another embedding model: embeddings and the stages that read them (or may) are recomputed
    model = _model_copy(tmp_path / "model")
    m = _run(_recipe(path, threshold=0.8, model=str(model), rm=tiny_rm_chatml_path, bench=bench), out)
    s = _status(m)
    assert s["read"] == s["exact_dedup"] == "hit"
    assert s["embedding-first_instruction"] == s["semantic_dedup"] == "stale (embedding model changed)"
    assert s["reward"] == "stale (upstream changed)" and s["decontaminate"] == "stale (embedding model changed)"
    assert _embedded(m) == 8
    # ... and the same model path with other files
    with open(model / "README.md", "a") as f:
        f.write("\nedited\n")
    m = _run(_recipe(path, threshold=0.8, model=str(model), rm=tiny_rm_chatml_path, bench=bench), out)
    assert _status(m)["embedding-first_instruction"] == "stale (embedding model changed)"
    assert _status(m)["exact_dedup"] == "hit"
    # only the newest entry of each stage is kept
    names = sorted(p.name.rsplit("-", 1)[0] for p in (out / ".cache").iterdir() if p.name != ".tmp")
    assert names == sorted(m["cache"]["entries"])


def test_a_damaged_entry_is_recomputed_and_a_kill_during_embedding_resumes_from_its_checkpoints(tmp_path, monkeypatch):
    import roost.curation.checkpoints
    from roost.engines.embeddings import Embedder

    path = _write(tmp_path / "in.parquet")
    recipe = _recipe(path, batch_size=2)
    reference = curate(recipe, tmp_path / "ref", progress=False)
    out = tmp_path / "out"
    _run(recipe, out)
    (part,) = (out / ".cache").glob("embedding-*/part-*.npy")
    part.write_bytes(part.read_bytes()[:100])  # what a disk may do; never what a killed write leaves
    m = _run(recipe, out)
    assert _status(m)["embedding-first_instruction"].startswith("stale (unreadable: ")
    assert _status(m)["read"] == "hit" and _embedded(m) == m["stages"][1]["kept"] == 8
    _same_output(out, tmp_path / "ref")

    # killed while embedding: parts of 2 rows are written as it goes; the re-run embeds the rest only
    monkeypatch.setattr(roost.curation.checkpoints, "PART_ROWS", 2)
    encode, calls = Embedder.encode, []

    def dies_on_the_third_batch(self, texts):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(self, texts)

    killed = tmp_path / "killed"
    monkeypatch.setattr(Embedder, "encode", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        curate(recipe, killed, progress=False)
    assert json.loads((killed / "manifest.json").read_text())["status"] == "running"
    done = sum(calls[:2])
    (parts,) = (killed / ".cache").glob("embedding-*.parts")
    assert sorted(p.name for p in parts.glob("part-*.npy"))[0] == "part-000000000000-000000000002.npy"
    monkeypatch.setattr(Embedder, "encode", encode)
    m = curate(recipe, killed, progress=False)
    entry = m["cache"]["entries"]["embedding-first_instruction"]
    assert entry["status"] == f"partial ({done} rows checkpointed)"
    assert (entry["reused"], entry["embedded"]) == (done, 8 - done)
    assert m["stages"][0]["cache"] == "miss"  # pass 1 itself was not finished: redone, all but the embedding
    _same_output(killed, tmp_path / "ref")
    assert m["rows"] == reference["rows"]


def test_an_unfinished_output_of_another_recipe_is_taken_over_a_finished_one_is_not(tmp_path):
    path = _write(tmp_path / "in.parquet")
    out = tmp_path / "out"
    first, second = _recipe(path), _recipe(path, threshold=0.8)
    _run(first, out)
    write_manifest(out, base_manifest("curated", {}, first.fingerprint(), status="running"))  # killed
    m = curate(second, out, progress=False)
    assert m["status"] == "complete" and _status(m)["embedding-first_instruction"] == "hit"
    assert _status(m)["semantic_dedup"] == "stale (settings changed)"
    assert not (out / ".cache").exists()
    with pytest.raises(OutputMismatch):
        curate(first, out, progress=False)

    from roost.curation.runner import Curation
    from roost.dataset.sources import open_source

    m = Curation(first, open_source(str(path)), tmp_path / "off", progress=False, cache=False).run()
    assert set(_status(m).values()) == {"off (caching disabled)"} and not (tmp_path / "off" / ".cache").exists()


# -- a real kill: `roost curate` in a subprocess, SIGKILLed once its embeddings are cached --------------


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = ("river mountain code bread violin planet tax garden python winter market engine poem "
             "history island music chemistry soccer cloud desert library robot ocean teacher").split()
    rows: list[dict] = []
    for i in range(n):
        r = rng.random()
        if rows and r < 0.08:  # exact duplicate, other case and spacing
            q = rows[rng.randrange(len(rows))]["messages"][0]["content"].upper().replace(" ", "  ")
        elif rows and r < 0.12:  # near duplicate
            q = rows[rng.randrange(len(rows))]["messages"][0]["content"].rstrip("?") + ", please?"
        elif r < 0.14:
            q = "Here is my text:"
        else:
            q = f"Tell me about {' and '.join(rng.sample(words, 3))} in {rng.randrange(1000, 2000)}?"
        rows.append({"messages": conv(q, f"An answer about row {i}: " + " ".join(rng.sample(words, 8))),
                     "source": f"s{i % 7}"})
    return rows


def _cli(*args) -> list[str]:
    return [str(Path(sys.executable).with_name("roost")), "curate", *map(str, args)]


def _embedding_entry(out: Path) -> bool:
    return any(p.parent.suffix != ".parts" for p in (out / ".cache").glob("embedding-*/meta.json"))


def test_a_killed_cli_curation_resumes_after_its_embeddings(tmp_path, tiny_rm_chatml_path):
    path = _write(tmp_path / "in.parquet", _rows(2000))
    recipe = tmp_path / "curate.yaml"
    recipe.write_text(json.dumps({"stages": [
        {"kind": "heuristics"}, {"kind": "exact_dedup"}, {"kind": "semantic_dedup"},
        {"kind": "reward", "model": {"model": str(tiny_rm_chatml_path), "max_model_len": 1024,
                                     "backend": "transformers"}}]}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    fresh = subprocess.run(_cli(path, "--out", tmp_path / "fresh", "--recipe", recipe), env=env,
                           capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr

    out = tmp_path / "out"
    env = tagged_env()
    proc = subprocess.Popen(_cli(path, "--out", out, "--recipe", recipe), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while not _embedding_entry(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    power_cut(env)  # every process of the run at once, as a power cut would
    assert proc.wait() == -signal.SIGKILL, "the curation finished before it could be killed"
    assert not wait_gone(env)
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"
    assert not list((out / "data").glob("*.parquet"))

    resumed = subprocess.run(_cli(path, "--out", out, "--recipe", recipe), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    m = json.loads((out / "manifest.json").read_text())
    entry = m["cache"]["entries"]["embedding-first_instruction"]
    assert entry["status"] == "hit" and entry["embedded"] == 0 and entry["reused"] == m["stages"][1]["kept"]
    assert m["stages"][0]["cache"] == m["stages"][1]["cache"] == "hit"  # validate, heuristics: pass 1 not redone
    assert m["stages"][4]["cache"] == "miss"  # the reward stage was not finished
    assert not (out / ".cache").exists()
    _same_output(out, tmp_path / "fresh")
    assert "reward" in pq.read_schema(next((out / "data").glob("*.parquet"))).names
