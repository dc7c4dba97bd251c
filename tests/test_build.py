"""`slip-etl build --source sample` end to end through the real CLI, loopback server and every stage."""
from __future__ import annotations

import json
import os
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
