"""The trainer's `Release` reader on a synthetic release and on one the ETL built from the sample: shards per
split against sizes.json and the tars themselves, nodes with their image status, edges by kind, labels; and the
refusals (another MAJOR schema version, a missing image_status column, missing files) with messages that name
the file. `slip-etl validate` reports a bumped major with the same `schemas` check."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import schemas
from trainer.cli import train_main
from trainer.config import TrainSetupError
from trainer.data import decode_samples, resolve_shards, tar_samples
from trainer.release import SPLITS, Release, ReleaseError, ReleaseFileMissing, read_edges
from trainer.synthetic import make_synthetic_release

SAMPLE = ["--set", "sources.sample.sample_products=400", "--set", "labels.min_class_size=5",
          "--set", "shards.max_samples=64"]
MODEL = str(Path(__file__).resolve().parents[1] / "trainer" / "model_configs" / "slip-tiny.json")


def slip_etl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "etl.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=900)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic_release(tmp_path_factory.mktemp("synthetic") / "rel", n_nodes=120, n_classes=6,
                                  shard_size=16, image_size=16)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A release the real ETL built from the embedded sample (every stage, through the CLI)."""
    out = tmp_path_factory.mktemp("built")
    proc = slip_etl("build", "--category", "electronics", "--source", "sample", "--out", str(out), "--no-progress",
                    *SAMPLE)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(params=["synthetic", "built"])
def any_release(request) -> Path:
    return request.getfixturevalue(request.param)


