"""Reading the multi-GB raw dumps: gzip detected by magic number, inflated by ISA-L when installed (faster than
zlib, which stays the fallback), in a background thread so inflating overlaps parsing (both release the GIL)."""
from __future__ import annotations

import gzip
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from etl.core.stage import StageError

try:
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - depends on the environment
    _igzip = None


def open_decompressed(path: Path) -> BinaryIO:
    """The file's bytes, inflated when it is gzip (by magic number, not by name)."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    if not gz:
        return open(path, "rb")
    return _igzip.open(path, "rb") if _igzip is not None else gzip.open(path, "rb")


def inflated_chunks(path: Path, chunk_bytes: int, depth: int = 2) -> Iterator[bytes]:
    """The decompressed bytes of `path` in chunks, read ahead by a daemon thread.

    A read error (truncated gzip, I/O error) surfaces in the consumer as a StageError that says to re-fetch.
    """
    chunks: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            with open_decompressed(path) as fh:
                while not stop.is_set():
                    chunk = fh.read(chunk_bytes)
                    chunks.put(chunk)
                    if not chunk:
                        return
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it as a StageError
            chunks.put(exc)

    worker = threading.Thread(target=produce, name=f"inflate-{Path(path).name}", daemon=True)
    worker.start()
    try:
        while True:
            item = chunks.get()
            if isinstance(item, Exception):
                raise StageError(f"cannot read {path}: {item} (re-fetch the file: `--force fetch`)") from item
            if not item:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                chunks.get_nowait()
            except queue.Empty:
                worker.join(0.05)
