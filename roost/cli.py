"""The `roost` command line."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from roost.recipe import RecipeError, load_recipe

# Prefect's ephemeral server would try to send telemetry; these machines (and many clusters) are offline.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Synthesize and curate LLM alignment data.")
console = Console(stderr=True)
REPO = Path(__file__).resolve().parents[1]


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def build(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    model: Optional[str] = typer.Option(None, help="model hub id or local path (overrides the recipe)"),
    revision: Optional[str] = typer.Option(None, help="model revision (overrides the recipe)"),
    out: Optional[Path] = typer.Option(None, help="output directory (default out/<recipe name>)"),
    num_rows: Optional[int] = typer.Option(None, help="rows to generate (overrides the recipe)"),
    shard_size: Optional[int] = typer.Option(None, help="rows per shard (overrides the recipe)"),
    seed: Optional[int] = typer.Option(None, help="engine seed (overrides the recipe)"),
) -> None:
    """Build a dataset from a recipe. Re-running into the same --out resumes."""
    overrides = {
        "model.model": model,
        "model.revision": revision,
        "output.num_rows": num_rows,
        "output.shard_size": shard_size,
        "model.seed": seed,
    }
    try:
        rec = load_recipe(recipe, overrides)
    except RecipeError as e:
        _fail(str(e))
    out_dir = out or Path("out") / rec.name
    from roost.build import OutputMismatch
    from roost.flows.build import build_flow

    try:
        manifest = build_flow(rec, str(out_dir))
    except OutputMismatch as e:
        _fail(str(e))
    _print_build_summary(manifest, out_dir)


@app.command()
def curate(
    input: str = typer.Argument(..., help="roost output dir, Parquet file/dir/glob, or hf://<dataset id>"),
    out: Path = typer.Option(..., help="output directory"),
    recipe: Optional[Path] = typer.Option(None, help="curation recipe YAML (options below override it)"),
    split: Optional[str] = typer.Option(None, help="split to read and write (default train)"),
    exact_field: Optional[str] = typer.Option(None, help="exact dedup key: first_instruction or conversation"),
    semantic: Optional[bool] = typer.Option(None, "--semantic/--no-semantic", help="semantic dedup on/off"),
    threshold: Optional[float] = typer.Option(None, help="semantic dedup: cosine similarity that counts as duplicate"),
    embedding_model: Optional[str] = typer.Option(None, help="sentence-transformers model (default: bundled all-MiniLM-L6-v2)"),
    scorer: Optional[str] = typer.Option(None, help="one model for both deita scores (turns scoring on)"),
    complexity_model: Optional[str] = typer.Option(None, help="deita complexity scorer (turns scoring on)"),
    quality_model: Optional[str] = typer.Option(None, help="deita quality scorer (turns scoring on)"),
    budget: Optional[int] = typer.Option(None, help="select at most this many rows, best deita score first (turns selection on)"),
    tau: Optional[float] = typer.Option(None, help="selection: max cosine similarity to an already selected row"),
    shard_size: Optional[int] = typer.Option(None, help="rows per output shard"),
) -> None:
    """Deduplicate, score and select rows of a dataset; removed rows go to rejects/ with reasons."""
    from roost.build import OutputMismatch
    from roost.recipe import load_curate_recipe
    from roost.sources import SourceError

    scoring_on = True if (scorer or complexity_model or quality_model) else None
    overrides = {
        "input.path": input, "input.split": split, "exact_dedup.field": exact_field,
        "semantic_dedup.enabled": semantic, "semantic_dedup.threshold": threshold,
        "semantic_dedup.model": embedding_model, "scoring.enabled": scoring_on,
        "scoring.complexity_model": complexity_model or scorer, "scoring.quality_model": quality_model or scorer,
        "selection.enabled": True if budget else None, "selection.budget": budget, "selection.tau": tau,
        "shard_size": shard_size,
    }
    try:
        rec = load_curate_recipe(recipe, overrides)
    except RecipeError as e:
        _fail(str(e))
    from roost.flows.curate import curate_flow

    try:
        manifest = curate_flow(rec, str(out))
    except (OutputMismatch, SourceError, ValueError) as e:
        _fail(str(e).splitlines()[0])
    _print_curate_summary(manifest, out)


def _print_curate_summary(manifest: dict, out_dir: Path) -> None:
    out = Console()
    if manifest.get("skipped"):
        out.print(f"already curated with this recipe: {out_dir} (nothing to do)")
    table = Table(title="roost curate", show_header=True)
    for col in ("stage", "in", "kept", "removed"):
        table.add_column(col)
    for st in manifest["stages"]:
        table.add_row(st["name"], str(st["rows_in"]), str(st["kept"]), json.dumps(st["removed"]) if st["removed"] else "")
    out.print(table)
    out.print(f"input rows: {manifest['input_rows']}  output rows: {manifest['rows']}  rejects: {manifest['rejects']}")
    out.print(f"data: {out_dir / 'data'}  rejects: {out_dir / 'rejects'}  manifest: {out_dir / 'manifest.json'}")


@app.command()
def inspect(path: Path = typer.Argument(..., help="output directory or a Parquet file"), rows: int = 3) -> None:
    """Show schema, counts, a few rows and the manifest of a dataset roost wrote."""
    from roost.inspect import describe_dataset

    try:
        describe_dataset(path, rows, Console())
    except FileNotFoundError as e:
        _fail(str(e))


@app.command("tiny-model")
def tiny_model(
    out: Path = typer.Argument(..., help="directory to write the model to"),
    style: str = typer.Option("chatml", help="chat template style: chatml or llama3"),
) -> None:
    """Build the offline tiny model (random-ish weights: its text is noise)."""
    from roost.tiny_model import TinyModelSpec, build_tiny_model

    path = build_tiny_model(out, TinyModelSpec(style=style))
    console.print(f"tiny {style} model at {path}")


@app.command()
def demo(
    out: Path = typer.Option(Path("out/demo"), help="output directory"),
    num_rows: int = typer.Option(200, help="rows to generate"),
) -> None:
    """Offline end-to-end demo: build the tiny model, run Magpie on it, then curate the result."""
    from roost.tiny_model import TinyModelSpec, build_tiny_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console.print(
        "[yellow]Demo on a tiny model built here (2 layers, trained for a few seconds): it has "
        "learned the chat format, but its words are noise. Point --model at a real model for real data.[/]"
    )
    model_path = build_tiny_model(REPO / ".cache" / "models" / "tiny-chatml", TinyModelSpec(style="chatml"))
    build(
        recipe=REPO / "recipes" / "magpie-demo.yaml", model=str(model_path), revision=None,
        out=out / "magpie", num_rows=num_rows, shard_size=None, seed=None,
    )
    console.print("[yellow]Curating it: dedup, deita scores (from the same tiny model, so noise too), selection.[/]")
    curate(
        input=str(out / "magpie"), out=out / "curated", recipe=REPO / "recipes" / "curate-demo.yaml",
        split=None, exact_field=None, semantic=None, threshold=None, embedding_model=None,
        scorer=str(model_path), complexity_model=None, quality_model=None, budget=None, tau=None, shard_size=None,
    )


def _print_build_summary(manifest: dict, out_dir: Path) -> None:
    out = Console()
    table = Table(title=f"roost build: {manifest['recipe']['name']}", show_header=True)
    table.add_column("shard")
    table.add_column("rows", justify="right")
    table.add_column("rejects", justify="right")
    table.add_column("seconds", justify="right")
    for name, s in manifest["shards"].items():
        table.add_row(name, str(s["rows"]), str(s["rejects"]), str(s.get("seconds", "")))
    out.print(table)
    out.print(f"status: {manifest['status']}  rows: {manifest['rows']}  rejects: {manifest['rejects']}"
              f"  (skipped {manifest.get('skipped_shards', 0)} finished shard(s))")
    if manifest["rejects_by_reason"]:
        out.print("rejects by reason: " + json.dumps(manifest["rejects_by_reason"]))
    out.print(f"model: {manifest.get('model')}  revision: {manifest.get('revision')}")
    out.print(f"data: {out_dir / 'data'}  rejects: {out_dir / 'rejects'}  manifest: {out_dir / 'manifest.json'}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
