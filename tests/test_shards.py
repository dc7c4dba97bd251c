"""Stage `shards` on hand-made upstream tables (real Parquet, real JPEG bytes in image chunks), run through the real
framework: members, keys, sizes.json, accounting, determinism, byte limits, and a SIGKILL mid-run then resume.

The upstream tables come from helpers.upstream (shared with test_release, test_validate and test_publish).
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pytest
import webdataset as wds
from PIL import Image

import schemas
from etl.core.stage import describe_output
from etl.harness import run
from etl.stages.shards import cap_text, jpeg_mask, make_caption
from helpers.upstream import (
    COMMUNITY,
    REPLACED_NODE,
    RETRIED_NODE,
    SMALL,
    expected_samples,
    image_status_of,
    is_kept,
    label_of,
    make_upstream,
    split_of,
    tiny_jpeg,
)

TESTS = Path(__file__).parent


def read_shards(folder: Path) -> dict[str, list[tuple[str, dict[str, bytes]]]]:
    """shard name -> [(key, {ext: bytes})] in tar order."""
    out = {}
    for tar_path in sorted(folder.glob("*.tar")):
        samples: list[tuple[str, dict[str, bytes]]] = []
        with tarfile.open(tar_path) as tar:
            for info in tar:
                key, ext = info.name.split(".", 1)
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][ext] = tar.extractfile(info).read()
        out[tar_path.name] = samples
    return out


@pytest.fixture()
def built(tmp_path):
    cfg, opts = make_upstream(tmp_path)
    records = run(cfg, opts, "shards")
    return opts, records["shards"], opts.work_dir / "shards" / "shards"


def test_members_keys_sizes_and_accounting(built):
    opts, record, folder = built
    shards = read_shards(folder)
    sizes = json.loads((folder / "sizes.json").read_text())
    assert sizes == {name: len(samples) for name, samples in shards.items()}
    assert max(sizes.values()) <= 8
    seen = []
    for name, samples in shards.items():
        split = name.split("-")[0]
        for key, members in samples:
            assert list(members) == ["jpg", "txt", "json"]
            meta = json.loads(members["json"])
            assert schemas.validate_record(meta, "shard_sample") == []
            assert key == f"{meta['node_id']:010d}" and meta["split"] == split == split_of(meta["node_id"])
            assert meta["label"] == label_of(meta["node_id"]) and meta["asin"] == f"B{meta['node_id']:09d}"
            Image.open(io.BytesIO(members["jpg"])).load()
            assert members["txt"].decode().startswith(f"Product {meta['node_id']} | model")
            seen.append(meta["node_id"])
    assert sorted(seen) == sorted(expected_samples())
    by_key = {k: m for samples in shards.values() for k, m in samples}
    assert by_key[f"{REPLACED_NODE:010d}"]["jpg"] == tiny_jpeg(1000), "a later chunk's row must win"
    assert f"{RETRIED_NODE:010d}" in by_key

    kept = sum(is_kept(i) for i in range(120))
    no_image = sum(is_kept(i) and image_status_of(i) != "ok" for i in range(120))
    assert record["counts"] == {"input": kept, "kept": len(expected_samples()), "rejected": {"bad_jpeg": 1},
                                "filtered": {"no_image": no_image}}
    stats = record["stats"]
    assert stats["samples"] == len(seen) and stats["shards"] == len(shards)
    assert set(stats["ordering"]) >= {"64", "256", "1024"}
    assert not (opts.work_dir / "shards" / "staging").exists(), "staging is removed once every shard is written"
    # the hashes taken while writing are the files' hashes
    assert record["outputs"]["shards"] == describe_output(opts.dataset_root, folder)


def test_graph_order_keeps_clusters_contiguous_and_webdataset_reads_it(built):
    _, _, folder = built
    train = sorted(folder.glob("train-*.tar"))
    metas = [json.loads(m["json"]) for name in train for _, m in read_shards(folder)[name.name]]
    clusters = [m["cluster"] for m in metas]
    runs = [c for i, c in enumerate(clusters) if i == 0 or clusters[i - 1] != c]
    assert len(runs) == len(set(clusters)), "each cluster's samples are written consecutively"
    assert min(clusters) >= 0
    # neighbours share clusters far more often than chance
    node_cluster = {m["node_id"]: m["cluster"] for m in metas}
    pairs = [(a, b) for a in node_cluster for b in (a + 1, a + 3) if b in node_cluster
             and a // COMMUNITY == b // COMMUNITY]
    assert sum(node_cluster[a] == node_cluster[b] for a, b in pairs) / len(pairs) > 0.6

    urls = [str(p) for p in train]
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "txt", "json")
    read = list(dataset)
    assert len(read) == len(metas)
    assert all(isinstance(img, Image.Image) and isinstance(txt, str) for img, txt, _ in read)


def test_two_runs_are_byte_identical(tmp_path):
    outputs = []
    for name in ("a", "b"):
        cfg, opts = make_upstream(tmp_path / name)
        run(cfg, opts, "shards")
        folder = opts.work_dir / "shards" / "shards"
        outputs.append({p.name: p.read_bytes() for p in sorted(folder.iterdir())})
    assert outputs[0].keys() == outputs[1].keys() and len(outputs[0]) > 3
    assert outputs[0] == outputs[1]


def test_random_ordering_and_byte_limit(tmp_path):
    limit = 12 * 1024
    cfg, opts = make_upstream(tmp_path, overrides=("shards.ordering=random", "shards.max_samples=1000",
                                                   f"shards.max_bytes={limit}", "shards.caption=title"))
    run(cfg, opts, "shards")
    folder = opts.work_dir / "shards" / "shards"
    tars = sorted(folder.glob("*.tar"))
    assert len(tars) > 3
    assert all(p.stat().st_size <= limit for p in tars)
    shards = read_shards(folder)
    metas = [json.loads(m["json"]) for samples in shards.values() for _, m in samples]
    assert {m["cluster"] for m in metas} == {-1}
    assert sorted(m["node_id"] for m in metas) == sorted(expected_samples())
    texts = {json.loads(m["json"])["node_id"]: m["txt"].decode() for s in shards.values() for _, m in s}
    assert texts[1] == "Product 1 | model X-1"


def test_jpeg_mask_checks_start_and_end_markers_column_wise():
    values = [tiny_jpeg(1), None, b"", b"\xff\xd8", b"\xff\xd8\xff\xd9", b"\xff\xd8\xff" + b"x" * 40,
              b"<html>\xff\xd9", tiny_jpeg(2)[:-1], tiny_jpeg(3)]
    expected = [True, False, False, False, True, False, False, False, True]
    column = pa.array(values, pa.large_binary())
    assert jpeg_mask(column).tolist() == expected
    assert jpeg_mask(column.slice(3)).tolist() == expected[3:]  # an array view that starts mid-buffer
    assert jpeg_mask(column.slice(0, 0)).tolist() == []


def test_caption_recipes():
    feats = ["Noise cancelling.", "30 h battery", "  ", "USB-C"]
    assert make_caption("Headphones", feats, "Audio", "title", 3, 300) == "Headphones"
    assert make_caption("Headphones", feats, "Audio", "title_features", 2, 300) == \
        "Headphones. Noise cancelling; 30 h battery"
    assert make_caption("Headphones.", feats, "Audio", "title_category", 3, 300) == "Headphones. Category: Audio"
    assert make_caption("Headphones", feats, None, "title_features_category", 3, 300) == \
        "Headphones. Noise cancelling; 30 h battery; USB-C"
    assert make_caption("Headphones", [], "Audio", "title_features_category", 3, 300) == \
        "Headphones. Category: Audio"
    long = "word " * 100
    assert len(cap_text(long, 50)) <= 50 and not cap_text(long, 50).endswith(" ")
    assert cap_text("x" * 80, 20) == "x" * 20
    with pytest.raises(ValueError):
        make_caption("t", [], None, "bogus", 1, 100)


KILLED_RUN = """
import time
from pathlib import Path
import etl.stages.shards as shards
from etl.harness import load_config, make_opts, run

