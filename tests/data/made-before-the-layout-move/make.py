"""How the outputs here were made: with roost as it was before its modules moved into packages
(commit b8d7e54), by `python tests/data/made-before-the-layout-move/make.py` from the repo.

build/: a Magpie build of 2 shards killed after its first (manifest still "running").
curate/: a curation (heuristics, exact and semantic dedup) killed after its stages finished and
before its output was written: OUT/.cache holds every stage's entry.
Both recipes name their model and input by relative paths (run from this folder, with
`tiny-chatml` linked to the test model), so their fingerprints are the same on every machine.
tests/test_layout.py resumes both with roost as it is now."""
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def build(work: Path) -> None:
    from roost import build as b
    from roost.recipe import load_recipe

    recipe = load_recipe(work / "build.yaml")
    shards = b.preflight(recipe, "out")
    b.start_manifest(recipe, "out", len(shards))
    b.run_shard(recipe, "out", 0)


def curate(work: Path) -> None:
    from roost.curate import preflight
    from roost.recipe import load_curate_recipe
    from roost.writer import base_manifest, write_manifest

    recipe = load_curate_recipe(work / "curate.yaml")
    curation = preflight(recipe, "curated")
    write_manifest(Path("curated"), base_manifest("curated", recipe.model_dump(mode="json"), recipe.fingerprint(),
                                                  status="running"))
    curation.run()  # the cache stays: the kill came before curate() wrote the output's manifest
    for written in [*Path("curated").glob("data/*"), *Path("curated").glob("rejects/*")]:
        written.unlink()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/made-before-the-layout-move")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("build.yaml", "curate.yaml", "input.jsonl"):
        shutil.copy(HERE / name, work / name)
    (work / "tiny-chatml").symlink_to(REPO / ".cache" / "test-models" / "tiny-chatml")
    os.chdir(work)
    build(work)
    curate(work)
    for name in ("out", "curated"):
        shutil.rmtree(HERE / name, ignore_errors=True)
        shutil.copytree(work / name, HERE / name)
