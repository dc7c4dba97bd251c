"""etl.release.tarwriter: the hand-built ustar members are byte-for-byte what tarfile writes, and read back by
tarfile."""
from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from etl.release.tarwriter import MEMBER_MODE, MEMBER_MTIME, TarWriter, member_header


def tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MEMBER_MTIME, MEMBER_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ours(members: list[tuple[str, bytes]]) -> tuple[bytes, TarWriter]:
    buf = io.BytesIO()
    writer = TarWriter(buf)
    for name, data in members:
        writer.add(name, data)
    writer.close()
    return buf.getvalue(), writer


@pytest.mark.parametrize("members", [
    [],
    [("0000000001.jpg", b"\xff\xd8\xff" + bytes(range(256)) * 40), ("0000000001.txt", "Kabel – USB-C".encode()),
     ("0000000001.json", b'{"node_id":1}')],
    [("a.txt", b""), ("b.bin", bytes(512)), ("c.bin", bytes(513)), ("d.bin", bytes(10240 - 1024))],
    [(f"{i:010d}.jpg", bytes([i % 256]) * (i * 37 % 2000)) for i in range(60)],
])
def test_bytes_equal_tarfiles_and_hash_and_size_describe_them(members):
    data, writer = ours(members)
    assert data == tarfile_bytes(members)
    assert writer.bytes == len(data) and writer.sha256 == hashlib.sha256(data).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == members


@pytest.mark.parametrize("name, size", [("", 1), ("x" * 101, 1), ("ключ.txt", 1), ("a.txt", 8 ** 11)])
def test_names_and_sizes_a_ustar_header_cannot_hold_are_refused(name, size):
    with pytest.raises(ValueError):
        member_header(name, size)
