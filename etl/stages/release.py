"""Stage `release`: assemble a versioned, self-describing release folder and publish it into place only if valid.

The folder (`releases/<release.version>/`) is built under a temporary name beside its final place, checked with
`validate_release` (the same check users run), and only then renamed into place, so a release folder that exists
under its final name is complete and valid. Shard tars are copied (reflinked where the file system can), never
hard-linked: a release shares no inode with work/, so editing one cannot change the other. Every input is checked
against the sha256 its stage recorded before it goes in (copied files while they are copied), so a work file edited
after its stage finished is refused, naming it, instead of being signed into a manifest. An existing release of
the same version is replaced only if it was built from exactly the same inputs and config (same stage
fingerprint) or the stage was forced; anything else is refused, because a version must name one set of bytes.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

import schemas
from etl.core.stage import (
    FINGERPRINT_FILE,
    Counts,
    StageContext,
    StageError,
    StageResult,
)
from etl.graph.filters import distinct_pairs
from etl.graph.lpsplit import build_lp_split
from etl.release import card
from etl.release.shardformat import PLAN_TABLE, SIZES_FILE
from etl.release.validate import validate_release
from slipio import atomic
from slipio.hashing import file_sha256
from slipio.paths import UnsafePath, resolve_inside

VERSION = "2"  # 2: lp_split.parquet (fixed LP split), splits/nodes-*.parquet and shards/README.md (HF configs)

MISSING_STATUS = "missing"  # a kept node the images stage left without a result
UNUSABLE_STATUS = "unusable"  # status ok, but the shards stage found no usable JPEG (see its record)


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg.release
    final = ctx.opts.dataset_root / "releases" / cfg.version
    fingerprint = (ctx.out_dir / FINGERPRINT_FILE).read_text().strip()
    # `--force release` may replace a different release of the same version.
    _check_replaceable(final, fingerprint, forced=ctx.forced)

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.version}{atomic.TMP_MARK}", dir=final.parent))
    try:
        nodes = _write_contents(ctx, tmp)
        stats = build_stats(ctx, tmp, nodes)
        atomic.write_json(tmp / "stats.json", stats)
        card.write_plots(tmp / "plots", stats)
        name = cfg.name.format(category=ctx.opts.category)
        atomic.write_text(tmp / "README.md", card.render_card(name=name, version=cfg.version, license=cfg.license,
                                                              license_note=cfg.license_note, stats=stats))
        atomic.write_text(tmp / card.SHARD_CARD, card.shard_card(f"{name} {cfg.version}", cfg.license, stats))
        write_manifest(tmp, build_manifest(ctx, tmp, name, fingerprint))
        problems = validate_release(tmp)
        if problems:
            shown = "\n  ".join(problems[:20])
            raise StageError(f"the assembled release failed validation ({len(problems)} problem(s)); nothing was "
                             f"published to {final}:\n  {shown}")
        _move_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    listed = json.loads((final / "manifest.json").read_text(encoding="utf-8"))["files"]
    return StageResult(outputs={"release": final}, counts=Counts(input=nodes.height, kept=nodes.height),
                       stats={"release_dir": final.relative_to(ctx.opts.dataset_root).as_posix(),
                              "version": cfg.version, "name": name,
                              "nodes": nodes.height, "files": len(listed)},
                       provenance={"fingerprint": fingerprint},
                       known_hashes={"release": {rel: (f["sha256"], f["bytes"]) for rel, f in listed.items()}})


def _check_replaceable(final: Path, fingerprint: str, forced: bool) -> None:
    if not final.exists() or forced:
        return
    try:
        manifest = json.loads((final / "manifest.json").read_text(encoding="utf-8"))
        previous = manifest["provenance"]["fingerprints"]["release"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        previous = None
    if previous != fingerprint:
        raise StageError(f"{final} already holds a different release of version {final.name}; a version must name "
                         f"one set of bytes: bump release.version (e.g. --set release.version=...), delete that "
                         f"folder, or rerun with --force release")


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder onto its final name (an old identical build is swapped out, then deleted)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}{atomic.TMP_MARK}old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- contents ---------------------------------------------------------------------------------------------------


def _write_contents(ctx: StageContext, dest: Path) -> pl.DataFrame:
    """nodes/edges/reviews tables, labels.json and shards/ into `dest`; returns the release node table."""
    nodes = release_nodes(ctx)
    atomic.write_parquet(dest / "nodes.parquet", schemas.conform(nodes.to_arrow(), "release_nodes"))
    for name, (stage, output) in {"edges.parquet": ("edges", "edges"),
                                  "reviews.parquet": ("reviews", "reviews")}.items():
        schema = name.removesuffix(".parquet")
        try:
            table = schemas.conform(pq.read_table(verified_input(ctx, stage, output)), schema)
        except (ValueError, TypeError) as exc:  # missing column or an uncastable type upstream
            raise StageError(f"the {stage} stage's {output} table does not match schema {schema!r} ({exc}); "
                             f"rerun it (slip-etl {stage} --force)") from None
        atomic.write_parquet(dest / name, table)
    labels = ctx.input("labels", "labels")
    _check_copy(labels, copy_hashed(labels, dest / "labels.json"), ctx.recorded("labels", "labels"), "labels")
    _copy_shards(ctx, dest / "shards")
    _write_lp_split(ctx, dest, nodes)
    write_split_nodes(dest, nodes)
    return nodes


def _write_lp_split(ctx: StageContext, dest: Path, nodes: pl.DataFrame) -> None:
    """lp_split.parquet from the release's own nodes and edges (rule and seed: etl/graph/lpsplit.py)."""
    cfg = ctx.cfg.release
    edges = pq.read_table(dest / "edges.parquet", columns=["src", "dst"])
    table = build_lp_split(nodes["node_id"].to_numpy(), nodes["split"].to_numpy(), nodes["label"].to_numpy(),
                           nodes["image_status"].to_numpy(), edges.column("src").to_numpy(),
                           edges.column("dst").to_numpy(), negatives=cfg.lp_negatives,
                           hard_fraction=cfg.lp_hard_fraction, seed=cfg.lp_seed)
    atomic.write_parquet(dest / card.LP_SPLIT, table)


