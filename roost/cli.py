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
    """Offline end-to-end demo: build the tiny model, run the Magpie recipe on it."""
    from roost.tiny_model import TinyModelSpec, build_tiny_model

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console.print(
        "[yellow]Demo on a tiny model built here (2 layers, trained for a few seconds): it has "
        "learned the chat format, but its words are noise. Point --model at a real model for real data.[/]"
    )
    model_path = build_tiny_model(REPO / ".cache" / "models" / "tiny-chatml", TinyModelSpec(style="chatml"))
    build(
        recipe=REPO / "recipes" / "magpie-demo.yaml", model=str(model_path), revision=None,
        out=out, num_rows=num_rows, shard_size=None, seed=None,
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
