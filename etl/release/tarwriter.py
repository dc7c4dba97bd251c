"""WebDataset tars written without `tarfile`: fixed-metadata ustar members, hashed while they are written.

Shard members all look alike (a short ASCII name, mode 0644, uid/gid 0, mtime 0), so the 512-byte ustar header is
a template with three fields filled in. The bytes are exactly what `tarfile` writes for the same members in
USTAR format (tests/test_tarwriter.py checks it) at a fifth of its CPU: `tarfile` rebuilds and re-validates
every header field through `TarInfo`, which was half of the `shards` stage's time. The SHA-256 and size come out
of the same pass, so a finished shard is not read back to be hashed.
"""
from __future__ import annotations

import hashlib
from typing import BinaryIO

BLOCK = 512
RECORD = 20 * BLOCK  # tar archives end on a 10 KiB record boundary, as tarfile and GNU tar write them
NAME_MAX = 100       # ustar's name field; longer names would need the prefix field or a PAX header
MEMBER_MODE = 0o644
MEMBER_MTIME = 0


def _template() -> bytearray:
    header = bytearray(BLOCK)
    header[100:108] = b"%07o\0" % MEMBER_MODE
    header[108:116] = b"0000000\0"  # uid
    header[116:124] = b"0000000\0"  # gid
    header[136:148] = b"%011o\0" % MEMBER_MTIME
    header[148:156] = b"        "  # the checksum is computed with its own field as spaces
    header[156:157] = b"0"          # regular file
    header[257:265] = b"ustar\x0000"
    return header  # uname, gname, devmajor, devminor, prefix: empty (NULs), as for a regular file


_TEMPLATE = bytes(_template())
_TEMPLATE_SUM = sum(_TEMPLATE)  # the name and size fields are NULs in the template: they add their own bytes
_ZEROS = bytes(RECORD)


def member_header(name: str, size: int) -> bytes:
    """The ustar header of a regular file `name` of `size` bytes with the fixed metadata above."""
    raw = name.encode("ascii")
    if not raw or len(raw) > NAME_MAX:
        raise ValueError(f"tar member name must be 1-{NAME_MAX} ASCII bytes, got {name!r}")
    if not 0 <= size < 8 ** 11:
        raise ValueError(f"tar member {name!r}: size {size} does not fit a ustar header")
    size_field = b"%011o\0" % size
    checksum = b"%06o\0 " % (_TEMPLATE_SUM + sum(raw) + sum(size_field))
    return b"".join((raw, _ZEROS[:NAME_MAX - len(raw)], _TEMPLATE[NAME_MAX:124], size_field, _TEMPLATE[136:148],
                     checksum, _TEMPLATE[156:]))


class TarWriter:
    """`add(name, data)` members to an open binary file, then `close()` for the end blocks.

    `sha256` and `bytes` describe everything written so far.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._hash = hashlib.sha256()
        self.bytes = 0

    def _write(self, data: bytes) -> None:
        self._fh.write(data)
        self._hash.update(data)
        self.bytes += len(data)

    def add(self, name: str, data: bytes) -> None:
        self._write(b"".join((member_header(name, len(data)), data, _ZEROS[:-len(data) % BLOCK])))

    def close(self) -> None:
        """Two zero blocks end the archive; zeros up to the record boundary follow."""
        end = 2 * BLOCK
        self._write(_ZEROS[:end + -(self.bytes + end) % RECORD])

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()
