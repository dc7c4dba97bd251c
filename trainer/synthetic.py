"""A tiny release folder written by the release contract, with a learnable signal.

Products come in clusters (think: a brand's product line). A cluster has one class (-> the shape drawn) and one
attribute (-> the colour); captions name both. Edges mostly link products of the same cluster, so neighbours share
class and colour: a model can learn the class from pixels or words, and the graph carries the cluster signal.
Used by the trainer's and the evaluation's tests and by bench/bench_train.py.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

import schemas

SHAPES = ("circle", "square", "triangle", "cross", "ring", "stripes", "diamond", "dots")
SIZES = ("large", "small")
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (230, 200, 20),
           "purple": (140, 40, 170), "orange": (240, 130, 20), "black": (20, 20, 20), "cyan": (20, 190, 200)}
CAPTION_TEMPLATES = ("a {colour} {cls}", "{cls} in {colour}", "photo of a {colour} {cls} product",
                     "{colour} {cls} item for sale")
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def class_name(label: int) -> str:
    """'circle', 'small square', ...: shape from label % 8, size from the next bit (up to 16 classes)."""
    shape = SHAPES[label % len(SHAPES)]
    return shape if (label // len(SHAPES)) % 2 == 0 else f"small {shape}"


def draw_product(label: int, colour: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Light noisy background, the class's shape in the cluster's colour, slightly jittered."""
    base = rng.integers(200, 245, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(img)
    fill = COLOURS[colour]
    scale = 0.38 if (label // len(SHAPES)) % 2 == 0 else 0.22
    r = size * scale
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = SHAPES[label % len(SHAPES)]
    w = max(2, int(size / 12))
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=w)
    elif shape == "stripes":
        for k in range(-2, 3):
            y = cy + k * r / 2.5
            draw.rectangle((cx - r, y - w / 2, cx + r, y + w / 2), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # dots
        for dx in (-r / 2, r / 2):
            for dy in (-r / 2, r / 2):
                draw.ellipse((cx + dx - w, cy + dy - w, cx + dx + w, cy + dy + w), fill=fill)
    return img


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_tar(path: Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write a WebDataset tar: members `<key>.<ext>` in order, fixed mtime (byte-reproducible). Returns #samples."""
    n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return n


def _assign_splits(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stratified 80/10/10 by class."""
    split = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_train = int(round(len(idx) * SPLITS[0][1]))
        n_val = int(round(len(idx) * SPLITS[1][1]))
        split[idx[:n_train]] = "train"
        split[idx[n_train:n_train + n_val]] = "val"
        split[idx[n_train + n_val:]] = "test"
    return split


def _make_edges(cluster: np.ndarray, degree: int, p_intra: float, rng: np.random.Generator) -> pa.Table:
    """Each node draws `degree` partners: same cluster with prob p_intra, else anyone. Stored once, src < dst."""
    n = len(cluster)
    members = {c: np.flatnonzero(cluster == c) for c in np.unique(cluster)}
    pairs: dict[tuple[int, int], float] = {}
    for i in range(n):
        for _ in range(degree):
            pool = members[cluster[i]] if rng.random() < p_intra else np.arange(n)
            j = int(rng.choice(pool))
            if j != i:
                pairs.setdefault((min(i, j), max(i, j)), float(rng.integers(1, 6)))
    keys = sorted(pairs)
    return pa.table({
        "src": pa.array([k[0] for k in keys], pa.int64()),
        "dst": pa.array([k[1] for k in keys], pa.int64()),
        "weight": pa.array([pairs[k] for k in keys], pa.float32()),
        "kind": pa.array(["copurchase"] * len(keys), pa.string()),
    })


def make_synthetic_release(root: Path, n_nodes: int = 400, n_classes: int = 8, seed: int = 0, shard_size: int = 64,
                           image_size: int = 64, cluster_size: int = 10, degree: int = 3, p_intra: float = 0.9,
                           n_colours: Optional[int] = None) -> Path:
    """Write a release folder at `root` (nodes/edges/labels/shards + sizes.json + manifest) and return it."""
    if not 1 <= n_classes <= 2 * len(SHAPES):
        raise ValueError(f"n_classes must be in 1..{2 * len(SHAPES)}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    colours = list(COLOURS)[: n_colours or len(COLOURS)]

    n_clusters = max(n_classes, n_nodes // cluster_size)
    cluster_class = np.arange(n_clusters) % n_classes
    cluster_colour = rng.integers(0, len(colours), size=n_clusters)
    cluster = rng.permutation(np.arange(n_nodes) % n_clusters)
    labels = cluster_class[cluster]
    splits = _assign_splits(labels, rng)
    names = [class_name(c) for c in range(n_classes)]

    captions, jpegs = [], []
    for i in range(n_nodes):
        colour = colours[cluster_colour[cluster[i]]]
        template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
        captions.append(template.format(colour=colour, cls=names[labels[i]]))
        jpegs.append(jpeg_bytes(draw_product(int(labels[i]), colour, image_size, rng)))
    asins = [f"B{i:09d}" for i in range(n_nodes)]

    pq.write_table(pa.table({
        "node_id": pa.array(np.arange(n_nodes), pa.int64()),
        "asin": asins,
        "title": captions,
        "features": pa.array([[] for _ in range(n_nodes)], pa.list_(pa.string())),
        "description": [""] * n_nodes,
        "store": [f"store-{c}" for c in cluster],
        "main_category": ["Synthetic"] * n_nodes,
        "category_path": [["Synthetic", names[label]] for label in labels],
        "price": pa.array(rng.uniform(5, 100, n_nodes).round(2), pa.float64()),
        "average_rating": pa.array(rng.uniform(1, 5, n_nodes).round(1), pa.float64()),
        "rating_number": pa.array(rng.integers(0, 500, n_nodes), pa.int64()),
        "image_url": [f"https://images.example.invalid/{a}.jpg" for a in asins],
        "also_buy": pa.array([[] for _ in range(n_nodes)], pa.list_(pa.string())),
        "also_view": pa.array([[] for _ in range(n_nodes)], pa.list_(pa.string())),
        "label": pa.array(labels, pa.int32()),
        "label_name": [names[label] for label in labels],
        "split": list(splits),
        "image_status": ["ok"] * n_nodes,
    }), root / "nodes.parquet")
    pq.write_table(_make_edges(cluster, degree, p_intra, rng), root / "edges.parquet")
    counts = np.bincount(labels, minlength=n_classes)
    (root / "labels.json").write_text(json.dumps({
        "level": 1, "classes": [{"id": c, "name": names[c], "count": int(counts[c])} for c in range(n_classes)],
        "rule": {"source": "synthetic"}, "dropped": {}}, indent=2))

    sizes: dict[str, int] = {}
    for split_name, _ in SPLITS:
        # graph-aware order as in real releases: neighbours (same cluster) kept together
        order = sorted(np.flatnonzero(splits == split_name), key=lambda i: (cluster[i], i))
        for shard_no, start in enumerate(range(0, max(len(order), 1), shard_size)):
            chunk = order[start:start + shard_size]
            name = f"{split_name}-{shard_no:06d}.tar"
            sizes[name] = write_tar(root / "shards" / name, (
                (f"{i:010d}", {
                    "jpg": jpegs[i], "txt": captions[i].encode(),
                    "json": json.dumps({"node_id": int(i), "asin": asins[i], "label": int(labels[i]),
                                        "label_name": names[labels[i]], "split": split_name,
                                        "cluster": int(cluster[i])}).encode()})
                for i in chunk))
    (root / "shards" / "sizes.json").write_text(json.dumps(sizes, indent=2))

    files = {str(p.relative_to(root)): {"bytes": p.stat().st_size,
                                       "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    (root / "manifest.json").write_text(json.dumps({
        "name": "synthetic", "version": "0.0.0", "created_at": "1970-01-01T00:00:00Z",
        "schema_versions": schemas.schema_versions(),
        "files": files, "provenance": {"source": "synthetic", "category": "synthetic", "raw": [],
                                       "config": {"n_nodes": n_nodes, "n_classes": n_classes, "seed": seed}}},
        indent=2))
    return root
