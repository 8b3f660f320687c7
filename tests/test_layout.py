"""Outputs made before roost's modules moved into packages resume after the move: the build's
finished shard is kept as it was and the rest is built; the curation's stage cache is read, not
recomputed, and gives the rows a fresh curation gives. The outputs were made by the code before
the move (tests/data/made-before-the-layout-move/make.py says how). The curation cache's keys hold
roost's version (a new version recomputes, by design): bumping __version__ means making the
curation fixture again with the version before the bump."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pyarrow.parquet as pq

OLD = Path(__file__).resolve().parent / "data" / "made-before-the-layout-move"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy(tmp_path: Path, tiny_chatml_path: Path, monkeypatch) -> Path:
    work = tmp_path / "work"
    shutil.copytree(OLD, work, ignore=shutil.ignore_patterns("make.py"))
    (work / "tiny-chatml").symlink_to(tiny_chatml_path)
    monkeypatch.chdir(work)  # the recipes name their model and input relative to here
    return work


def test_a_build_killed_before_the_move_resumes_after_it(tmp_path, tiny_chatml_path, monkeypatch):
    import roost

    work = _copy(tmp_path, tiny_chatml_path, monkeypatch)
    first = work / "out" / "data" / "train-00000-of-00002.parquet"
    before = _sha(first)
    kept_ids = pq.read_table(first).column("id").to_pylist()

    result = roost.build("build.yaml", "out", progress=False)

    assert result.manifest["status"] == "complete" and result.manifest["skipped_shards"] == 1
    assert _sha(first) == before  # the finished shard was not rebuilt
    second = pq.read_table(work / "out" / "data" / "train-00001-of-00002.parquet").column("id").to_pylist()
    assert second and not set(second) & set(kept_ids)
    assert result.manifest["rows"] == len(kept_ids) + len(second)


def test_a_curation_killed_before_the_move_resumes_from_its_cache(tmp_path, tiny_chatml_path, monkeypatch):
    import roost

    work = _copy(tmp_path, tiny_chatml_path, monkeypatch)
    resumed = roost.curate("curate.yaml", "curated", progress=False)
    stages = {s["name"]: s.get("cache") for s in resumed.manifest["stages"]}
    assert stages["exact_dedup"] == "hit" and stages["semantic_dedup"] == "hit", stages

    fresh = roost.curate("curate.yaml", work / "fresh", progress=False)
    assert {s["name"]: s.get("cache") for s in fresh.manifest["stages"]}["semantic_dedup"] == "miss"
    rows = lambda out: [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert rows(work / "curated") == rows(work / "fresh") and 0 < len(rows(work / "fresh")) < 12
