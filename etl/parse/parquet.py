"""Reading a few columns of a Parquet file cheaply (stages and the image chunk reader share it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def read_parquet_columns(path: Path, columns: list[str]) -> Any:
    """A pyarrow Table of `columns` (ParquetFile, not read_table: its dataset layer costs ~0.3 s of imports)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        return parquet.read(columns=columns)