def copy_of(release: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "release"
    shutil.copytree(release, dest)
    return dest


def set_schema_version(release: Path, name: str, version: object) -> None:
    path = release / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["schema_versions"][name] = version
    path.write_text(json.dumps(manifest))


def shard_node_ids(shards: list[str]) -> list[int]:
    skipped: Counter = Counter()
    ids = [s["node_id"] for s in decode_samples(tar_samples(shards, skipped), skipped)]
    assert not skipped, skipped
    return ids


def test_shards_per_split_match_sizes_json_and_the_tars(any_release: Path):
    release = Release(any_release)
    sizes_file = json.loads((any_release / "shards" / "sizes.json").read_text())
    assert release.sizes() == sizes_file
    listed = []
    for split in SPLITS:
        shards = release.shards(split)
        names = [Path(s).name for s in shards]
        assert names == sorted(n for n in sizes_file if n.startswith(f"{split}-")), split
        assert release.sizes(split) == {n: sizes_file[n] for n in names}
        for shard in shards:  # the counts sizes.json promises are what the tars hold
            assert len(shard_node_ids([shard])) == sizes_file[Path(shard).name], shard
        listed += shards
    assert release.all_shards() == listed
    assert resolve_shards(release=str(any_release), split="val") == release.shards("val")


def test_nodes_carry_their_image_status_and_split(any_release: Path):
    release = Release(any_release)
    nodes = release.nodes()
    table = pq.read_table(any_release / "nodes.parquet")
    assert len(nodes["node_id"]) == table.num_rows
    assert nodes["has_image"].tolist() == [s == "ok" for s in table.column("image_status").to_pylist()]
    for split in SPLITS:  # a node has an image exactly when its split's shards hold its sample
        in_split = nodes["split"] == split
        assert sorted(shard_node_ids(release.shards(split))) == sorted(
            nodes["node_id"][in_split & nodes["has_image"]].tolist()), split
    assert release.nodes() is nodes  # read once


def test_edges_by_kind_and_labels(any_release: Path):
    release = Release(any_release)
    edges = pq.read_table(any_release / "edges.parquet")
    by_kind = Counter(edges.column("kind").to_pylist())
    assert release.edges().num_rows == edges.num_rows
    for kind, n in by_kind.items():
        only = release.edges(kinds=[kind])
        assert only.num_rows == n and set(only.column("kind").to_pylist()) == {kind}
    with pytest.raises(ReleaseError, match="no_such_kind"):
        release.edges(kinds=["no_such_kind"])
    classes = json.loads((any_release / "labels.json").read_text())["classes"]
    assert release.class_names() == [c["name"] for c in sorted(classes, key=lambda c: c["id"])]
    assert release.labels()["classes"] == classes


def test_built_release_agrees_with_its_own_stats(built: Path):
    """stats.json is written by the ETL from its own tables: the reader must see the same release."""
    stats = json.loads((built / "stats.json").read_text())
    release = Release(built)
    nodes = release.nodes()
    assert len(nodes["node_id"]) == stats["nodes"]
    assert int(nodes["has_image"].sum()) == stats["images"]["status_counts"].get("ok", 0)
    assert dict(Counter(nodes["split"].tolist())) == stats["splits"]
    assert dict(Counter(release.edges().column("kind").to_pylist())) == stats["edges"]["by_kind"]
    assert len(release.class_names()) == stats["classes"]["n_classes"]
    for split, entry in stats["shards"].items():
        assert len(release.shards(split)) == entry["shards"]
        assert sum(release.sizes(split).values()) == entry["samples"]


def test_unknown_major_schema_version_is_refused(synthetic: Path, tmp_path: Path, capsys):
    release = copy_of(synthetic, tmp_path)
    supported = schemas.schema_versions()["release_nodes"]
    set_schema_version(release, "release_nodes", supported + 1)
    with pytest.raises(ReleaseError) as err:
        Release(release)
    message = str(err.value)
    assert str(release / "manifest.json") in message
    assert f"'release_nodes' has version {supported + 1}, this code supports version {supported}" in message
    # slip-train refuses it as bad input (exit 2) before building the model
    assert train_main(["--release", str(release), "--method", "clip", "--model", MODEL, "--steps", "1",
                       "--workers", "0", "--out", str(tmp_path / "run")]) == 2
    assert f"{release / 'manifest.json'}: schema 'release_nodes' has version" in capsys.readouterr().err


def test_schema_versions_minor_passes_missing_or_garbage_is_refused(synthetic: Path, tmp_path: Path):
    release = copy_of(synthetic, tmp_path)
    supported = schemas.schema_versions()["edges"]
    set_schema_version(release, "edges", f"{supported}.3")
    assert len(Release(release).edges()) > 0  # a minor change only adds
    set_schema_version(release, "edges", "latest")
    with pytest.raises(ReleaseError, match="'latest' is not a version number"):
        Release(release)
    manifest = json.loads((release / "manifest.json").read_text())
    del manifest["schema_versions"]["edges"]
    (release / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ReleaseError, match="no version for schema 'edges'"):
        Release(release)
    assert len(schemas.check_schema_versions({}, ["edges"])) == 1  # only the schemas asked for


def test_missing_image_status_column_is_an_error_naming_the_file(synthetic: Path, tmp_path: Path):
    release = copy_of(synthetic, tmp_path)
    path = release / "nodes.parquet"
    pq.write_table(pq.read_table(path).drop(["image_status"]), path)
    opened = Release(release)  # opening reads no table
    with pytest.raises(ReleaseError, match="image_status") as err:
        opened.nodes()
    assert str(path) in str(err.value)


def test_opening_is_lazy_and_missing_files_are_named(synthetic: Path, tmp_path: Path):
    release = copy_of(synthetic, tmp_path)
    (release / "nodes.parquet").write_bytes(b"not parquet")
    (release / "edges.parquet").unlink()
    opened = Release(release)
    assert len(opened.shards("train")) > 0  # shards need neither table
    with pytest.raises(ReleaseError, match="unreadable Parquet"):
        opened.nodes()
    with pytest.raises(ReleaseFileMissing, match="has no edges.parquet") as err:
        opened.edges()
    assert isinstance(err.value, TrainSetupError) and isinstance(err.value, FileNotFoundError)
    (release / "labels.json").write_text(json.dumps({"classes": [{"id": 1, "name": "a"}]}))
    with pytest.raises(ReleaseError, match="class ids must be 0..0"):
        opened.class_names()
    (release / "manifest.json").unlink()
    with pytest.raises(ReleaseFileMissing, match="has no manifest.json"):
        Release(release)
    with pytest.raises(ReleaseFileMissing, match="not a folder"):
        Release(tmp_path / "nowhere")


def test_bare_edges_file_without_a_release(synthetic: Path, tmp_path: Path):
    """`--shards PATTERN --graph FILE`: the edges file is read by the same reader, no manifest needed."""
    path = tmp_path / "graph.parquet"
    shutil.copyfile(synthetic / "edges.parquet", path)
    table = read_edges(path, kinds=["copurchase"])
    assert table.column_names == ["src", "dst", "weight", "kind"]
    assert np.array_equal(table.column("src").to_numpy(), pq.read_table(path).column("src").to_numpy())
    pq.write_table(pq.read_table(path).drop(["weight"]), path)
    with pytest.raises(ReleaseError, match="no column 'weight'"):
        read_edges(path)


def test_validate_reports_a_bumped_major(built: Path, tmp_path: Path):
    release = copy_of(built, tmp_path)
    supported = schemas.schema_versions()["release_nodes"]
    set_schema_version(release, "release_nodes", supported + 1)
    check = slip_etl("validate", str(release))
    assert check.returncode == 1
    assert check.stdout.splitlines() == [f"PROBLEM manifest.json: schema 'release_nodes' has version {supported + 1}, "
                                         f"this code supports version {supported} (major {supported} only)"]
    set_schema_version(release, "release_nodes", supported)
    assert slip_etl("validate", str(release)).returncode == 0
