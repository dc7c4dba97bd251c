"""Stage `shards`: WebDataset tars per split in graph-aware order, byte-deterministic and resumable per shard.

Samples are the kept nodes whose image is `ok`. Files under work/shards/:
  staging/blobs.bin, staging/index.parquet  every usable JPEG copied once out of the image chunks (which are in
                                             crawl order), so shards read their samples by offset in graph order
                                             with bounded memory; removed once every shard is written
  plan.parquet, plan.json                   which node goes to which shard, in order: computed first and saved (json
                                             last), so a resumed run writes exactly the remaining shards
  done/<shard>.json                         {sha256, bytes, samples} of each finished tar; a shard listed here
                                             whose file still has that hash is never rewritten
  shards/{split}-{000000}.tar, shards/sizes.json   the output (sizes.json = {shard file: samples}, read by open_clip)

Caption recipes (`shards.caption`), capped at `shards.caption_max_chars` (cut at a word boundary when one is near):
  title                    "<title>"
  title_features           "<title>. <feature 1>; <feature 2>; ..."   (the first `shards.caption_features`)
  title_category           "<title>. Category: <leaf category>"
  title_features_category  "<title>. <features>. Category: <leaf category>"
The leaf category is the last element of `category_path` (else `main_category`; left out when neither exists).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from etl.config import ShardsConfig
from etl.core import executor as executors
from etl.core.stage import Counts, StageContext, StageError, StageResult
from etl.graph.filters import distinct_pairs
from etl.graph.ordering import (
    TRAINER_SHUFFLE_BUFFER,
    graph_order,
    in_batch_stats,
    random_order,
    reservoir_shuffle_permutation,
)
from etl.imaging.chunks import iter_ok_chunks
from etl.parse.parquet import read_parquet_columns
from etl.release.shardformat import (
    PLAN_TABLE,
    SHARDS_DIR,
    SIZES_FILE,
    SPLITS,
    sample_json,
    sample_key,
    shard_name,
)
from etl.release.tarwriter import BLOCK, RECORD, TarWriter
from slipio import atomic
from slipio.hashing import file_sha256

VERSION = "2"  # 2: hand-built tars (etl/release/tarwriter.py) changed the tar bytes

PLAN_META = "plan.json"
DONE_DIR = "done"
STAGING_DIR = "staging"
STATS_BATCH_SIZES = (64, 256, 1024)


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg.shards
    out = ctx.out_dir
    shards_dir = out / SHARDS_DIR
    plan_meta = out / PLAN_META
    if not plan_meta.is_file():
        index = _staged_index(ctx)
        candidates, counts = _candidates(ctx, index)
        plan, meta = build_plan(candidates, _read_edges(ctx.input("edges", "edges")), cfg)
        meta["counts"] = counts
        atomic.write_parquet(out / PLAN_TABLE, plan)
        atomic.write_json(plan_meta, meta)
    meta = json.loads(plan_meta.read_text(encoding="utf-8"))

    todo = [s for s in meta["shards"] if not _is_done(out, s["name"])]
    executor = executors.local_description()
    if todo:
        ctx.log.info("shards: writing %d of %d shards", len(todo), len(meta["shards"]))
        if ctx.cfg.executor.kind == "ray":
            executor = _write_shards_ray(ctx, pl.read_parquet(out / PLAN_TABLE), todo)
        else:
            _write_shards(ctx, pl.read_parquet(out / PLAN_TABLE), todo)
    atomic.write_json(shards_dir / SIZES_FILE, {s["name"]: s["samples"] for s in meta["shards"]})
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)

    per_split: dict[str, dict[str, int]] = {}
    for s in meta["shards"]:
        entry = per_split.setdefault(s["split"], {"shards": 0, "samples": 0, "bytes": 0})
        entry["shards"] += 1
        entry["samples"] += s["samples"]
        entry["bytes"] += (shards_dir / s["name"]).stat().st_size
    c = meta["counts"]
    stats = {
        "splits": per_split,
        "shards": sum(v["shards"] for v in per_split.values()),
        "samples": sum(v["samples"] for v in per_split.values()),
        "bytes": sum(v["bytes"] for v in per_split.values()),
        "ordering": meta["ordering"],
        "caption": cfg.caption,
        "resumed_shards": len(meta["shards"]) - len(todo),
        "executor": executor,
    }
    written = {s["name"]: _done_record(out, s["name"]) or {} for s in meta["shards"]}
    return StageResult(outputs={"shards": shards_dir},
                       known_hashes={"shards": {name: (d["sha256"], d["bytes"]) for name, d in written.items()
                                                if d}},
                       counts=Counts(input=c["input"], kept=c["kept"], rejected=c["rejected"],
                                     filtered=c["filtered"]),
                       stats=stats, provenance={"ordering": cfg.ordering, "seed": cfg.seed})


# --- captions -------------------------------------------------------------------------------------------------


CAPTION_RECIPES = ("title", "title_features", "title_category", "title_features_category")


def make_caption(title: str, features: Iterable[str] | None, category: str | None, recipe: str,
                 n_features: int, max_chars: int) -> str:
    """The `<key>.txt` text of one sample (recipes in the module docstring)."""
    if recipe not in CAPTION_RECIPES:
        raise ValueError(f"unknown caption recipe {recipe!r}; allowed: {', '.join(CAPTION_RECIPES)}")
    parts = [title.strip().rstrip(".")]
    if "features" in recipe:
        feats = [f.strip().rstrip(".;") for f in (features or []) if f and f.strip()][:n_features]
        if feats:
            parts.append("; ".join(feats))
    if "category" in recipe and category:
        parts.append(f"Category: {category}")
    return cap_text(". ".join(parts), max_chars)


def cap_text(text: str, max_chars: int) -> str:
    """At most `max_chars` characters, cut at the last space when it keeps >= 60% of the room."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space >= 0.6 * max_chars:
        cut = cut[:space]
    return cut.rstrip(" ;,.") or text[:max_chars]


