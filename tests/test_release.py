"""Stage `release` through the real framework on hand-made upstream tables: the manifest covers every file with
correct hashes, the card's front matter parses, plots are PNGs, stats add up, a version names one set of bytes,
and a release that fails validation is never put in place. Also `slip-etl stats` (etl.summary)."""
from __future__ import annotations

import hashlib
import json
import os

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

import schemas
from etl.core.stage import StageError, describe_output
from etl.harness import run
from etl.release.validate import validate_release
from etl.summary import print_summary
from helpers.upstream import CORRUPT_NODE, expected_samples, is_kept, make_upstream


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    cfg, opts = make_upstream(tmp)
    records = run(cfg, opts, "release")
    return cfg, opts, records


def test_release_folder_manifest_and_tables(released):
    cfg, opts, records = released
    folder = opts.dataset_root / "releases" / "1.0.0"
    assert records["release"]["stats"]["release_dir"] == "releases/1.0.0", "relative: the dataset root may move"
    assert validate_release(folder) == []
    manifest = json.loads((folder / "manifest.json").read_text())
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for rel, meta in manifest["files"].items():
        data = (folder / rel).read_bytes()
        assert meta == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, rel
    assert manifest["name"] == "slip-amazon-electronics" and manifest["version"] == "1.0.0"
    assert manifest["schema_versions"] == schemas.schema_versions()
    prov = manifest["provenance"]
    assert prov["source"] == "amazon-2023" and prov["category"] == "Electronics"
    assert prov["raw"] == [{"url": "https://example.invalid/meta_Electronics.jsonl.gz",
                            "path": "meta_Electronics.jsonl.gz", "bytes": 18, "sha256": "0" * 64}]
    assert prov["config"] == cfg.model_dump(mode="json")
    assert set(prov["fingerprints"]) == {"fetch", "nodes", "edges", "reviews", "labels", "images", "shards",
                                         "release"}
    assert {"README.md", "stats.json", "labels.json", "plots/degree_distribution.png",
            "plots/class_histogram.png", "shards/sizes.json"} <= on_disk

    nodes = pq.read_table(folder / "nodes.parquet")
    assert schemas.validate_table(nodes, "release_nodes") == []
    assert nodes.num_rows == sum(is_kept(i) for i in range(120)) == records["release"]["counts"]["input"]
    status = dict(zip(nodes.column("node_id").to_pylist(), nodes.column("image_status").to_pylist()))
    assert {n for n, s in status.items() if s == "ok"} == expected_samples()
    assert status[CORRUPT_NODE] == "unusable" and status[5] == "http_error"
    work_tar = next((opts.work_dir / "shards" / "shards").glob("*.tar"))
    assert os.stat(work_tar).st_ino != os.stat(folder / "shards" / work_tar.name).st_ino, "tars are copies"
    assert work_tar.read_bytes() == (folder / "shards" / work_tar.name).read_bytes()


