"""Reading a Hub dataset for a sharded build: every shard re-streaming the set from its first
row (roost before issue 19: `load_dataset(..., streaming=True)` then islice per shard) against
loading it once into the Arrow cache and slicing (roost.dataset.sources now).

The dataset is a local folder in the Hub's layout (a card with a `configs:` block, Parquet
under main/), read by the same `datasets` calls roost makes after its one download, so no
network time is in either figure. Rows are GSM8K-sized (a question and a worked answer).

For each (rows, shards): seconds to hand every shard its rows, both ways, and the ratio
streamed / sliced. The streamed figure grows with rows x shards; the sliced one with rows.

    python bench/bench_hub_input.py --rows 10000 50000 --shards 10 50
"""
from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CARD = "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: main/train-*.parquet\n---\n"


def make(folder: Path, rows: int) -> None:
    (folder / "main").mkdir(parents=True)
    (folder / "README.md").write_text(CARD)
    table = pa.table({"question": [f"Tom has {i} apples and buys {i % 7} more. How many now?" for i in range(rows)],
                      "answer": [f"He has {i} + {i % 7} = {i + i % 7} apples.\n#### {i + i % 7}" for i in range(rows)]})
    pq.write_table(table, folder / "main" / "train-0.parquet", row_group_size=10_000)


def streamed(folder: Path, rows: int, shards: int) -> float:
    import datasets

    t0, size = time.perf_counter(), -(-rows // shards)
    for k in range(shards):
        stream = datasets.load_dataset(str(folder), name="main", split="train", streaming=True)
        got = list(itertools.islice(iter(stream), k * size, min(rows, (k + 1) * size)))
        assert len(got) == min(rows, (k + 1) * size) - k * size
    return time.perf_counter() - t0


def sliced(folder: Path, rows: int, shards: int) -> float:
    import datasets

    from roost.dataset.sources import Source

    t0, size = time.perf_counter(), -(-rows // shards)
    ds = datasets.load_dataset(str(folder), name="main", split="train")  # roost.dataset.sources._hub_table's call
    source = Source({"kind": "hub"}, ds.data.table.schema, _table=ds.data.table)
    for k in range(shards):
        got = [r for batch in source.rows(k * size, min(rows, (k + 1) * size)) for r in batch]
        assert len(got) == min(rows, (k + 1) * size) - k * size
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--shards", type=int, nargs="+", default=[10, 50])
    args = ap.parse_args()
    print(f"{'rows':>8} {'shards':>6} {'streamed s':>11} {'sliced s':>9} {'streamed/sliced':>16}  load")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "cache")  # before datasets is imported
        for rows in args.rows:
            for shards in args.shards:
                folder = Path(tmp) / f"set-{rows}-{shards}"  # a new folder: the Arrow cache is built anew
                make(folder, rows)
                base = streamed(folder, rows, shards)
                new = sliced(folder, rows, shards)  # includes the one conversion into the Arrow cache
                print(f"{rows:>8} {shards:>6} {base:>11.2f} {new:>9.2f} {base / new:>15.1f}x  {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
