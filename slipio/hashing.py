"""File hashing shared by the ETL (manifests, resumable downloads, shard checks) and anything reading a release."""
from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20  # read a file in 1 MiB blocks: constant memory for shards and raw dumps of any size


def file_sha256(path: Path, chunk: int = CHUNK) -> tuple[str, int]:
    """(hex SHA-256, size in bytes) of the file at `path`, read once."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size