def test_card_front_matter_plots_and_stats(released):
    _, opts, _ = released
    folder = opts.dataset_root / "releases" / "1.0.0"
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "other" and meta["size_categories"] == ["n<1K"]
    assert set(meta["task_categories"]) <= {"image-to-text", "text-to-image", "zero-shot-image-classification",
                                            "graph-ml"}
    configs = {c["config_name"]: c["data_files"] for c in meta["configs"]}  # tests/test_ecosystem.py loads them
    assert configs.keys() == {"nodes", "edges", "reviews", "lp_split"} and configs["edges"] == "edges.parquet"
    assert "| split | nodes | shards | samples |" in text and "Pipeline accounting" in text
    for name in ("degree_distribution.png", "class_histogram.png"):
        data = (folder / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(folder / "plots" / name) as img:
            assert img.format == "PNG" and img.size[0] >= 400

    stats = json.loads((folder / "stats.json").read_text())
    n = stats["nodes"]
    assert sum(stats["degree"]["histogram"].values()) == n
    assert sum(stats["images"]["status_counts"].values()) == n
    assert sum(stats["splits"].values()) == n
    assert sum(c["count"] for c in stats["classes"]["histogram"]) + stats["classes"]["unlabeled"] == n
    assert sum(s["samples"] for s in stats["shards"].values()) == len(expected_samples())
    assert stats["stages"]["shards"]["counts"]["rejected"] == {"bad_jpeg": 1}
    assert set(stats["timings_s"]) == {"fetch", "nodes", "edges", "reviews", "labels", "images", "shards"}
    assert "release_dir" not in stats, "the folder may be moved or published: no absolute path inside it"


def test_same_version_different_bytes_is_refused_and_a_new_version_is_built(released):
    _, opts, _ = released
    from etl.harness import load_config
    from helpers.upstream import SMALL

    changed = load_config(overrides=[*SMALL, "release.license=cc-by-4.0"])
    with pytest.raises(StageError, match="different release of version 1.0.0"):
        run(changed, opts, "release")
    assert validate_release(opts.dataset_root / "releases" / "1.0.0") == [], "the old release is untouched"
    bumped = load_config(overrides=[*SMALL, "release.license=cc-by-4.0", "release.version=1.0.1"])
    record = run(bumped, opts, "release")["release"]
    assert record["stats"]["release_dir"].endswith("1.0.1")
    assert validate_release(opts.dataset_root / "releases" / "1.0.1") == []
    assert not [p for p in (opts.dataset_root / "releases").iterdir() if p.name.startswith(".")]


def test_forced_rebuild_of_the_same_release_replaces_it(tmp_path):
    cfg, opts = make_upstream(tmp_path)
    run(cfg, opts, "release")
    first = json.loads((opts.dataset_root / "releases" / "1.0.0" / "manifest.json").read_text())
    run(cfg, opts, "release", force=("release",))
    second = json.loads((opts.dataset_root / "releases" / "1.0.0" / "manifest.json").read_text())
    assert first["files"] == second["files"], "same inputs, same bytes"


def test_a_release_failing_validation_is_not_put_in_place(tmp_path):
    cfg, opts = make_upstream(tmp_path)
    labels = opts.work_dir / "labels" / "labels.json"
    labels.write_text(labels.read_text().replace('"Group 2"', '"Group X"'))
    # A labels stage that wrote this itself (an edited file alone is refused before assembly: see below).
    record = json.loads((opts.work_dir / "records" / "labels.json").read_text())
    record["outputs"]["labels"] = describe_output(opts.dataset_root, labels)
    (opts.work_dir / "records" / "labels.json").write_text(json.dumps(record))
    with pytest.raises(StageError, match="failed validation") as err:
        run(cfg, opts, "release")
    assert "label 2 is named" in str(err.value)
    releases = opts.dataset_root / "releases"
    assert not (releases / "1.0.0").exists()
    assert not list(releases.iterdir()), "the temporary folder is removed too"


def test_stats_summary_of_dataset_root_and_release(released, capsys, tmp_path):
    _, opts, _ = released
    print_summary(opts.dataset_root)
    text = capsys.readouterr().out
    for stage in ("fetch", "nodes", "edges", "reviews", "labels", "images", "shards", "release"):
        assert stage in text
    assert "bad_jpeg: 1" in text and "no_image" in text and "in-batch neighbour" in text
    print_summary(opts.dataset_root / "releases" / "1.0.0")
    text = capsys.readouterr().out
    assert "release slip-amazon-electronics 1.0.0" in text and "degree mean" in text
    with pytest.raises(FileNotFoundError):
        print_summary(tmp_path / "nothing-here")


def test_a_work_file_edited_behind_the_records_back_is_refused_not_signed(tmp_path):
    """Same size, mtime put back: the skip check cannot see it, but the release checks every byte it takes in."""
    cfg, opts = make_upstream(tmp_path)
    run(cfg, opts, "shards")
    work_tar = sorted((opts.work_dir / "shards" / "shards").glob("*.tar"))[0]
    st = work_tar.stat()
    with open(work_tar, "r+b") as f:  # in place, as an editor or a stray `dd` would
        f.seek(700)
        byte = f.read(1)
        f.seek(700)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(work_tar, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(StageError) as err:
        run(cfg, opts, "release")
    message = str(err.value)
    assert f"{work_tar} is not the file the shards stage wrote" in message and "slip-etl shards --force" in message
    releases = opts.dataset_root / "releases"
    assert not (releases / "1.0.0").exists() and not list(releases.iterdir()), "nothing half-built is left"

    # The same for a table the release reads rather than copies.
    run(cfg, opts, "shards", force=("shards",))
    node_filter = opts.work_dir / "edges" / "node_filter.parquet"
    st = node_filter.stat()
    data = bytearray(node_filter.read_bytes())
    data[-10] ^= 0x01  # inside the footer: still the same size
    node_filter.write_bytes(bytes(data))
    os.utime(node_filter, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(StageError, match="is not the file the edges stage wrote"):
        run(cfg, opts, "release")
