"""The work of `roost build`: a `Build` (the Prefect flow in roost.flows, the Ray driver in
roost.building.on_ray and roost.api all run one).

A build is the list of shards its synthesizer plans; a shard is an independent unit of work:
it loads (or reuses) the process's engines, generates its rows from its own derived seed,
and writes its own Parquet file atomically. Re-running into the same output skips shards
whose file exists, so a killed run resumes without redoing or duplicating anything. An
output made by a different recipe (or cut into a different number of shards) is refused.
This module names no synthesizer: they are found by `kind` (roost.synthesizers).
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from roost import __version__
from roost.dataset.writer import DatasetWriter, ShardStats, base_manifest, read_roost_metadata, summarize
from roost.errors import OutputMismatch
from roost.recipe import Recipe
from roost.synthesizers.base import SYNTHESIZERS, Shard, Synthesizer


class Build:
    """One build of `recipe` into `out`: its synthesizer (and through it the engines), the shard
    plan, the writer and the fingerprint, made once and held for the life of the build.

        build = Build.open(recipe, out)   # the checks a user can fail, before any engine starts
        build.start()                     # the manifest says "running"
        for index in build.pending():     # or: on Ray workers, each with a Build of its own
            build.run_shard(index)
        manifest = build.finish()

    `Build(recipe, out)` without the checks is what a worker that was handed a checked build uses."""

    def __init__(self, recipe: Recipe, out: str | Path, *, check: bool = False):
        self.recipe = recipe
        self.out = Path(out)
        self.synthesizer: Synthesizer = SYNTHESIZERS.get(recipe.synthesizer.kind)(recipe.synthesizer, recipe)
        if check:  # the synthesizer's own options first: they explain a plan that cannot be made
            self.synthesizer.check()
        self.shards: list[Shard] = self.synthesizer.plan()
        self.writer = DatasetWriter(out, self.synthesizer.schema, split=recipe.output.split, num_shards=len(self.shards))
        self.inputs = self.synthesizer.inputs()
        # what the inputs are (content digests, Hub commits): an edited prompts file or a moved
        # Hub branch is another build, not this one finished
        self.fingerprint = recipe.fingerprint(contents={name: _identity(i) for name, i in self.inputs.items()} or None)

    @classmethod
    def open(cls, recipe: Recipe, out: str | Path, *, say: bool = True) -> "Build":
        """Everything a user can get wrong, checked before any engine starts: the models exist,
        the synthesizer's inputs and options make sense, the output is this recipe's."""
        from roost.engines import ensure_available

        ensure_available(recipe.model.model, recipe.model.revision)
        if recipe.model.server is not None:  # reachable, vLLM, serving this model: checked before any shard
            from roost.engines import get_engine

            get_engine(recipe.model)
        build = cls(recipe, out, check=True)
        build.check_resumable()
        if say:
            for name, described in build.inputs.items():
                sys.stderr.write(f"{name}: {described['path']}: {described['rows']} rows of {described['read_as']}\n")
        return build

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def pending(self) -> list[int]:
        return self.writer.pending()

    def done(self) -> int:
        return self.num_shards - len(self.pending())

    def check_resumable(self) -> None:
        existing = self.writer.read_manifest()
        if not existing:
            return
        for name, now in self.inputs.items():
            then = (existing.get("inputs") or {}).get(name)
            if then and _identity(then) != _identity(now):
                what = "commit" if "revision" in now else "sha256"
                pin = f"; pin revision: {then['revision']} to resume it" if what == "commit" else ""
                raise OutputMismatch(f"{self.out} was built from another version of {now['path']} ({what} "
                                     f"{_identity(then)[:12]}, now {_identity(now)[:12]}){pin}, or choose another --out")
        if existing.get("recipe_hash") != self.fingerprint:
            raise OutputMismatch(f"{self.out} was built from a different recipe (hash {existing.get('recipe_hash')}, "
                                 f"this one {self.fingerprint}); choose another --out or delete it")
        if existing.get("num_shards") not in (None, self.num_shards):
            raise OutputMismatch(f"{self.out} was cut into {existing['num_shards']} shards, this plan has "
                                 f"{self.num_shards} (did the input change?); choose another --out or delete it")

    def start(self) -> None:
        """Write the "running" manifest (once: a resumed build keeps the first one's)."""
        if self.writer.read_manifest() is None:
            self.writer.write_manifest(base_manifest(
                self.writer.schema.name, self.recipe.model_dump(mode="json"), self.fingerprint,
                status="running", num_shards=self.num_shards, inputs=self.inputs))

    def run_shard(self, index: int) -> ShardStats:
        """Generate and write shard `index`. Safe to run on any worker that can see `out`."""
        if self.writer.is_done(index):
            return self.writer.shard_stats(index)
        started = (self.writer.read_manifest() or {}).get("recipe_hash")
        if started not in (None, self.fingerprint):  # a worker that opened another version of an input
            raise OutputMismatch(f"{self.out}: an input changed while it was being built (the build started from "
                                 f"{started}, this worker sees {self.fingerprint}); run it again")
        synth, shard = self.synthesizer, self.shards[index]
        result = synth.generate(shard)
        provenance = {
            "roost_version": __version__,
            "recipe_hash": self.fingerprint,
            "synthesizer": synth.kind,
            "model": self.recipe.model.model,
            "seed": self.recipe.model.seed,
            "shard_seed": shard.seed,
            "iteration": self.recipe.iteration,
            **_engine_provenance(self.recipe),
            **synth.provenance(),
        }
        subsets = {name: (schema, result.subsets.get(name, [])) for name, schema in synth.subsets.items()}
        return self.writer.write_shard(index, result.rows, result.rejects, provenance, result.stats, subsets)

    def finish(self) -> dict[str, Any]:
        """Rebuild the manifest from the shard files themselves: they are the source of truth."""
        writer, n = self.writer, self.num_shards
        done = [i for i in range(n) if writer.is_done(i)]
        provenance = _first_provenance(writer, done)
        manifest = base_manifest(
            writer.schema.name,
            self.recipe.model_dump(mode="json"),
            self.fingerprint,
            inputs=self.inputs,
            status="complete" if len(done) == n else "partial",
            schema=writer.schema.name,
            split=self.recipe.output.split,
            num_shards=n,
            **{k: v for k, v in provenance.items() if k not in ("recipe_hash", "roost_version", "shard_seed")},
            **summarize([writer.shard_stats(i) for i in done]),
        )
        if manifest["status"] == "complete":
            manifest.update(self.synthesizer.finish(writer))
        manifest.setdefault("model", self.recipe.model.model)
        manifest.setdefault("seed", self.recipe.model.seed)
        writer.write_manifest(manifest)
        return manifest

    def run(self, *, progress: bool = False, on_shard=None, on_ray=None) -> dict[str, Any]:
        """The whole build: start, every pending shard (here, one after another, as `on_shard(index)`
        runs it, e.g. a Prefect task; or on Ray, as `on_ray(pending)` does, when the recipe's
        executor says so), finish. Resumes: finished shards are kept. `progress`: a bar of shards."""
        from roost.runtime import stopping

        self.start()
        pending = self.pending()
        skipped = self.num_shards - len(pending)
        stopping.track("shards", self.done, self.num_shards, manifest=self.writer.root / "manifest.json")
        executor = None
        if self.recipe.executor.kind == "ray" and pending:
            if on_ray is None:
                from roost.building.on_ray import run_on_ray

                on_ray = lambda pending: run_on_ray(self, pending)  # noqa: E731
            executor = on_ray(pending)
        else:
            with _shard_bar(progress, self.num_shards, skipped) as advance:
                for index in pending:
                    (on_shard or self.run_shard)(index)
                    advance()
        manifest = self.finish()
        manifest["skipped_shards"] = skipped  # what this run kept from an earlier one
        if executor:
            manifest["executor"] = executor  # the summary's (not written: where shards ran is not provenance)
        return manifest


def _identity(described: dict) -> str:
    return described.get("revision") or described.get("sha256") or ""


def _engine_provenance(recipe: Recipe) -> dict[str, Any]:
    from roost.engines import get_engine

    engine = get_engine(recipe.model).describe()
    return {"revision": engine.get("revision"), "engine": engine}


def _first_provenance(writer: DatasetWriter, done: list[int]) -> dict[str, Any]:
    for i in done:
        meta = read_roost_metadata(writer.data_path(i))
        if meta.get("provenance"):
            return meta["provenance"]
    return {}


def build_here(recipe: Recipe, out: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """The whole build in this process, without Prefect (roost.api, a notebook, a bench; the
    CLI's flow runs the same Build with its shards as tasks)."""
    return Build.open(recipe, out).run(progress=progress)


@contextmanager
def _shard_bar(show: bool, total: int, done: int):
    if not show:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("shards", total=total, completed=done)
        yield lambda: bar.advance(task)