def write_split_nodes(dest: Path, nodes: pl.DataFrame) -> None:
    """nodes.parquet's rows once more, one file per split that has nodes (a Hugging Face split is a set of files;
    `datasets` cannot filter one file's rows into splits)."""
    for split in card.HF_SPLITS:
        part = nodes.filter(pl.col("split") == split)
        if part.height:
            path = dest / card.split_nodes_file(split)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_parquet(path, schemas.conform(part.to_arrow(), "release_nodes"))


def _copy_shards(ctx: StageContext, dest: Path) -> None:
    """Copy the shards stage's folder (tars + sizes.json), each file checked against the shards record."""
    src = ctx.input("shards", "shards")
    recorded = ctx.recorded("shards", "shards")
    members = recorded.get("members")
    names = sorted(members) if members is not None else sorted(
        p.name for p in src.iterdir() if p.is_file() and atomic.TMP_MARK not in p.name)
    if SIZES_FILE not in names:
        raise StageError(f"the shards stage's folder {src} has no {SIZES_FILE}; rerun it (slip-etl shards --force)")
    dest.mkdir()
    folder_hash = hashlib.sha256()
    for name in names:
        try:
            source = resolve_inside(src, name)
            target = resolve_inside(dest, name)
        except UnsafePath as exc:
            raise StageError(f"the shards stage's record lists an unsafe file ({exc}); rerun it "
                             f"(slip-etl shards --force)") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        got = copy_hashed(source, target)
        if members is not None:
            _check_copy(source, got, members[name], "shards")
        folder_hash.update(f"{name}\0{got[0]}\n".encode())
    if members is None and folder_hash.hexdigest() != recorded.get("sha256"):
        raise StageError(f"the files in {src} are not the ones the shards stage recorded (folder sha256 differs); "
                         f"rerun it (slip-etl shards --force)")


def verified_input(ctx: StageContext, stage: str, output: str) -> Path:
    """An upstream file output, after checking its bytes are the ones its stage recorded."""
    path = ctx.input(stage, output)
    _check_copy(path, file_sha256(path), ctx.recorded(stage, output), stage)
    return path


def _check_copy(path: Path, got: tuple[str, int], want: dict[str, Any], stage: str) -> None:
    if (got[0], got[1]) != (want.get("sha256"), want.get("bytes")):
        raise StageError(f"{path} is not the file the {stage} stage wrote (sha256 {got[0][:16]}, {got[1]} bytes; "
                         f"recorded {str(want.get('sha256'))[:16]}, {want.get('bytes')} bytes): it changed after "
                         f"that stage finished, so it is not put in a release; rerun it (slip-etl {stage} --force)")


