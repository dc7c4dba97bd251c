"""Stage `shards` on hand-made upstream tables (real Parquet, real JPEG bytes in image chunks), run through the real
framework: members, keys, sizes.json, accounting, determinism, byte limits, and a SIGKILL mid-run then resume.

`make_upstream` is also used by test_release, test_validate and test_publish.
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from harness import adopt_stage, load_config, make_opts, run
from PIL import Image

import schemas
from etl.core.stage import describe_output
from etl.imaging.chunks import chunk_schema
from etl.stages.shards import cap_text, jpeg_mask, make_caption

TESTS = Path(__file__).parent
SMALL = ["shards.max_samples=8", "shards.cluster_size=8"]
COMMUNITY = 8
N_LABELS = 4
REPLACED_NODE = 3  # ok in chunk 0, ok again with other bytes in chunk 1: the later bytes must win
RETRIED_NODE = 9  # timeout in chunk 0, ok in chunk 1
CORRUPT_NODE = 17  # status ok but its bytes are not a JPEG


def tiny_jpeg(i: int, size: int = 16) -> bytes:
    colour = ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def is_kept(i: int) -> bool:
    return i % 29 != 28


def image_status_of(i: int) -> str:
    if i % 11 == 5:
        return "http_error"
    if i % 13 == 7:
        return "not_image"
    return "ok"


def split_of(i: int) -> str:
    return {8: "val", 9: "test"}.get(i % 10, "train")


def label_of(i: int) -> int:
    return -1 if i % 23 == 22 else (i // COMMUNITY) % N_LABELS


def make_upstream(tmp_path: Path, n_nodes: int = 120, overrides: tuple[str, ...] = ()):
    """Adopt fetch/nodes/edges/reviews/labels/images from hand-made tables; return (cfg, opts)."""
    cfg = load_config(overrides=[*SMALL, *overrides])
    opts = make_opts(tmp_path / "out")
    src = tmp_path / "fixtures"
    src.mkdir(parents=True, exist_ok=True)
    ids = list(range(n_nodes))
    asins = [f"B{i:09d}" for i in ids]
    kept = [i for i in ids if is_kept(i)]

    raw = src / "meta_Electronics.jsonl.gz"
    raw.write_bytes(b"raw bytes stand-in")
    adopt_stage(cfg, opts, "fetch", {"metadata": raw}, stats={"files": {"metadata": {
        "url": "https://example.invalid/meta_Electronics.jsonl.gz", "path": "meta_Electronics.jsonl.gz",
        "bytes": raw.stat().st_size, "sha256": "0" * 64}}})

    nodes = pa.table({
        "node_id": ids, "asin": asins, "title": [f"Product {i} | model X-{i}" for i in ids],
        "features": [[f"feature {i}.{k}" for k in range(i % 5)] for i in ids],
        "description": [""] * n_nodes, "store": [f"store {i % 7}" for i in ids],
        "main_category": ["Electronics"] * n_nodes,
        "category_path": [["Electronics", f"Group {label_of(i)}"] if i % 19 else [] for i in ids],
        "price": [float(i) for i in ids], "average_rating": [4.0] * n_nodes, "rating_number": [i for i in ids],
        "image_url": [f"https://m.media-amazon.com/images/I/{a}.jpg" for a in asins],
        "also_buy": [[] for _ in ids], "also_view": [[] for _ in ids],
    })
    quarantine = pa.table({"line_no": pa.array([], pa.int64()), "asin": pa.array([], pa.string()),
                           "reason": pa.array([], pa.string()), "raw": pa.array([], pa.string())})
    pq.write_table(schemas.conform(nodes, "nodes"), src / "nodes.parquet")
    pq.write_table(schemas.conform(quarantine, "quarantine"), src / "quarantine.parquet")
    adopt_stage(cfg, opts, "nodes", {"nodes": src / "nodes.parquet", "quarantine": src / "quarantine.parquet"})

    pairs = set()
    for i in kept:
        for j in (i + 1, i + 3):  # ring-ish links inside the community
            if j < n_nodes and is_kept(j) and j // COMMUNITY == i // COMMUNITY:
                pairs.add((i, j))
        if i % 16 == 0 and is_kept(i + COMMUNITY + 1) and i + COMMUNITY + 1 < n_nodes:
            pairs.add((i, i + COMMUNITY + 1))  # a few links across communities
    pairs = sorted(pairs)
    edges = pa.table({"src": [a for a, _ in pairs], "dst": [b for _, b in pairs],
                      "weight": pa.array([1.0 + (a + b) % 3 for a, b in pairs], pa.float32()),
                      "kind": ["copurchase"] * len(pairs)})
    node_filter = pa.table({"node_id": ids, "kept": [is_kept(i) for i in ids],
                            "reason": [None if is_kept(i) else "k_core" for i in ids]})
    pq.write_table(schemas.conform(edges, "edges"), src / "edges.parquet")
    pq.write_table(schemas.conform(node_filter, "node_filter"), src / "node_filter.parquet")
    adopt_stage(cfg, opts, "edges", {"edges": src / "edges.parquet", "node_filter": src / "node_filter.parquet"})

    rev = [(i, r) for i in kept if i % 3 == 0 for r in range(1 + i % 2)]
    reviews = pa.table({
        "node_id": [i for i, _ in rev], "asin": [asins[i] for i, _ in rev],
        "rank": pa.array([r for _, r in rev], pa.int32()), "rating": pa.array([5.0] * len(rev), pa.float32()),
        "title": ["Great"] * len(rev), "text": [f"Works well with product {i}." for i, _ in rev],
        "user_id": [f"U{i}-{r}" for i, r in rev], "timestamp": [1_600_000_000_000 + i for i, _ in rev],
        "helpful_vote": pa.array([r for _, r in rev], pa.int32()), "verified_purchase": [True] * len(rev)})
    pq.write_table(schemas.conform(reviews, "reviews"), src / "reviews.parquet")
    pq.write_table(schemas.conform(quarantine, "quarantine"), src / "reviews_quarantine.parquet")
    adopt_stage(cfg, opts, "reviews", {"reviews": src / "reviews.parquet",
                                       "quarantine": src / "reviews_quarantine.parquet"})

    node_labels = pa.table({
        "node_id": kept, "asin": [asins[i] for i in kept],
        "label": pa.array([label_of(i) for i in kept], pa.int32()),
        "label_name": [None if label_of(i) < 0 else f"Group {label_of(i)}" for i in kept],
        "split": [split_of(i) for i in kept]})
    pq.write_table(schemas.conform(node_labels, "node_labels"), src / "node_labels.parquet")
    counts = np.bincount([label_of(i) for i in kept if label_of(i) >= 0], minlength=N_LABELS)
    (src / "labels.json").write_text(json.dumps({
        "level": 1, "classes": [{"id": c, "name": f"Group {c}", "count": int(counts[c])} for c in range(N_LABELS)],
        "rule": {"min_class_size": 1}, "dropped": {}}))
    adopt_stage(cfg, opts, "labels", {"node_labels": src / "node_labels.parquet", "labels": src / "labels.json"})

    chunks = src / "chunks"
    chunks.mkdir()
    first = [_image_row(i, asins[i], "timeout" if i == RETRIED_NODE else image_status_of(i), tiny_jpeg(i))
             for i in kept]
    second = [_image_row(REPLACED_NODE, asins[REPLACED_NODE], "ok", tiny_jpeg(1000)),
              _image_row(RETRIED_NODE, asins[RETRIED_NODE], "ok", tiny_jpeg(RETRIED_NODE))]
    for k, rows in enumerate((first, second)):
        pq.write_table(pa.Table.from_pylist(rows, schema=chunk_schema()), chunks / f"part-{k:06d}.parquet")
    latest = {r["node_id"]: r for r in first + second}
    status = pa.Table.from_pylist([{k: v for k, v in latest[i].items() if k != "jpeg"} for i in kept])
    pq.write_table(schemas.conform(status, "image_status"), src / "status.parquet")
    adopt_stage(cfg, opts, "images", {"status": src / "status.parquet", "chunks": chunks})
    return cfg, opts


def _image_row(i: int, asin: str, status: str, jpeg: bytes) -> dict:
    ok = status == "ok"
    data = (b"<html>not an image</html>" if i == CORRUPT_NODE else jpeg) if ok else None
    return {"node_id": i, "asin": asin, "url": f"http://127.0.0.1/images/I/{asin}.jpg", "status": status,
            "http_status": 200 if ok else (404 if status == "http_error" else None),
            "error": None if ok else status, "bytes": len(data) if data else None, "sha256": None,
            "width": 16 if ok else None, "height": 16 if ok else None, "jpeg": data, "attempts": 1,
            "fetched_at": "2024-01-01T00:00:00+00:00"}


def expected_samples(n_nodes: int = 120) -> set[int]:
    return {i for i in range(n_nodes) if is_kept(i) and image_status_of(i) == "ok" and i != CORRUPT_NODE}


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
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import etl.stages.shards as shards
from harness import load_config, make_opts, run

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
    code = KILLED_RUN.format(tests=str(TESTS), overrides=SMALL, out=str(opts.out))
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