def _leaf_category(path: list[str] | None, main: str | None) -> str | None:
    return path[-1] if path else (main or None)


# --- inputs ---------------------------------------------------------------------------------------------------


def _read_edges(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = read_parquet_columns(path, ["src", "dst", "weight"])
    return (t.column("src").to_numpy(), t.column("dst").to_numpy(),
            t.column("weight").to_numpy().astype(np.float32))


def _candidates(ctx: StageContext, index: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, Any]]:
    """One row per sample to write (kept node, labelled, ok image with usable bytes) + the stage's accounting."""
    kept = (pl.read_parquet(ctx.input("edges", "node_filter"), columns=["node_id", "kept"])
            .filter(pl.col("kept")).select("node_id"))
    labels = pl.read_parquet(ctx.input("labels", "node_labels"),
                             columns=["node_id", "asin", "label", "label_name", "split"])
    status = pl.read_parquet(ctx.input("images", "status"), columns=["node_id", "status"])
    nodes = pl.read_parquet(ctx.input("nodes", "nodes"),
                            columns=["node_id", "title", "features", "category_path", "main_category"])
    table = (kept.join(labels, on="node_id", how="left").join(status, on="node_id", how="left")
             .join(nodes, on="node_id", how="left").join(index, on="node_id", how="left"))
    unlabeled = table.filter(pl.col("split").is_null()).height
    if unlabeled:
        raise StageError(f"{unlabeled} kept node(s) have no row in node_labels; rerun the labels stage "
                         f"(slip-etl labels --force)")
    bad_split = table.filter(~pl.col("split").is_in(list(SPLITS))).height
    if bad_split:
        raise StageError(f"{bad_split} node(s) have a split other than train/val/test in node_labels; "
                         f"rerun the labels stage")
    untitled = table.filter(pl.col("title").is_null()).height
    if untitled:
        raise StageError(f"{untitled} kept node(s) are missing from the node table; rerun the edges stage")
    image_ok = pl.col("status") == "ok"
    no_image = table.filter(~image_ok | pl.col("status").is_null()).height
    missing = table.filter(image_ok & pl.col("length").is_null()).height
    bad = table.filter(image_ok & (pl.col("length") < 0)).height
    samples = table.filter(image_ok & (pl.col("length") >= 0))
    if samples.height == 0:
        raise StageError("no kept node has a usable image; look at the images stage record (status counts)")
    rejected = {k: v for k, v in (("bad_jpeg", bad), ("missing_jpeg", missing)) if v}
    counts = {"input": kept.height, "kept": samples.height, "rejected": rejected,
              "filtered": {"no_image": no_image} if no_image else {}}
    return samples.drop("status"), counts


# --- staging: JPEG bytes addressable by node ------------------------------------------------------------------


def _staged_index(ctx: StageContext) -> pl.DataFrame:
    """node_id -> (offset, length) into staging/blobs.bin (length -1 = bytes present but not a JPEG)."""
    staging = ctx.out_dir / STAGING_DIR
    index_path = staging / "index.parquet"
    if not index_path.is_file() or not (staging / "blobs.bin").is_file():
        _stage_images(ctx, staging)
    return pl.read_parquet(index_path)


