"""Reading the multi-GB raw dumps: gzip detected by magic number, inflated by ISA-L when installed (faster than
zlib, which stays the fallback), in a background thread so inflating overlaps parsing (both release the GIL).

A file named `*.gz` that does not start with the gzip magic (an HTML error page or a proxy's login page saved
under the dump's name) is refused, naming its first bytes: read as text it would become one bad line and the
build would fail stages later with a misleading message. Files with other names are read as plain text."""
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


GZIP_MAGIC = b"\x1f\x8b"
_SHOWN_BYTES = 64  # of a file that is not gzip, in the error


def printable(data: bytes) -> str:
    """Bytes as one printable line: ASCII as itself, everything else (and the backslash) as `\\xNN`."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in data)


def open_decompressed(path: Path) -> BinaryIO:
    """The file's bytes, inflated when it is gzip (by magic number); a `.gz` name without the magic is an error."""
    with open(path, "rb") as fh:
        head = fh.read(_SHOWN_BYTES)
    if not head.startswith(GZIP_MAGIC):
        if Path(path).name.lower().endswith(".gz"):
            shown = f'starts with "{printable(head)}"' if head else "it is empty"
            raise StageError(f"{path} is not gzip ({shown}); {source_hint(path)}")
        return open(path, "rb")
    return _igzip.open(path, "rb") if _igzip is not None else gzip.open(path, "rb")


def source_hint(path: Path) -> str:
    """What to do about a damaged raw file: `--force fetch` alone would copy the same bytes from a mirror again."""
    return (f"compare the size and sha256 of {Path(path).name} at its origin (the --mirror folder or URL, when one "
            "is used) with those in the fetch record (work/records/fetch.json); if the origin's copy is bad too, "
            "download it again from the original source, then rerun with `--force fetch`")


def inflated_chunks(path: Path, chunk_bytes: int, depth: int = 2) -> Iterator[bytes]:
    """The decompressed bytes of `path` in chunks, read ahead by a daemon thread.

    A `.gz` file that is not gzip, or a read error (truncated gzip, I/O error), surfaces in the consumer as a
    StageError that says what to check (`source_hint`).
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
            if isinstance(item, StageError):
                raise item
            if isinstance(item, Exception):
                raise StageError(f"cannot read {path}: {item} (the file is truncated or corrupt; "
                                 f"{source_hint(path)})") from item
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
