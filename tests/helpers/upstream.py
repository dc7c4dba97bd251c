"""Hand-made upstream stage outputs (real Parquet, real JPEG bytes in image chunks) adopted as finished stages, so
`shards`, `release`, `validate` and `publish` can be tested on inputs whose every property is known.

Node i's fate follows from i alone (`is_kept`, `image_status_of`, `split_of`, `label_of`); `expected_samples` is
the set of nodes a correct `shards` stage writes.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

import schemas
from etl.harness import adopt_stage, load_config, make_opts
from etl.imaging.chunks import chunk_schema

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
        **dict.fromkeys(("image_url_thumb", "image_url_large", "image_url_hi_res"), [None] * n_nodes),
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
    return {"node_id": i, "asin": asin, "url": f"http://127.0.0.1/images/I/{asin}.jpg", "rendition": "large",
            "status": status,
            "http_status": 200 if ok else (404 if status == "http_error" else None),
            "error": None if ok else status, "bytes": len(data) if data else None, "sha256": None,
            "width": 16 if ok else None, "height": 16 if ok else None, "jpeg": data, "attempts": 1,
            "fetched_at": "2024-01-01T00:00:00+00:00"}


def expected_samples(n_nodes: int = 120) -> set[int]:
    return {i for i in range(n_nodes) if is_kept(i) and image_status_of(i) == "ok" and i != CORRUPT_NODE}