def _stage_images(ctx: StageContext, staging: Path) -> None:
    """Copy the latest ok JPEG of every kept node into one flat file (index written last = complete).

    Column-wise: one write per chunk and the JPEG check over the whole chunk, no Python object per image.
    """
    kept = read_parquet_columns(ctx.input("edges", "node_filter"), ["node_id", "kept"])
    kept_ids = kept.column("node_id").to_numpy()[kept.column("kept").to_numpy(zero_copy_only=False)]
    wanted = np.zeros(int(kept_ids.max()) + 1 if len(kept_ids) else 0, dtype=bool)
    wanted[kept_ids] = True
    columns: dict[str, list[np.ndarray]] = {"node_id": [], "offset": [], "length": []}
    bar = ctx.progress(total=len(kept_ids), desc="shards: staging images", unit="img")
    with atomic.atomic_open(staging / "blobs.bin", "wb") as fh:
        position = 0
        for node_ids, jpegs in iter_ok_chunks(ctx.input("images", "chunks")):
            keep = np.zeros(len(node_ids), dtype=bool)
            inside = node_ids < len(wanted)
            keep[inside] = wanted[node_ids[inside]]
            is_jpeg = jpeg_mask(jpegs)
            good, bad = node_ids[keep & is_jpeg], node_ids[keep & ~is_jpeg]
            offsets = lengths = np.zeros(0, np.int64)
            if len(good):
                starts, data = _binary_buffers(jpegs.filter(pa.array(keep & is_jpeg)))
                fh.write(data[starts[0]:starts[-1]])
                offsets, lengths = position + starts[:-1] - starts[0], np.diff(starts)
                position += int(starts[-1] - starts[0])
            columns["node_id"] += [good, bad]
            columns["offset"] += [offsets, np.zeros(len(bad), np.int64)]
            columns["length"] += [lengths, np.full(len(bad), -1, np.int64)]  # -1: bytes present but not a JPEG
            bar.update(len(good) + len(bad))
    bar.close()
    merged = {name: np.concatenate(parts) if parts else np.zeros(0, np.int64) for name, parts in columns.items()}
    order = np.argsort(merged["node_id"], kind="stable")
    atomic.write_parquet(staging / "index.parquet",
                         pa.table({name: pa.array(values[order], pa.int64()) for name, values in merged.items()}))


def _binary_buffers(array: pa.Array) -> tuple[np.ndarray, memoryview]:
    """(the n + 1 value offsets, the data buffer) of a non-empty large_binary array, without copying."""
    _, offsets, data = array.buffers()
    starts = np.frombuffer(offsets, dtype=np.int64, count=len(array) + 1, offset=array.offset * 8)
    return starts, memoryview(data) if data is not None else memoryview(b"")


def jpeg_mask(jpegs: pa.Array) -> np.ndarray:
    """Per value: starts with the JPEG start marker (FF D8 FF) and ends with the end marker (FF D9), as every
    image the images stage wrote does. A cheap structural check over a whole column; nulls are not JPEGs."""
    if len(jpegs) == 0:
        return np.zeros(0, dtype=bool)
    starts, data = _binary_buffers(jpegs)
    raw = np.frombuffer(data, dtype=np.uint8)
    first, end = starts[:-1], starts[1:]
    mask = (end - first >= 3) & ~jpegs.is_null().to_numpy(zero_copy_only=False)
    first, end = first[mask], end[mask]
    mask[mask] = ((raw[first] == 0xFF) & (raw[first + 1] == 0xD8) & (raw[first + 2] == 0xFF)
                  & (raw[end - 2] == 0xFF) & (raw[end - 1] == 0xD9))
    return mask


# --- the plan ---------------------------------------------------------------------------------------------------


