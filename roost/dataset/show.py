"""`roost inspect`: what is in a dataset directory (or one Parquet file)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from roost.dataset.writer import read_roost_metadata


def describe_dataset(path: Path, n_rows: int, console: Console) -> None:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    files = sorted((path / "data").glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no data/*.parquet files")
    reject_files = sorted((path / "rejects").glob("*.parquet")) if path.is_dir() else []

    console.rule(f"[bold]{path}")
    console.print("[bold]schema[/]")
    console.print(str(pq.read_schema(files[0]).remove_metadata()))

    table = Table(title="counts")
    table.add_column("file")
    table.add_column("rows", justify="right")
    table.add_column("rejects", justify="right")
    total = rejects_total = 0
    for f in files:
        rows = pq.ParquetFile(f).metadata.num_rows
        rej = f.parent.parent / "rejects" / f.name
        rejects = pq.ParquetFile(rej).metadata.num_rows if rej.exists() else 0
        total += rows
        rejects_total += rejects
        table.add_row(f.name, str(rows), str(rejects))
    table.add_row("[bold]total", f"[bold]{total}", f"[bold]{rejects_total}")
    console.print(table)

    first = pq.read_table(files[0]).slice(0, n_rows).to_pylist()
    for i, row in enumerate(first):
        console.print(f"[bold]row {i}[/]")
        console.print(_abbreviate(row), highlight=False)

    if reject_files:
        reasons: dict[str, int] = {}
        for f in reject_files:
            for r in pq.read_table(f, columns=["reason"]).column("reason").to_pylist():
                reasons[r] = reasons.get(r, 0) + 1
        console.print("[bold]rejects by reason[/] " + json.dumps(reasons))

    manifest = path / "manifest.json" if path.is_dir() else None
    if manifest and manifest.exists():
        data = json.loads(manifest.read_text())
        data.pop("shards", None)
        console.print("[bold]manifest[/]")
        console.print_json(json.dumps(data, default=str))
    elif not path.is_dir():
        console.print_json(json.dumps(read_roost_metadata(path), default=str))


def _abbreviate(value, limit: int = 160):
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    if isinstance(value, list):
        return [_abbreviate(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: _abbreviate(v, limit) for k, v in value.items()}
    return value