FICLONE = 0x40049409  # Linux ioctl: share the source's extents copy-on-write (btrfs, XFS, ...)
COPY_CHUNK = 1 << 20


def copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy `src` to a new file `dst` — a reflink where the file system can, else a byte copy, never a hard link —
    and return (sha256, bytes) of what `dst` holds, reading the bytes once."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        if _reflink(fin.fileno(), fout.fileno()):
            return file_sha256(dst)
        h = hashlib.sha256()
        size = 0
        while chunk := fin.read(COPY_CHUNK):
            h.update(chunk)
            fout.write(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _reflink(src_fd: int, dst_fd: int) -> bool:
    """Whether the file system cloned src into dst (False where it cannot: ext4, tmpfs, across file systems)."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EBADF,
                         errno.EPERM):
            return False
        raise
    return True


def release_nodes(ctx: StageContext) -> pl.DataFrame:
    """Kept nodes joined with label, label_name, split and image_status (`ok` = the node is in a shard)."""
    kept = (pl.read_parquet(verified_input(ctx, "edges", "node_filter"), columns=["node_id", "kept"])
            .filter(pl.col("kept")).select("node_id"))
    nodes = pl.read_parquet(verified_input(ctx, "nodes", "nodes"))
    labels = pl.read_parquet(verified_input(ctx, "labels", "node_labels"),
                             columns=["node_id", "label", "label_name", "split"])
    status = pl.read_parquet(verified_input(ctx, "images", "status"), columns=["node_id", "status"])
    sharded = (pl.read_parquet(ctx.input("shards", "shards").parent / PLAN_TABLE, columns=["node_id"])
               .with_columns(pl.lit(True).alias("in_shard")))
    table = (kept.join(nodes, on="node_id", how="left").join(labels, on="node_id", how="left")
             .join(status, on="node_id", how="left").join(sharded, on="node_id", how="left"))
    for column, stage in (("asin", "nodes"), ("split", "labels")):
        missing = table.filter(pl.col(column).is_null()).height
        if missing:
            raise StageError(f"{missing} kept node(s) have no row in the {stage} stage's table; rerun it "
                             f"(slip-etl {stage} --force)")
    image_status = (pl.when(pl.col("in_shard")).then(pl.lit("ok"))
                    .when(pl.col("status").is_null()).then(pl.lit(MISSING_STATUS))
                    .when(pl.col("status") == "ok").then(pl.lit(UNUSABLE_STATUS))
                    .otherwise(pl.col("status")))
    return table.with_columns(image_status.alias("image_status")).drop("status", "in_shard").sort("node_id")


# --- stats ------------------------------------------------------------------------------------------------------


def build_stats(ctx: StageContext, folder: Path, nodes: pl.DataFrame) -> dict[str, Any]:
    """stats.json: per-stage accounting and timings, graph, image, class, split and shard figures."""
    edges = pq.read_table(folder / "edges.parquet", columns=["src", "dst", "kind"])
    reviews = pq.read_table(folder / "reviews.parquet", columns=["node_id"])
    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    sizes = json.loads((folder / "shards" / SIZES_FILE).read_text(encoding="utf-8"))
    lp = pq.read_table(folder / card.LP_SPLIT, columns=["split", "negatives", "n_hard"])
    stages = {name: {"counts": rec.get("counts"), "duration_s": rec.get("duration_s"), "stats": rec.get("stats")}
              for name, rec in ctx.upstream.items()}
    status_counts = Counter(nodes["image_status"].to_list())
    label_counts = Counter(nodes["label"].to_list())
    shard_splits: dict[str, dict[str, int]] = {}
    for shard, n in sorted(sizes.items()):
        entry = shard_splits.setdefault(shard.split("-")[0], {"shards": 0, "samples": 0})
        entry["shards"] += 1
        entry["samples"] += n
    return {
        "name": ctx.cfg.release.name.format(category=ctx.opts.category),
        "version": ctx.cfg.release.version,
        "source": ctx.opts.source,
        "category": ctx.cfg.category_name(ctx.opts.category, ctx.opts.source),
        "nodes": nodes.height,
        "edges": {"total": edges.num_rows,
                  "by_kind": dict(sorted(Counter(edges.column("kind").to_pylist()).items()))},
        "degree": degree_stats(nodes["node_id"].to_numpy(), edges.column("src").to_numpy(),
                               edges.column("dst").to_numpy()),
        "images": {"status_counts": dict(sorted(status_counts.items())),
                   "success_rate": round(status_counts.get("ok", 0) / max(nodes.height, 1), 4)},
        "classes": {"level": labels.get("level"), "n_classes": len(labels.get("classes", [])),
                    "histogram": [{"id": c["id"], "name": c["name"], "count": label_counts.get(c["id"], 0)}
                                  for c in labels.get("classes", [])],
                    "unlabeled": label_counts.get(-1, 0)},
        "splits": dict(sorted(Counter(nodes["split"].to_list()).items())),
        "shards": shard_splits,
        "lp_split": {"edges": dict(sorted(Counter(lp.column("split").to_pylist()).items())),
                     "negatives": ctx.cfg.release.lp_negatives, "hard_fraction": ctx.cfg.release.lp_hard_fraction,
                     "seed": ctx.cfg.release.lp_seed,
                     "short_rows": sum(len(n) < ctx.cfg.release.lp_negatives
                                       for n in lp.column("negatives").to_pylist()),
                     "hard_negatives": int(np.sum(lp.column("n_hard").to_numpy()))},
        "reviews": {"rows": reviews.num_rows,
                    "products_with_reviews": len(np.unique(reviews.column("node_id").to_numpy()))},
        "stages": stages,
        "timings_s": {name: rec.get("duration_s") for name, rec in ctx.upstream.items()},
    }


def degree_stats(node_ids: np.ndarray, src: np.ndarray, dst: np.ndarray) -> dict[str, Any]:
    """Degree (distinct neighbours over all edge kinds) per node: summary and full histogram {degree: nodes}."""
    ids = np.asarray(node_ids, dtype=np.int64)
    if len(ids) == 0:
        return {"mean": 0.0, "median": 0.0, "max": 0, "isolated": 0, "histogram": {}}
    top = int(max(ids.max(), src.max() if len(src) else 0, dst.max() if len(dst) else 0)) + 1
    a, b = distinct_pairs(src, dst)
    degree = np.bincount(np.concatenate([a, b]), minlength=top)[ids]
    values, counts = np.unique(degree, return_counts=True)
    return {"mean": round(float(degree.mean()), 3), "median": float(np.median(degree)), "max": int(degree.max()),
            "isolated": int((degree == 0).sum()),
            "histogram": {str(int(v)): int(c) for v, c in zip(values, counts)}}


# --- manifest ---------------------------------------------------------------------------------------------------


def build_manifest(ctx: StageContext, folder: Path, name: str, fingerprint: str) -> dict[str, Any]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == "manifest.json":
            continue
        digest, size = file_sha256(path)
        files[rel] = {"bytes": size, "sha256": digest}
    # Every other stage is upstream of this one (in pipeline order): their records say what ran.
    fingerprints = {stage: rec.get("fingerprint") for stage, rec in ctx.upstream.items()}
    fingerprints["release"] = fingerprint
    versions = {stage: rec.get("version") for stage, rec in ctx.upstream.items()}
    versions["release"] = VERSION
    return {
        "name": name,
        "version": ctx.cfg.release.version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "schema_versions": schemas.schema_versions(),
        "files": files,
        "provenance": {
            "source": ctx.opts.source,
            "category": ctx.cfg.category_name(ctx.opts.category, ctx.opts.source),
            "raw": raw_files(ctx.upstream.get("fetch", {})),
            "config": ctx.cfg.model_dump(mode="json"),
            "fingerprints": fingerprints,
            "stage_versions": versions,
        },
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic.write_json(folder / "manifest.json", manifest)


def raw_files(fetch_record: dict[str, Any]) -> list[dict[str, Any]]:
    """[{url, path, bytes, sha256}] of the raw source files, from the fetch record (provenance, else stats)."""
    raw = fetch_record.get("provenance", {}).get("raw")
    if not raw:
        raw = list(fetch_record.get("stats", {}).get("files", {}).values())
    return [{k: item.get(k) for k in ("url", "path", "bytes", "sha256")} for item in raw]
