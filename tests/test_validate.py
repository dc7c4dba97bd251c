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
    return opts.dataset_root / run(cfg, opts, "release")["release"]["stats"]["release_dir"]  # relative to the root


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


def _sign(manifest: dict, rel: str, target: Path) -> None:
    """List `rel` in the manifest with the real bytes and sha256 of `target`, as a hostile builder would."""
    data = target.read_bytes()
    manifest["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_manifest_paths_that_escape_the_release(release, tmp_path):
    """'..', an absolute path and a listed symlink, each signed with the real hash, are each one problem line."""
    secret = release.parent / "secret.txt"
    secret.write_text("host secret next to the release")
    host = tmp_path / "host" / "passwd"
    host.parent.mkdir()
    host.write_text("root:x:0:0::/root:/bin/sh\n")
    (release / "linked.txt").symlink_to(secret)
    manifest = json.loads((release / "manifest.json").read_text())
    _sign(manifest, "../secret.txt", secret)
    _sign(manifest, str(host), host)  # absolute
    _sign(manifest, "linked.txt", secret)
    (release / "manifest.json").write_text(json.dumps(manifest))
    problems = validate_release(release)
    assert sorted(problems) == sorted([
        f"manifest.json: lists {str(host)!r}, which is not a safe release path (must be relative, not absolute); "
        "list only regular files inside the release",
        "manifest.json: lists '../secret.txt', which is not a safe release path (must not contain '..' segments); "
        "list only regular files inside the release",
        "manifest.json: lists 'linked.txt', which is not a safe release path ('linked.txt' is a symlink; symlinks "
        "are not allowed); list only regular files inside the release",
    ]), problems


def test_unlisted_symlink_and_fifo_inside_the_release(release):
    """Nothing but regular files and folders may sit in a release, listed or not; a FIFO is never opened."""
    (release / "shards" / "leak.tar").symlink_to("/etc/hostname")
    os.mkfifo(release / "pipe")
    problems = validate_release(release)  # would block forever if it opened the FIFO
    assert problems == ["pipe: not a regular file (a FIFO); a release holds only regular files and folders",
                        "shards/leak.tar: not a regular file (a symlink); a release holds only regular files and "
                        "folders"], problems


def _set_manifest(folder: Path, **fields: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(fields)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_version_edited_alone_is_reported(good, release):
    """Only the manifest's version changes (nothing re-signed: manifest.json is not listed in itself)."""
    name = json.loads((good / "manifest.json").read_text())["name"]
    _set_manifest(release, version="9.9.9")
    problems = validate_release(release)
    assert problems == [
        f"manifest.json: version '9.9.9' does not match the card's pretty_name ('{name} {good.name}', version "
        f"'{good.name}')",
        f"manifest.json: version '9.9.9' does not match the card's title ('{name} {good.name}', version "
        f"'{good.name}')",
    ], problems
    # in the build layout the folder's name is checked as well
    laid_out = release.parent / "releases" / good.name
    laid_out.parent.mkdir()
    release.rename(laid_out)
    problems = validate_release(laid_out)
    assert f"manifest.json: version '9.9.9' does not match the release folder's name '{good.name}'" in problems


def test_manifest_name_edited_alone_is_reported(good, release):
    name = json.loads((good / "manifest.json").read_text())["name"]
    _set_manifest(release, name="someone-else")
    problems = validate_release(release)
    assert problems == [
        f"manifest.json: name 'someone-else' does not match the card's pretty_name ('{name} {good.name}', name "
        f"'{name}')",
        f"manifest.json: name 'someone-else' does not match the card's title ('{name} {good.name}', name "
        f"'{name}')",
    ], problems


def test_release_folder_renamed_to_another_version(good, tmp_path):
    moved = tmp_path / "releases" / "2.0.0"
    shutil.copytree(good, moved)
    assert validate_release(moved) == [
        f"manifest.json: version '{good.name}' does not match the release folder's name '2.0.0'"]
