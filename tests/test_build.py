"""`slip-etl build --source sample` end to end through the real CLI, loopback server and every stage."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = ["--set", "sources.sample.sample_products=400", "--set", "labels.min_class_size=5",
         "--set", "shards.max_samples=64"]


def slip_etl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=900)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    proc = slip_etl("build", "--category", "electronics", "--source", "sample", "--out", str(out), "--no-progress",
                    *SMALL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_build_prints_release_and_it_validates(built):
    out, proc = built
    release = Path(proc.stdout.strip().splitlines()[-1])
    assert release.is_dir() and release.parent.name == "releases"
    for name in ("nodes.parquet", "edges.parquet", "reviews.parquet", "labels.json", "stats.json",
                 "manifest.json", "README.md", "shards/sizes.json"):
        assert (release / name).exists(), name
    check = slip_etl("validate", str(release))
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_stage_accounts_for_its_input(built):
    out, _ = built
    records = sorted((out / "sample-electronics" / "work" / "records").glob("*.json"))
    assert {p.stem for p in records} >= {"fetch", "nodes", "edges", "reviews", "labels", "images", "shards",
                                         "release"}
    for p in records:
        c = json.loads(p.read_text())["counts"]
        assert c["input"] == c["kept"] + sum(c["rejected"].values()) + sum(c["filtered"].values()), p.stem


def test_second_build_does_no_work(built):
    out, first = built
    before = {p.name: p.read_text() for p in (out / "sample-electronics" / "work" / "records").glob("*.json")}
    again = slip_etl("build", "--category", "electronics", "--source", "sample", "--out", str(out),
                     "--no-progress", *SMALL)
    assert again.returncode == 0, again.stderr[-3000:]
    after = {p.name: p.read_text() for p in (out / "sample-electronics" / "work" / "records").glob("*.json")}
    assert before == after, "no stage may run again"
    assert again.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]
    assert "running" not in again.stderr


def test_malformed_pipelines_yaml_names_the_key(tmp_path):
    bad = tmp_path / "pipelines.yaml"
    bad.write_text("edges:\n  min_wieght: 2\n")
    proc = slip_etl("nodes", "--source", "sample", "--out", str(tmp_path), "--config", str(bad))
    assert proc.returncode == 2
    assert "edges.min_wieght" in proc.stderr and "min_weight" in proc.stderr


def test_every_command_has_help():
    for cmd in ("build", "fetch", "nodes", "edges", "reviews", "labels", "images", "shards", "release", "stats",
                "validate", "publish", "sample"):
        proc = slip_etl(cmd, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout, cmd


def build_again(out: Path) -> subprocess.CompletedProcess:
    return slip_etl("build", "--category", "electronics", "--source", "sample", "--out", str(out), "--no-progress",
                    *SMALL)


def flip_byte(path: Path, offset: int = 700) -> None:
    """Edit a file in place (same inode, same size), as an editor or a stray `dd conv=notrunc` would."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_edited_release_or_work_shards_are_caught_and_never_re_signed(built, tmp_path):
    src, first = built
    out = tmp_path / "out"
    shutil.copytree(src, out)
    root = out / "sample-electronics"
    release = root / "releases" / Path(first.stdout.strip().splitlines()[-1]).name
    manifest = json.loads((release / "manifest.json").read_text())
    tar = sorted((release / "shards").glob("*.tar"))[0]
    work_tar = root / "work" / "shards" / "shards" / tar.name
    want = manifest["files"][f"shards/{tar.name}"]["sha256"]
    work_bytes = work_tar.read_bytes()

    # An edited release shard: validate reports it, the work copy is untouched (no shared inode).
    flip_byte(tar)
    check = slip_etl("validate", str(release))
    assert check.returncode == 1 and f"shards/{tar.name}" in check.stdout, check.stdout + check.stderr
    assert work_tar.read_bytes() == work_bytes

    # An edited work shard too: the next build re-creates both instead of saying "done" over them.
    flip_byte(work_tar)
    again = build_again(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "shards   running" in again.stderr and "release  running" in again.stderr, again.stderr[-3000:]
    assert "shards: writing 1 of" in again.stderr, "only the edited shard is rewritten"
    assert hashlib.sha256(work_tar.read_bytes()).hexdigest() == want
    assert Path(again.stdout.strip().splitlines()[-1]) == release
    assert slip_etl("validate", str(release)).returncode == 0
    rebuilt = json.loads((release / "manifest.json").read_text())
    timed = {"stats.json", "README.md"}  # they carry the stage durations, and shards ran again
    assert {k: v for k, v in rebuilt["files"].items() if k not in timed} == {
        k: v for k, v in manifest["files"].items() if k not in timed}, "the original bytes and hashes"


def test_a_moved_or_copied_dataset_root_is_used_where_it_is_now(built, tmp_path):
    src, first = built
    copied = tmp_path / "copied"
    shutil.copytree(src, copied, copy_function=shutil.copyfile)  # a plain copy: new inodes, new mtimes
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(copied, moved)
    records = moved / "sample-electronics" / "work" / "records"
    before = {p.name: p.read_text() for p in records.glob("*.json")}
    assert not [name for name, text in before.items() if str(src) in text], "no record names the old place"

    again = build_again(moved)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "running" not in again.stderr, "nothing may be rebuilt"
    name = Path(first.stdout.strip().splitlines()[-1]).name
    release = moved.resolve() / "sample-electronics" / "releases" / name
    assert again.stdout.strip().splitlines()[-1] == str(release)
    assert {p.name: p.read_text() for p in records.glob("*.json")} == before
    check = slip_etl("validate", str(release))
    assert check.returncode == 0, check.stdout + check.stderr
