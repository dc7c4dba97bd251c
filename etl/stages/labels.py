"""Stage `labels`: one class label and one train/val/test split per kept node.

Level rule. A level L (from `labels.levels`) is a depth in `category_path` (0 = the path's first entry, which
for Amazon is the category itself). At level L a node's class is its path prefix `category_path[:L+1]`, named
by joining the entries with " > " (a prefix, not the bare entry: "Accessories" under two parents is two classes).
Nodes whose path is shorter than L+1 have no class at that level. Classes with fewer than
`labels.min_class_size` kept nodes are *rare*: their nodes get label -1 (kept, unlabeled) and the class is
listed by name in labels.json `dropped`. A level is *usable* when it has between `labels.min_classes` and
`labels.max_classes` non-rare classes and those label at least `labels.min_coverage` of the kept nodes. Among
usable levels the one whose class distribution has the highest normalised entropy (H / log K: 1 = perfectly
balanced) wins; ties go to the shallower level. No usable level stops the stage with what each level offered.

Class ids are 0..K-1 in the order of the class names (sorted by code point), so they do not depend on node order.

Splits are stratified by label (-1 is a stratum of its own) and deterministic: each stratum's nodes, in node_id
order, are permuted by a generator seeded with (`labels.seed`, label + 1); the stratum's size is divided by
largest remainder (floor of n * fraction each, the leftover nodes to the largest fractional parts, ties broken
by the same generator), and the permutation is cut in train, val, test order.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

import schemas
from etl.core.stage import Counts, StageContext, StageError, StageResult
from slipio import atomic

VERSION = "1"

SPLITS = ("train", "val", "test")
SEPARATOR = " > "
RELAX_KEYS = "labels.min_class_size, labels.min_classes, labels.max_classes, labels.min_coverage or labels.levels"


def classes_at(paths: pl.Series, level: int) -> pl.Series:
    """Each path's class at `level`: its first level+1 entries joined by SEPARATOR (null if the path is shorter)."""
    return pl.select(pl.when(paths.list.len() > level).then(paths.list.head(level + 1).list.join(SEPARATOR))
                     ).to_series().alias(f"level_{level}")


def assess_level(classes: pl.Series, min_class_size: int, min_classes: int, max_classes: int,
                 min_coverage: float) -> dict[str, Any]:
    """What a level offers: class sizes, which are usable, coverage, balance (normalised entropy)."""
    n = len(classes)
    counts = classes.drop_nulls().value_counts(sort=True, name="count")
    big = counts.filter(pl.col("count") >= min_class_size)
    labelled = int(big["count"].sum()) if big.height else 0
    sizes = big["count"].to_numpy().astype(np.float64)
    entropy = 0.0
    if len(sizes) >= 2:
        p = sizes / sizes.sum()
        entropy = float(-(p * np.log(p)).sum() / math.log(len(sizes)))
    coverage = labelled / n if n else 0.0
    usable = min_classes <= len(sizes) <= max_classes and coverage >= min_coverage
    return {
        "classes": int(counts.height),
        "usable_classes": int(big.height),
        "coverage": round(coverage, 6),
        "entropy": round(entropy, 6),
        "usable": bool(usable),
        "no_category": int(classes.null_count()),
        "_usable_names": sorted(big[classes.name].to_list()),
        "_rare": dict(counts.filter(pl.col("count") < min_class_size).iter_rows()),
    }


