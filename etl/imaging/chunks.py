"""The image chunks: how the `images` stage stores its results and how `shards` reads them back.

`work/images/chunks/part-NNNNNN.parquet` are append-only, each written atomically: image_status columns plus the
resized `jpeg`. A later chunk's row supersedes an earlier one for the same node (a resumed crawl appends, it never
rewrites). Kept apart from the stage so that readers (`shards`) do not import the crawler and its HTTP stack.
"""
from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from etl.core.stage import StageError
from etl.parse.parquet import read_parquet_columns
from slipio import atomic

CHUNK_NAME = re.compile(r"^part-(\d{6,})\.parquet$")


def chunk_schema() -> pa.Schema:
    """The image_status schema with the `jpeg` column the chunks add (after `height`, as in the contract)."""
    base = schemas.arrow_schema("image_status")
    return base.insert(base.get_field_index("height") + 1, pa.field("jpeg", pa.large_binary(), nullable=True))


def chunk_paths(chunks_dir: Path) -> list[Path]:
    """The chunk files in write order (temporary files of a killed write are not chunks)."""
    if not chunks_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in chunks_dir.iterdir() if (m := CHUNK_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def read_latest(chunks_dir: Path) -> pl.DataFrame:
    """The latest row per node over all chunks (image_status columns, no `jpeg`), in node_id order."""
    schema = schemas.arrow_schema("image_status")
    frames = []
    for path in chunk_paths(chunks_dir):
        try:
            frames.append(pl.from_arrow(_status_columns(path, schema)))
        except (OSError, pa.ArrowException) as exc:
            raise StageError(f"image chunk {path} is unreadable ({exc}); delete it to refetch its images, or "
                             f"delete work/images/ to start the images stage over") from None
    if not frames:
        return pl.from_arrow(schemas.arrow_schema("image_status").empty_table())
    return pl.concat(frames).unique(subset="node_id", keep="last", maintain_order=True).sort("node_id")


ADDED_COLUMNS = frozenset({"rendition"})  # image_status v2: chunks written before it lack these (read as null)


def _status_columns(path: Path, schema: pa.Schema) -> pa.Table:
    """The image_status columns of one chunk; a column added since the chunk was written is null there."""
    import pyarrow.parquet as pq

    present = set(pq.read_schema(path).names)
    missing = [name for name in schema.names if name not in present and name in ADDED_COLUMNS]
    table = read_parquet_columns(path, [name for name in schema.names if name not in missing])
    for name in missing:
        table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
    return table.select(schema.names).cast(schema)


def iter_ok_chunks(chunks_dir: Path) -> Iterator[tuple[np.ndarray, pa.Array]]:
    """(node_ids, jpegs) of the rows whose node's latest result is ok, one chunk at a time (bounded memory).

    Whole columns, no Python object per image: `shards` copies a million JPEGs through this.
    """
    paths = chunk_paths(chunks_dir)
    ids = [_int64s(read_parquet_columns(p, ["node_id"]).column("node_id")) for p in paths]
    latest = np.full(max((int(a.max()) for a in ids if len(a)), default=-1) + 1, -1, dtype=np.int64)
    for index, chunk_ids in enumerate(ids):
        latest[chunk_ids] = index  # later chunks overwrite earlier ones: the supersession rule
    for index, (path, chunk_ids) in enumerate(zip(paths, ids, strict=True)):
        table = read_parquet_columns(path, ["status", "jpeg"])
        ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False).to_numpy(zero_copy_only=False)
        keep = ok & (latest[chunk_ids] == index) & _last_of_each(chunk_ids)
        if keep.any():
            yield chunk_ids[keep], table.column("jpeg").combine_chunks().filter(pa.array(keep))


def _last_of_each(ids: np.ndarray) -> np.ndarray:
    """True at the last occurrence of every value (a node twice in one chunk: the later row wins there too)."""
    last = np.zeros(len(ids), dtype=bool)
    _, first_from_end = np.unique(ids[::-1], return_index=True)
    last[len(ids) - 1 - first_from_end] = True
    return last


def _int64s(column: pa.ChunkedArray) -> np.ndarray:
    return column.combine_chunks().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def results_table(rows: list[Any]) -> pa.Table:
    """Rows (objects with the chunk schema's fields as attributes: the crawler's results) as a chunk table."""
    schema = chunk_schema()
    return pa.Table.from_pylist([{f.name: getattr(r, f.name) for f in schema} for r in rows], schema=schema)


class ChunkWriter:
    """Buffers results and writes each full buffer as the next chunk, atomically, in a thread off the event loop.

    `add` takes any object with the chunk schema's fields as attributes (the crawler's results).
    """

    def __init__(self, chunks_dir: Path, chunk_rows: int) -> None:
        self.chunks_dir = chunks_dir
        self.chunk_rows = chunk_rows
        existing = chunk_paths(chunks_dir)
        self.next_index = int(CHUNK_NAME.match(existing[-1].name).group(1)) + 1 if existing else 0
        self.rows: list[Any] = []
        self._write_lock = threading.Lock()  # chunks are written one at a time, in index order

    async def add(self, result: Any) -> None:
        self.rows.append(result)
        if len(self.rows) >= self.chunk_rows:
            rows, self.rows = self.rows, []
            await asyncio.to_thread(self._write, rows)

    def flush(self) -> None:
        """Write what is buffered (end of the crawl, or an interrupted one: finished results are kept)."""
        rows, self.rows = self.rows, []
        if rows:
            self._write(rows)

    def _write(self, rows: list[Any]) -> None:
        self._write_table(results_table(rows))

    def write_table(self, table: pa.Table) -> None:
        """Write a table of finished results (the chunk schema) as chunks of at most `chunk_rows` rows: what a Ray
        task returned, written once by the driver when the task completed."""
        for start in range(0, table.num_rows, self.chunk_rows):
            self._write_table(table.slice(start, self.chunk_rows))

    def _write_table(self, table: pa.Table) -> None:
        schema = chunk_schema()
        table = table.cast(schema) if table.schema != schema else table
        other = [n for n in schema.names if n != "jpeg"]
        with self._write_lock:
            path = self.chunks_dir / f"part-{self.next_index:06d}.parquet"
            self.next_index += 1
            # JPEG bytes do not compress: store them plain and skip dictionaries/statistics for them.
            atomic.write_parquet(path, table, compression={**dict.fromkeys(other, "zstd"), "jpeg": "none"},
                                 use_dictionary=other, write_statistics=other)
