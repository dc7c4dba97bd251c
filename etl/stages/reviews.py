"""Stage `reviews`: up to K cleaned reviews per kept product (Amazon 2023 reviews).

Every non-blank line of the reviews file has exactly one fate, decided in this order:
rejected (quarantine.parquet) `bad_json` / `not_an_object` / `bad_text` (as in `nodes`), `no_user_id`; filtered
`unknown_product` (parent_asin is not a node), `filtered_node` (a node the graph filters removed:
node_filter.kept is false or the node is missing there), `short_text` (fewer than `reviews.min_text_chars`
characters after cleaning), `duplicate` (same user, product, cleaned text and timestamp as an earlier line: the
first is kept), `over_k` (not among the product's best `reviews.per_product`); the rest are kept.

The rule for the best K: verified purchases first, then more helpful votes, then longer text (as stored,
<= `reviews.max_text_chars`), then newer (no timestamp = oldest), then user_id ascending, then file order.
`rank` is 0 for the best.

How it scales: the file (20-45M lines for a large category) is streamed in line batches by the one JSON-lines
reader (etl/parse/jsonl.py: the same line cap and bad-line rule as `nodes` and `edges`);
each batch is parsed, joined to the node ids, cleaned and filtered, and what survives is spilled to one of P
Parquet partitions by node_id range (P grows with the file). Duplicates and ranks only concern one product, so
each partition is then deduplicated and ranked on its own, exactly, with memory bounded by a partition.

Amazon 2018 sources have no reviews file: the stage writes an empty table with the schema and counts 0.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from etl.core.stage import Counts, StageContext, StageResult
from etl.parse import jsonl, text
from etl.parse.ids import ASIN_PATTERN
from slipio import atomic

VERSION = "1"

RAW_SCHEMA: dict[str, pl.DataType] = {
    "rating": pl.Float64, "title": pl.String, "text": pl.String, "parent_asin": pl.String,
    "user_id": pl.String, "timestamp": pl.Int64, "helpful_vote": pl.Int64, "verified_purchase": pl.Boolean,
}
REJECTED = (*jsonl.BAD_LINE_REASONS, "no_user_id")
FILTERED = ("unknown_product", "filtered_node", "short_text", "duplicate", "over_k")
PARTITION_INPUT_BYTES = 128 << 20   # compressed input bytes per spill partition
MAX_PARTITIONS = 512
INT32_MAX = 2 ** 31 - 1
MAX_RAW_CHARS = 2000                # of a rejected line kept in the quarantine (the contract's limit)


def node_index(nodes_path: Path, node_filter_path: Path) -> pl.DataFrame:
    """asin key (base-36 integer of the ASIN) -> node_id, kept; one row per node."""
    nodes = pl.read_parquet(nodes_path, columns=["node_id", "asin"])
    kept = pl.read_parquet(node_filter_path, columns=["node_id", "kept"])
    return (nodes.join(kept, on="node_id", how="left")
            .select(pl.col("asin").str.to_integer(base=36).alias("key"), "node_id",
                    pl.col("kept").fill_null(False)))


def rank_reviews(candidates: pl.DataFrame, per_product: int) -> tuple[pl.DataFrame, int, int]:
    """Drop duplicates (first line wins), rank each product's reviews by the rule, keep the best `per_product`.

    Returns (kept rows with `rank`, duplicates, over_k)."""
    first = candidates.sort("line_no").filter(
        pl.struct("node_id", "user_id", "text", "timestamp").is_first_distinct())
    duplicates = candidates.height - first.height
    ranked = (first.sort(["node_id", "verified_purchase", "helpful_vote", "text_chars", "timestamp", "user_id",
                          "line_no"],
                         descending=[False, True, True, True, True, False, False], nulls_last=True)
              .with_columns(pl.int_range(pl.len(), dtype=pl.Int32).over("node_id").alias("rank")))
    kept = ranked.filter(pl.col("rank") < per_product)
    return kept, duplicates, ranked.height - kept.height


class ReviewSpiller:
    """Per batch: parse, join, clean, filter; spill survivors to node-range partitions."""

    def __init__(self, cfg: Any, index: pl.DataFrame, spill_dir: Path, n_partitions: int):
        self.cfg = cfg
        self.index = index
        self.span = max(1, math.ceil((int(index["node_id"].max() or 0) + 1) / n_partitions))
        self.spill_dir = spill_dir
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.spill_schema: pa.Schema | None = None
        self.input = 0
        self.counts = {r: 0 for r in REJECTED + FILTERED}
        self.cleaning = {"title": text.CleaningCounts(), "text": text.CleaningCounts()}

    def process(self, batch: jsonl.LineBatch) -> pa.Table:
        """Spill this batch's candidates; return its quarantine rows."""
        self.input += batch.records
        parsed, failures = jsonl.parse_json_lines(batch, RAW_SCHEMA)
        no_user = parsed.filter(pl.col("user_id").fill_null("").str.strip_chars() == "")
        df = parsed.filter(pl.col("user_id").fill_null("").str.strip_chars() != "")
        df = (df.with_columns(pl.when(pl.col("parent_asin").str.contains(ASIN_PATTERN))
                              .then(pl.col("parent_asin").str.to_integer(base=36, strict=False)).alias("key"))
              .join(self.index, on="key", how="left", maintain_order="left"))
        self._count("unknown_product", df["node_id"].null_count())
        df = df.filter(pl.col("node_id").is_not_null())
        self._count("filtered_node", int((~df["kept"]).sum()))
        df = df.filter(pl.col("kept"))
        df = df.with_columns(
            text.clean_series(df["text"], self.cfg.max_text_chars, self.cleaning["text"]).fill_null(""),
            text.clean_series(df["title"], self.cfg.max_title_chars, self.cleaning["title"]).fill_null(""))
        df = df.with_columns(pl.col("text").str.len_chars().alias("text_chars"))
        short = df["text_chars"] < self.cfg.min_text_chars
        self._count("short_text", int(short.sum()))
        df = df.filter(~short)
        self._spill(df.select(
            "node_id", pl.col("parent_asin").alias("asin"), pl.col("rating").cast(pl.Float32), "title", "text",
            "user_id", "timestamp", pl.col("helpful_vote").fill_null(0).clip(0, INT32_MAX).cast(pl.Int32),
            pl.col("verified_purchase").fill_null(False), "text_chars",
            pl.Series("line_no", batch.line_nos[df["__line"].to_numpy()], dtype=pl.Int64)))
        return self._quarantine(batch, no_user, failures)

    def _count(self, reason: str, n: int) -> None:
        self.counts[reason] += int(n)

    def _spill(self, df: pl.DataFrame) -> None:
        parts = df.with_columns((pl.col("node_id") // self.span).alias("__part")).partition_by(
            "__part", as_dict=True, include_key=False)
        for (part,), frame in parts.items():
            table = frame.to_arrow()
            self.spill_schema = self.spill_schema or table.schema
            if part not in self.writers:
                self.writers[part] = pq.ParquetWriter(self.spill_dir / f"part-{part:05d}.parquet",
                                                      self.spill_schema, compression="lz4")
            self.writers[part].write_table(table.cast(self.spill_schema))

    def _quarantine(self, batch: jsonl.LineBatch, no_user: pl.DataFrame, failures: dict[int, str]) -> pa.Table:
        table = jsonl.quarantine_table(batch, no_user["__line"].to_list(), ["no_user_id"] * no_user.height,
                                       no_user["parent_asin"].to_list(), failures, MAX_RAW_CHARS)
        for reason in table.column("reason").to_pylist():
            self.counts[reason] += 1
        return table

    def close(self) -> list[Path]:
        for w in self.writers.values():
            w.close()
        return [self.spill_dir / f"part-{p:05d}.parquet" for p in sorted(self.writers)]


def run(ctx: StageContext) -> StageResult:
    fmt = ctx.cfg.source(ctx.opts.source).format
    out_path, quarantine_path = ctx.out_dir / "reviews.parquet", ctx.out_dir / "quarantine.parquet"
    outputs = {"reviews": out_path, "quarantine": quarantine_path}
    if fmt != "amazon-2023":
        atomic.write_parquet(out_path, schemas.arrow_schema("reviews").empty_table())
        atomic.write_parquet(quarantine_path, schemas.arrow_schema("quarantine").empty_table())
        return StageResult(outputs=outputs, counts=Counts(input=0, kept=0),
                           stats={"note": f"format {fmt} has no reviews file: empty table"},
                           provenance={"format": fmt})
    source = ctx.input("fetch", "reviews")
    index = node_index(ctx.input("nodes", "nodes"), ctx.input("edges", "node_filter"))
    n_partitions = min(MAX_PARTITIONS, max(1, math.ceil(Path(source).stat().st_size / PARTITION_INPUT_BYTES)))
    spill_dir = ctx.out_dir / "spill"
    shutil.rmtree(spill_dir, ignore_errors=True)
    spill_dir.mkdir(parents=True)
    spiller = ReviewSpiller(ctx.cfg.reviews, index, spill_dir, n_partitions)
    with atomic.atomic_path(quarantine_path) as tmp, ctx.progress(desc="reviews", unit="line") as bar:
        writer = pq.ParquetWriter(tmp, schemas.arrow_schema("quarantine"), compression="zstd")
        try:
            for batch in jsonl.read_line_batches(source):
                quarantine = spiller.process(batch)
                if quarantine.num_rows:
                    writer.write_table(quarantine)
                bar.update(len(batch))
        finally:
            parts = spiller.close()
            writer.close()
    counts = spiller.counts
    kept_total, per_product = 0, []
    with atomic.atomic_path(out_path) as tmp:
        writer = pq.ParquetWriter(tmp, schemas.arrow_schema("reviews"), compression="zstd")
        try:
            for part in parts:
                kept, duplicates, over_k = rank_reviews(pl.read_parquet(part), ctx.cfg.reviews.per_product)
                counts["duplicate"] += duplicates
                counts["over_k"] += over_k
                kept_total += kept.height
                per_product.append(kept.group_by("node_id").len()["len"].to_numpy())
                writer.write_table(schemas.conform(kept.to_arrow(), "reviews"))
                part.unlink()
        finally:
            writer.close()
    shutil.rmtree(spill_dir, ignore_errors=True)
    sizes = np.concatenate(per_product) if per_product else np.zeros(0, np.int64)
    return StageResult(
        outputs=outputs,
        counts=Counts(input=spiller.input, kept=kept_total,
                      rejected={r: counts[r] for r in REJECTED if counts[r]},
                      filtered={r: counts[r] for r in FILTERED if counts[r]}),
        stats={
            "products_with_reviews": int(len(sizes)),
            "reviews_per_product": ({"mean": round(float(sizes.mean()), 2), "max": int(sizes.max()),
                                     "at_cap": int((sizes >= ctx.cfg.reviews.per_product).sum())}
                                    if len(sizes) else {}),
            "spill_partitions": len(parts),
            "cleaning": {k: c.as_dict() for k, c in spiller.cleaning.items()},
        },
        provenance={"source": Path(source).name, "format": fmt},
    )