def build_plan(samples: pl.DataFrame, edges: tuple[np.ndarray, np.ndarray, np.ndarray],
               cfg: ShardsConfig) -> tuple[pa.Table, dict[str, Any]]:
    """Order every split's samples and cut them into shards; returns the plan table (write order) and its meta.

    `samples` columns: node_id, asin, label, label_name, split, title, features, category_path, main_category,
    length (JPEG bytes).
    """
    src, dst, weight = edges
    pairs = distinct_pairs(src, dst)  # several edge kinds may link the same two nodes
    tables, shards, ordering = [], [], {}
    for split_no, split in enumerate(SPLITS):
        part = samples.filter(pl.col("split") == split).sort("node_id")
        if part.height == 0:
            continue
        ids = part["node_id"].to_numpy()
        labels = part["label"].to_numpy()
        seed = cfg.seed + split_no
        if cfg.ordering == "graph_clusters":
            order = graph_order(ids, src, dst, weight=weight, labels=labels, cluster_size=cfg.cluster_size,
                                seed=seed)
        else:
            order = random_order(ids, seed=seed)
        pos = np.searchsorted(ids, order.node_ids)
        part = part[pos].with_columns(pl.Series("cluster", order.cluster, dtype=pl.Int64))
        if split == "train":
            ordering = _ordering_stats(order.node_ids, labels[pos], pairs, seed)
        captions = [make_caption(t, f, _leaf_category(p, m), cfg.caption, cfg.caption_features,
                                 cfg.caption_max_chars)
                    for t, f, p, m in part.select("title", "features", "category_path", "main_category").iter_rows()]
        part = part.with_columns(pl.Series("caption", captions, dtype=pl.String))
        names, split_shards = _cut_shards(part, split, cfg)
        tables.append(part.with_columns(pl.Series("shard", names, dtype=pl.String)))
        shards.extend(split_shards)
    plan = pl.concat(tables).select("node_id", "asin", "label", "label_name", "split", "cluster", "caption",
                                    "shard")
    meta = {"shards": shards, "ordering": ordering}
    return plan.to_arrow(), meta


def _cut_shards(part: pl.DataFrame, split: str, cfg: ShardsConfig) -> tuple[list[str], list[dict[str, Any]]]:
    """Shard name per sample: a new shard after max_samples samples, or before the tar would pass max_bytes."""
    names: list[str] = []
    shards: list[dict[str, Any]] = []
    members = 0  # bytes of the current shard's members (headers + padded data)
    count = 0
    for row in part.select("node_id", "asin", "label", "label_name", "split", "cluster", "caption",
                           "length").iter_rows(named=True):
        size = (_padded(row["length"]) + _padded(len(row["caption"].encode("utf-8")))
                + _padded(len(sample_json(row))))
        full = count >= cfg.max_samples or (cfg.max_bytes and count and tar_size(members + size) > cfg.max_bytes)
        if not shards or full:
            shards.append({"name": shard_name(split, len(shards)), "split": split, "samples": 0})
            members, count = 0, 0
        members += size
        count += 1
        shards[-1]["samples"] = count
        names.append(shards[-1]["name"])
    return names, shards


