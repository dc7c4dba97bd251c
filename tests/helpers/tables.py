"""Valid node and quarantine tables for stage tests that need an upstream `nodes` stage (edges, labels)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

import schemas


def asin(i: int) -> str:
    return f"B{i:09d}"


def write_nodes(path: Path, n: int, also_buy: dict[int, list[str]] | None = None,
                also_view: dict[int, list[str]] | None = None, paths: list[list[str]] | None = None,
                asins: list[str] | None = None) -> Path:
    """A valid nodes.parquet of n products (ASINs `asin(i)`, or `asins`), with the given lists and category paths."""
    also_buy, also_view = also_buy or {}, also_view or {}
    df = pl.DataFrame({
        "node_id": np.arange(n, dtype=np.int64), "asin": asins or [asin(i) for i in range(n)],
        "title": [f"product {i}" for i in range(n)], "features": [[] for _ in range(n)],
        "description": [""] * n, "store": [None] * n, "main_category": [None] * n,
        "category_path": paths or [["Electronics"] for _ in range(n)], "price": [None] * n,
        "average_rating": [None] * n,
        "rating_number": [None] * n, "image_url": [f"https://img.example/{i}.jpg" for i in range(n)],
        **dict.fromkeys(("image_url_thumb", "image_url_large", "image_url_hi_res"), [None] * n),
        "also_buy": [also_buy.get(i, []) for i in range(n)], "also_view": [also_view.get(i, []) for i in range(n)],
    }, schema_overrides={"store": pl.String, "main_category": pl.String, "price": pl.Float64,
                         "average_rating": pl.Float64, "rating_number": pl.Int64,
                         "features": pl.List(pl.String), "category_path": pl.List(pl.String),
                         "also_buy": pl.List(pl.String), "also_view": pl.List(pl.String)})
    table = schemas.conform(df.to_arrow(), "nodes")
    assert schemas.validate_table(table, "nodes") == []
    pq.write_table(table, path)
    return path


def write_quarantine(path: Path) -> Path:
    pq.write_table(schemas.arrow_schema("quarantine").empty_table(), path)
    return path
