"""The shard format both `shards` (which writes it) and `release` (which copies and describes it) rely on.

Work folder: `work/shards/plan.parquet` (which node goes to which shard, in write order) and `work/shards/shards/`
(the tars and `sizes.json`). A sample is the members `<key>.jpg`, `<key>.txt`, `<key>.json` of one tar, key =
`f"{node_id:010d}"`; the JSON member is compact and key-ordered so shards are byte-deterministic.
"""
from __future__ import annotations

import json
from typing import Any

SPLITS = ("train", "val", "test")
SHARDS_DIR = "shards"          # the folder of tars under work/shards/ (and in a release)
PLAN_TABLE = "plan.parquet"    # node_id, asin, label, label_name, split, cluster, caption, shard
SIZES_FILE = "sizes.json"      # {shard file name: samples} (the name open_clip reads)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def sample_key(node_id: int) -> str:
    return f"{int(node_id):010d}"


def sample_json(row: dict[str, Any]) -> bytes:
    """The `<key>.json` member (schema shard_sample), compact and key-ordered for byte-determinism."""
    return json.dumps({"node_id": int(row["node_id"]), "asin": row["asin"], "label": int(row["label"]),
                       "label_name": row["label_name"], "split": row["split"], "cluster": int(row["cluster"])},
                      ensure_ascii=False, separators=(",", ":")).encode("utf-8")