def choose_level(per_level: dict[int, dict[str, Any]]) -> int:
    """The usable level with the highest normalised entropy; ties -> the shallower level."""
    usable = [level for level, info in per_level.items() if info["usable"]]
    if not usable:
        found = "; ".join(f"level {level}: {info['usable_classes']} classes of >= min_class_size nodes "
                          f"({info['classes']} in all), coverage {info['coverage']:.2f}"
                          for level, info in sorted(per_level.items()))
        raise StageError(f"labels: no usable category level ({found}); relax {RELAX_KEYS}")
    return min(usable, key=lambda level: (-per_level[level]["entropy"], level))


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per position; `labels` must be in node_id order."""
    out = np.zeros(len(labels), np.int8)
    wanted = np.array([fractions[s] for s in SPLITS], dtype=np.float64)
    wanted /= wanted.sum()
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng([seed % 2**63, int(label) + 1])
        members = members[rng.permutation(len(members))]
        quota = len(members) * wanted
        take = np.floor(quota + 1e-9).astype(np.int64)
        leftover = len(members) - int(take.sum())
        if leftover > 0:
            order = np.lexsort((rng.random(len(SPLITS)), -(quota - take)))
            take[order[:leftover]] += 1
        bounds = np.concatenate([[0], np.cumsum(take)])
        for i in range(len(SPLITS)):
            out[members[bounds[i]:bounds[i + 1]]] = i
    return out


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg.labels
    nodes = pl.read_parquet(ctx.input("nodes", "nodes"), columns=["node_id", "asin", "category_path"])
    kept_ids = pl.read_parquet(ctx.input("edges", "node_filter"), columns=["node_id", "kept"]) \
        .filter(pl.col("kept")).select("node_id")
    nodes = nodes.join(kept_ids, on="node_id", how="semi").sort("node_id")

    per_level = {level: assess_level(classes_at(nodes["category_path"], level), cfg.min_class_size,
                                     cfg.min_classes, cfg.max_classes, cfg.min_coverage)
                 for level in sorted(set(cfg.levels))}
    level = choose_level(per_level)
    chosen = per_level[level]
    names = chosen["_usable_names"]
    class_of = classes_at(nodes["category_path"], level)
    label = class_of.replace_strict(names, list(range(len(names))), default=-1, return_dtype=pl.Int32)
    labels = label.to_numpy()
    split = stratified_split(labels, cfg.split, cfg.seed)

    table = pl.DataFrame({
        "node_id": nodes["node_id"],
        "asin": nodes["asin"],
        "label": label,
        "label_name": pl.select(pl.when(label >= 0).then(class_of)).to_series(),
        "split": pl.Series(np.array(SPLITS)[split]),
    })
    counts = np.bincount(labels[labels >= 0], minlength=len(names))
    split_counts = {s: {str(k): v for k, v in zip(*_label_counts(labels[split == i]))}
                    for i, s in enumerate(SPLITS)}
    report = {
        "level": level,
        "classes": [{"id": i, "name": name, "count": int(counts[i]), "path": name.split(SEPARATOR)}
                    for i, name in enumerate(names)],
        "rule": {"min_class_size": cfg.min_class_size, "min_classes": cfg.min_classes,
                 "max_classes": cfg.max_classes, "min_coverage": cfg.min_coverage, "levels": list(cfg.levels),
                 "split": dict(cfg.split), "seed": cfg.seed, "class": "category_path prefix up to the level",
                 "choice": "usable level with the highest normalised entropy; ties -> shallower",
                 "class_ids": "sorted by name"},
        "dropped": chosen["_rare"],
        "unlabeled": {"rare": int(sum(chosen["_rare"].values())), "no_category": chosen["no_category"]},
        "per_level": {str(lv): {k: v for k, v in info.items() if not k.startswith("_")}
                      for lv, info in per_level.items()},
        "split_counts": split_counts,
    }
    node_labels_path = ctx.out_dir / "node_labels.parquet"
    labels_path = ctx.out_dir / "labels.json"
    atomic.write_parquet(node_labels_path, schemas.conform(table.to_arrow(), "node_labels"))
    atomic.write_json(labels_path, report)
    ctx.log.info("labels: level %d, %d classes, %d of %d nodes labelled", level, len(names),
                 int((labels >= 0).sum()), len(labels))
    return StageResult(
        outputs={"node_labels": node_labels_path, "labels": labels_path},
        counts=Counts(input=len(labels), kept=len(labels)),
        stats={"level": level, "classes": len(names), "labelled": int((labels >= 0).sum()),
               "unlabeled": report["unlabeled"], "coverage": chosen["coverage"], "entropy": chosen["entropy"],
               "splits": {s: int((split == i).sum()) for i, s in enumerate(SPLITS)}},
    )


def _label_counts(labels: np.ndarray) -> tuple[list[int], list[int]]:
    values, counts = np.unique(labels, return_counts=True)
    return values.tolist(), counts.tolist()
