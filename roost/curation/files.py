"""The cache's files, each written whole through roost.dataset.writer.atomic_path (hidden temp,
fsync, rename): a killed curation leaves a file complete or absent, never partial."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from roost.dataset.writer import atomic_path


def write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_npy(path: Path, x: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(x))


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, default=str)