original = shards._samples

def slow_samples(*args):
    for sample in original(*args):
        time.sleep(0.02)  # slow enough to be killed in the middle of a shard
        yield sample

shards._samples = slow_samples
run(load_config(overrides={overrides!r}), make_opts(Path({out!r})), "shards")
"""


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(tmp_path):
    cfg, ref_opts = make_upstream(tmp_path / "reference")
    run(cfg, ref_opts, "shards")
    reference = {p.name: p.read_bytes() for p in (ref_opts.work_dir / "shards" / "shards").iterdir()}

    cfg, opts = make_upstream(tmp_path / "killed")
    folder = opts.work_dir / "shards" / "shards"
    code = KILLED_RUN.format(overrides=SMALL, out=str(opts.out))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=TESTS.parent, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not any(folder.glob("*.tar")):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no shard appeared within 60 s"
            time.sleep(0.01)
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    finished = sorted(p.name for p in folder.glob("*.tar"))
    assert 0 < len(finished) < len([n for n in reference if n.endswith(".tar")]), "killed mid-way"
    assert not (folder / "sizes.json").exists()
    assert not (opts.work_dir / "records" / "shards.json").exists()
    first = folder / finished[0]
    first_inode = (first.stat().st_ino, first.stat().st_mtime_ns)

    record = run(cfg, opts, "shards")["shards"]
    resumed = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert resumed == reference, "resumed shards are byte-identical to an uninterrupted run"
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == first_inode, "a finished shard is not rewritten"
    assert record["stats"]["resumed_shards"] >= 1
    keys = [k for samples in read_shards(folder).values() for k, _ in samples]
    assert len(keys) == len(set(keys)) == len(expected_samples())
    assert not [p for p in (opts.work_dir / "shards").rglob("*") if ".tmp-" in p.name]
