"""validate_release on a real release built by the release stage, then broken one way at a time. Where the break
would also change a file's hash, the manifest is rewritten to match, so each test proves its own check fires."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl.harness import run
from etl.release.validate import validate_release
from helpers.upstream import make_upstream


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("validate")
    cfg, opts = make_upstream(tmp)
    return Path(run(cfg, opts, "release")["release"]["stats"]["release_dir"])


@pytest.fixture()
def release(good, tmp_path) -> Path:
    copy = tmp_path / "release"
    shutil.copytree(good, copy)
    return copy


def refresh_manifest(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size,
                                                            "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                         for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def shard(folder: Path, index: int = 0) -> Path:
    return sorted((folder / "shards").glob("train-*.tar"))[index]


def test_a_good_release_passes(good):
    assert validate_release(good) == []


def test_flipped_byte_is_a_sha256_mismatch(release):
    tar = shard(release)
    data = bytearray(tar.read_bytes())
    data[700] ^= 0x01  # inside the first JPEG
    tar.write_bytes(bytes(data))
    problems = validate_release(release)
    assert any(p.startswith(f"shards/{tar.name}: sha256 mismatch (manifest ") for p in problems), problems


def test_missing_shard(release):
    tar = shard(release, 1)
    tar.unlink()
    problems = validate_release(release)
    assert f"shards/{tar.name}: listed in the manifest but missing" in problems
    assert any(f"lists {tar.name}, which is missing" in p for p in problems)
    assert any("has image_status ok but is in no shard" in p for p in problems)


def test_dangling_edge(release):
    edges = pq.read_table(release / "edges.parquet")
    extra = pa.table({"src": pa.array([1], pa.int64()), "dst": pa.array([99999], pa.int64()),
                      "weight": pa.array([1.0], pa.float32()), "kind": pa.array(["copurchase"], pa.large_string())})
    pq.write_table(pa.concat_tables([edges, extra.cast(edges.schema)]), release / "edges.parquet")
    refresh_manifest(release)
    assert validate_release(release) == ["edges.parquet: dst 99999 is not a node"]


def test_duplicate_key_across_shards(release):
    source = shard(release)
    with tarfile.open(source) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()[:3]]
    copy = release / "shards" / "train-000099.tar"
    with tarfile.open(copy, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    sizes = json.loads((release / "shards" / "sizes.json").read_text())
    sizes[copy.name] = 1
    (release / "shards" / "sizes.json").write_text(json.dumps(sizes))
    refresh_manifest(release)
    key = members[0][0].name.split(".")[0]
    assert validate_release(release) == [f"shards: key {key} appears 2 times ({source.name}, {copy.name})"]


@pytest.mark.parametrize("cut", [1000, 1024, None])  # mid-block, mid-member on a block boundary, before the end
def test_truncated_tar(release, cut):
    tar = shard(release)
    data = tar.read_bytes()
    if cut is None:  # cut on a block boundary right after the last member: only the end-of-archive blocks go
        with tarfile.open(tar) as t:
            last = t.getmembers()[-1]
        cut = last.offset_data + -(-last.size // 512) * 512
    tar.write_bytes(data[:cut])
    refresh_manifest(release)
    problems = validate_release(release)
    assert any(p.startswith(f"shards/{tar.name}: truncated") for p in problems), problems


def test_schema_violation(release):
    nodes = pq.read_table(release / "nodes.parquet")
    split = nodes.column("split").to_pylist()
    split[0] = None
    nodes = nodes.set_column(nodes.schema.get_field_index("split"), "split", pa.array(split, pa.large_string()))
    pq.write_table(nodes, release / "nodes.parquet")
    refresh_manifest(release)
    problems = validate_release(release)
    assert "nodes.parquet: release_nodes: column 'split' has 1 nulls but is not nullable" in problems


def test_unlisted_file_and_bad_sample_json(release):
    (release / "notes.txt").write_text("hello")
    tar = shard(release)
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as t:
        for info, data in members:
            if info.name.endswith(".json") and info.name == members[2][0].name:
                data = json.dumps({**json.loads(data), "label": "seven"}).encode()
                info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    problems = validate_release(release)
    assert "notes.txt: not listed in the manifest" in problems
    assert any("label' should be int64, got str" in p for p in problems), problems


def test_cli_exit_codes(good, release):
    def validate(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "etl.cli", "validate", str(path)], capture_output=True,
                              text=True, cwd=Path(__file__).parent.parent, env={**os.environ}, timeout=120)

    ok = validate(good)
    assert ok.returncode == 0 and ok.stdout.strip() == f"OK {good}"
    shard(release).unlink()
    bad = validate(release)
    assert bad.returncode == 1 and "PROBLEM shards/" in bad.stdout