def _padded(n: int) -> int:
    """Bytes one tar member of n data bytes takes: header + data rounded up to whole blocks."""
    return BLOCK + -(-n // BLOCK) * BLOCK


def tar_size(member_bytes: int) -> int:
    """Size of a tar file holding members of `member_bytes` (end-of-archive blocks, padded to a record)."""
    return -(-(member_bytes + 2 * BLOCK) // RECORD) * RECORD


def _ordering_stats(order: np.ndarray, labels: np.ndarray, pairs: tuple[np.ndarray, np.ndarray],
                    seed: int) -> dict[str, Any]:
    """In-batch neighbour statistics of the written order vs a random order, without and with the trainer's sample
    shuffle (its algorithm and default buffer, simulated once per order and reused for every batch size)."""
    baseline = random_order(order, seed=seed + 1000)
    base_pos = np.argsort(order)[np.searchsorted(np.sort(order), baseline.node_ids)]
    buffered = reservoir_shuffle_permutation(len(order), TRAINER_SHUFFLE_BUFFER, seed=seed)
    streams = {"written": (order, labels), "random": (baseline.node_ids, labels[base_pos])}
    out: dict[str, Any] = {"split": "train", "shuffle_buffer": TRAINER_SHUFFLE_BUFFER}
    for batch in STATS_BATCH_SIZES:
        out[str(batch)] = {
            name: {"no_shuffle": in_batch_stats(ids, pairs, batch, labels=lab),
                   "shuffle_buffer": in_batch_stats(ids[buffered], pairs, batch, labels=lab[buffered])}
            for name, (ids, lab) in streams.items()
        }
    return out


# --- writing ----------------------------------------------------------------------------------------------------


def _done_record(out: Path, name: str) -> dict[str, Any] | None:
    """{sha256, bytes, samples} written when the shard was finished; None if absent or unreadable."""
    done = out / DONE_DIR / f"{name}.json"
    if not done.is_file():
        return None
    try:
        return json.loads(done.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _is_done(out: Path, name: str) -> bool:
    """A shard recorded as finished whose file still has the recorded size and sha256."""
    record, tar = _done_record(out, name), out / SHARDS_DIR / name
    if record is None or not tar.is_file():
        return False
    if tar.stat().st_size != record.get("bytes"):
        return False
    return file_sha256(tar)[0] == record.get("sha256")


def _write_shards(ctx: StageContext, plan: pl.DataFrame, todo: list[dict[str, Any]]) -> None:
    index = _staged_index(ctx)
    offsets = dict(zip(index["node_id"].to_list(), zip(index["offset"].to_list(), index["length"].to_list())))
    wanted = {s["name"] for s in todo}
    rows = plan.filter(pl.col("shard").is_in(list(wanted)))
    bar = ctx.progress(total=len(todo), desc="shards", unit="shard")
    with open(ctx.out_dir / STAGING_DIR / "blobs.bin", "rb") as blobs:
        for (name,), group in rows.group_by("shard", maintain_order=True):
            digest, size = write_shard(ctx.out_dir / SHARDS_DIR / name, _samples(group, offsets, blobs.fileno()))
            atomic.write_json(ctx.out_dir / DONE_DIR / f"{name}.json",
                              {"sha256": digest, "bytes": size, "samples": group.height})
            bar.update()
    bar.close()


def _samples(group: pl.DataFrame, offsets: dict[int, tuple[int, int]],
             blobs_fd: int) -> Iterator[tuple[str, dict[str, bytes]]]:
    for row in group.iter_rows(named=True):
        offset, length = offsets[row["node_id"]]
        jpeg = os.pread(blobs_fd, length, offset)
        if len(jpeg) != length:
            raise StageError(f"shards: staging/blobs.bin is shorter than its index (node {row['node_id']}); "
                             f"rerun with --force")
        yield sample_key(row["node_id"]), {"jpg": jpeg, "txt": row["caption"].encode("utf-8"),
                                           "json": sample_json(row)}


def write_shard(path: Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> tuple[str, int]:
    """Write one WebDataset tar atomically (temp name + rename), fixed member metadata; returns (sha256, bytes)."""
    with atomic.atomic_open(path, "wb") as fh:
        tar = TarWriter(fh)
        for key, members in samples:
            for ext, data in members.items():
                tar.add(f"{key}.{ext}", data)
        tar.close()
    return tar.sha256, tar.bytes


# --- writing on Ray: one task per shard builds the tar in memory, the driver writes it -------------------------


def _write_shards_ray(ctx: StageContext, plan: pl.DataFrame, todo: list[dict[str, Any]]) -> dict[str, Any]:
    """The same tars as `_write_shards`, built by Ray tasks: the driver reads each shard's members (it holds the
    staged JPEGs), a task builds the tar and returns its bytes and sha256, the driver checks and writes them once
    (no shared filesystem; a rerun task leaves nothing behind). At most two shards per worker are in flight."""
    session = executors.connect(ctx.cfg.executor)
    index = _staged_index(ctx)
    offsets = dict(zip(index["node_id"].to_list(), zip(index["offset"].to_list(), index["length"].to_list())))
    rows = plan.filter(pl.col("shard").is_in([s["name"] for s in todo]))
    groups = list(rows.group_by("shard", maintain_order=True))
    task = session.remote(tar_bytes)
    bar = ctx.progress(total=len(todo), desc=f"shards (ray, {session.workers} workers)", unit="shard")

    with open(ctx.out_dir / STAGING_DIR / "blobs.bin", "rb") as blobs:
        def args() -> Iterator[tuple[Any, ...]]:
            for (name,), group in groups:  # read lazily: only the shards in flight are in memory
                yield name, list(_samples(group, offsets, blobs.fileno()))

        def on_done(i: int, result: tuple[str, bytes, str, int]) -> None:
            name, data, digest, samples = result
            if hashlib.sha256(data).hexdigest() != digest or samples != groups[i][1].height:
                raise StageError(f"shards: the tar of {name} came back damaged from its Ray task; rerun")
            atomic.write_bytes(ctx.out_dir / SHARDS_DIR / name, data)
            atomic.write_json(ctx.out_dir / DONE_DIR / f"{name}.json",
                              {"sha256": digest, "bytes": len(data), "samples": samples})
            bar.update()

        try:
            tasks = executors.run_tasks(session, task, args(), on_done)
        finally:
            bar.close()
    return session.describe(tasks, retried=0)


def tar_bytes(name: str, samples: list[tuple[str, dict[str, bytes]]]) -> tuple[str, bytes, str, int]:
    """Ray task: one WebDataset tar in memory (the bytes `write_shard` writes); (name, bytes, sha256, samples)."""
    buffer = io.BytesIO()
    tar = TarWriter(buffer)
    for key, members in samples:
        for ext, data in members.items():
            tar.add(f"{key}.{ext}", data)
    tar.close()
    return name, buffer.getvalue(), tar.sha256, len(samples)
