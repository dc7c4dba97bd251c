"""Atomic writes: a reader (or a resumed run) never sees a half-written file under its final name.

Every artifact is written to a temporary name in the same folder, flushed and fsynced, then renamed. A killed
run leaves at most a `*.tmp-*` file behind, which nothing reads and the next run overwrites or removes.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_MARK = ".tmp-"


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block finishes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=final.name + TMP_MARK, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(final: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that becomes `final` when the block finishes."""
    with atomic_path(final) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()


def write_bytes(final: Path, data: bytes) -> None:
    with atomic_open(final, "wb") as fh:
        fh.write(data)


def write_text(final: Path, text: str) -> None:
    write_bytes(final, text.encode("utf-8"))


def write_json(final: Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """JSON plus a final newline; keys in insertion order unless `sort_keys` (the trainer's run files sort)."""
    write_text(final, json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=str) + "\n")


def write_parquet(final: Path, table: Any, **kwargs: Any) -> None:
    """Write a polars DataFrame or a pyarrow Table atomically (zstd by default)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kwargs.setdefault("compression", "zstd")
    if not isinstance(table, pa.Table):
        table = table.to_arrow()
    with atomic_path(final) as tmp:
        pq.write_table(table, tmp, **kwargs)


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files a killed run left in `folder`; return how many."""
    n = 0
    if folder.is_dir():
        for p in folder.rglob(f"*{TMP_MARK}*"):
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
    return n


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (best effort: not every file system can fsync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
