"""Stage `nodes`: stream the raw product metadata into one cleaned node table, quarantining bad records.

Reading. The metadata dump is streamed through the one JSON-lines reader (etl/parse/jsonl.py: batches of whole
lines, pyarrow's JSON reader with a fixed schema, bisection around broken lines, one line cap and one rule for bad
lines); the 5 GB Electronics file is never held whole. Cleaning runs vectorised per batch (etl/parse/text.py).

Records. Each non-blank line is one input record with exactly one fate, checked in this order:
`bad_json` (not JSON or not UTF-8) / `not_an_object` (valid JSON that is not an object) / `bad_text` (a lone
surrogate escape anywhere in the line: the one reader's rule, etl/parse/jsonl.py), `bad_id` (id missing
or not `^[A-Z0-9]{10}$`, no normalisation), `duplicate_id` (an earlier record with a valid id had the same id:
the first occurrence claims the id even if it is rejected below), `no_title` (empty after cleaning),
`no_image_url` (no http(s) candidate); otherwise the record is kept and gets the next `node_id` (0..N-1 in
input order). Rejected records go to quarantine.parquet with their line number (1-based, counting blank lines)
and up to `nodes.max_raw_chars` characters of the raw line.

Fields (2023 -> 2018): asin = parent_asin / asin; features = features / feature; description = the items of
description joined by a space; store = store / brand; main_category = main_category / main_cat; category_path
= categories / category; also_buy / also_view (2018; empty for 2023). Text is cleaned by etl/parse/text.py and
capped by the `nodes.*` limits; list items that clean to "" are dropped; empty store/main_category -> null.
price: numbers and "$1,299.99" parse; a range "$5.99 - $12.99" -> its lower bound (the price the listing
shows as "from"); "None", "", null and anything else -> null. image_url: 2023 `images` with the MAIN variant
first, then in list order, each offering hi_res > large > thumb; 2018 every imageURLHighRes, then imageURL;
the first http(s) URL without whitespace or control characters wins. image_url_thumb / _large / _hi_res: every
usable URL of that same image (2023), or the first usable imageURL (thumb) and imageURLHighRes (hi_res) for 2018;
the images stage picks the rendition to download from them (etl/imaging/renditions.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from etl.core.stage import Counts, StageContext, StageError, StageResult
from etl.parse import jsonl, text
from etl.parse.ids import ASIN_PATTERN
from slipio import atomic

VERSION = "2"  # 2: image_url_thumb / image_url_large / image_url_hi_res (the renditions of image_url's image)

URL_PATTERN = r"^(?i)https?://[^\s\p{Cc}/?#]+[^\s\p{Cc}]*$"  # no whitespace or control characters (NUL)
REASONS = (*jsonl.BAD_LINE_REASONS, "bad_id", "duplicate_id", "no_title", "no_image_url")

_IMAGE_2023 = pl.Struct({"thumb": pl.String, "large": pl.String, "variant": pl.String, "hi_res": pl.String})
RAW_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "amazon-2023": {
        "parent_asin": pl.String, "title": pl.String, "features": pl.List(pl.String),
        "description": pl.List(pl.String), "store": pl.String, "main_category": pl.String,
        "categories": pl.List(pl.String), "price": pl.String, "average_rating": pl.Float64,
        "rating_number": pl.Int64, "images": pl.List(_IMAGE_2023),
    },
    "amazon-2018": {
        "asin": pl.String, "title": pl.String, "feature": pl.List(pl.String), "description": pl.List(pl.String),
        "brand": pl.String, "main_cat": pl.String, "category": pl.List(pl.String), "price": pl.String,
        "imageURL": pl.List(pl.String), "imageURLHighRes": pl.List(pl.String),
        "also_buy": pl.List(pl.String), "also_view": pl.List(pl.String),
    },
}


# pyarrow's JSON reader refuses a field whose type changes between records; 2023's `price` is a number or the
# string "None", so the reader skips it and `jsonl.field_text` takes it from the line text instead.
_TEXT_EXTRACTED = frozenset({"price"})


# --------------------------------------------------------------------------------------------- fields

def parse_price(expr: pl.Expr) -> pl.Expr:
    """Price text -> float: "12.99", "$1,299.99", a range -> its lower bound; placeholders and junk -> null."""
    number = r"([0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)"
    first = expr.str.strip_chars().str.extract(rf"^\$?\s*{number}(?:\s*-\s*\$?\s*{number})?$", 1)
    value = first.str.replace_all(",", "").cast(pl.Float64, strict=False)
    return pl.when(value.is_finite() & (value >= 0)).then(value)


def price_kind(expr: pl.Expr) -> pl.Expr:
    """What `parse_price` made of a value (for stats): number | range | missing | unparsable."""
    s = expr.str.strip_chars()
    return (pl.when(s.is_null() | (s == "") | (s == "None")).then(pl.lit("missing"))
            .when(parse_price(expr).is_null()).then(pl.lit("unparsable"))
            .when(s.str.contains(r"\d\s*-\s*\$?\s*\d")).then(pl.lit("range"))
            .otherwise(pl.lit("number")))


def _valid_url(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr.str.contains(URL_PATTERN)).then(expr)


RENDITION_COLUMNS = {"thumb": "image_url_thumb", "large": "image_url_large", "hi_res": "image_url_hi_res"}


def _image_url_2023() -> pl.Expr:
    """MAIN variant first, then list order; per image hi_res > large > thumb; the first http(s) URL.

    A MAIN image without a usable URL falls through to the first image that has one, which is exactly
    coalesce(first usable URL among MAIN images, first usable URL among all images)."""
    image = pl.element().struct
    usable = pl.coalesce(*(_valid_url(image.field(f).str.strip_chars()) for f in ("hi_res", "large", "thumb")))
    main = pl.col("images").list.eval(usable.filter(image.field("variant") == "MAIN").drop_nulls().first())
    first = pl.col("images").list.eval(usable.drop_nulls().first())
    return pl.coalesce(main.list.first(), first.list.first())


def _image_urls_2023() -> list[pl.Expr]:
    """image_url and every usable rendition URL of the image it comes from (chosen by the same rule)."""
    image = pl.element().struct
    usable = pl.coalesce(*(_valid_url(image.field(f).str.strip_chars()) for f in ("hi_res", "large", "thumb")))
    main = pl.col("images").list.eval(pl.element().filter(usable.is_not_null()
                                                          & (image.field("variant") == "MAIN")).first())
    first = pl.col("images").list.eval(pl.element().filter(usable.is_not_null()).first())
    chosen = pl.coalesce(main.list.first(), first.list.first()).struct
    return [_image_url_2023().alias("image_url"),
            *(_valid_url(chosen.field(name).str.strip_chars()).alias(column)
              for name, column in RENDITION_COLUMNS.items())]


def _first_url(column: str) -> pl.Expr:
    return pl.col(column).fill_null([]).list.eval(_valid_url(pl.element().str.strip_chars()).drop_nulls()).list.first()


def _image_urls_2018() -> list[pl.Expr]:
    candidates = pl.concat_list(pl.col("imageURLHighRes").fill_null([]), pl.col("imageURL").fill_null([]))
    return [candidates.list.eval(_valid_url(pl.element().str.strip_chars()).drop_nulls()).list.first()
            .alias("image_url"), _first_url("imageURL").alias(RENDITION_COLUMNS["thumb"]),
            pl.lit(None, dtype=pl.String).alias(RENDITION_COLUMNS["large"]),
            _first_url("imageURLHighRes").alias(RENDITION_COLUMNS["hi_res"])]


def normalise_fields(df: pl.DataFrame, fmt: str) -> pl.DataFrame:
    """Raw columns of either format -> the common raw columns (before cleaning)."""
    empty = pl.lit([], dtype=pl.List(pl.String))
    if fmt == "amazon-2023":
        return df.select(
            "__line",
            pl.col("parent_asin").alias("asin"), "title", pl.col("features").fill_null([]),
            pl.col("description").fill_null([]).list.join(" ").alias("description"),
            "store", "main_category", pl.col("categories").fill_null([]).alias("category_path"), "price",
            pl.col("average_rating").fill_nan(None), "rating_number", *_image_urls_2023(),
            empty.alias("also_buy"), empty.alias("also_view"),
        )
    return df.select(
        "__line",
        "asin", "title", pl.col("feature").fill_null([]).alias("features"),
        pl.col("description").fill_null([]).list.join(" ").alias("description"),
        pl.col("brand").alias("store"), pl.col("main_cat").alias("main_category"),
        pl.col("category").fill_null([]).alias("category_path"), "price",
        pl.lit(None, dtype=pl.Float64).alias("average_rating"), pl.lit(None, dtype=pl.Int64).alias("rating_number"),
        *_image_urls_2018(),
        pl.col("also_buy").fill_null([]).list.eval(pl.element().str.strip_chars()).list.drop_nulls(),
        pl.col("also_view").fill_null([]).list.eval(pl.element().str.strip_chars()).list.drop_nulls(),
    )


# --------------------------------------------------------------------------------------------- cleaning

TEXT_FIELDS = ("title", "features", "description", "store", "main_category", "category_path")


def clean_list_series(lists: pl.Series, max_chars: int, max_items: int | None,
                      counts: text.CleaningCounts | None = None) -> pl.Series:
    """Clean every item, drop items that clean to "" (or null), keep the first `max_items` of each list."""
    lists = lists.fill_null([])
    n = len(lists)
    lens = lists.list.len().to_numpy().astype(np.int64)
    cleaned = text.clean_series(lists.explode(empty_as_null=False, keep_nulls=False), max_chars, counts)
    rows = np.repeat(np.arange(n, dtype=np.int64), lens)
    keep = (cleaned.str.len_bytes() > 0).fill_null(False).to_numpy()
    rows, values = rows[keep], cleaned.filter(pl.Series(keep))
    if max_items is not None and len(rows):
        within = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left") < max_items
        rows, values = rows[within], values.filter(pl.Series(within))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int64)
    arr = pa.LargeListArray.from_arrays(pa.array(offsets), values.to_arrow().cast(pa.large_string()))
    return pl.Series(lists.name, arr)


# --------------------------------------------------------------------------------------------- the stage

class NodeBuilder:
    """Turns line batches into node rows and quarantine rows, keeping the state that spans batches."""

    def __init__(self, cfg: Any, fmt: str):
        self.cfg = cfg
        self.fmt = fmt
        self.schema = RAW_SCHEMAS[fmt]
        self.seen_ids: set[int] = set()
        self.next_id = 0
        self.input = 0
        self.rejected = {r: 0 for r in REASONS}
        self.text = {f: text.CleaningCounts() for f in TEXT_FIELDS}
        self.prices = {"number": 0, "range": 0, "missing": 0, "unparsable": 0}
        self.filled = {c: 0 for c in ("features", "description", "store", "main_category", "category_path",
                                      "price", "average_rating", "rating_number")}
        self.lengths: dict[str, list[np.ndarray]] = {"title": [], "description": [], "features": []}

    def process(self, batch: jsonl.LineBatch) -> tuple[pa.Table, pa.Table]:
        self.input += batch.records
        parsed, failures = jsonl.parse_json_lines(batch, self.schema,
                                                  _TEXT_EXTRACTED if self.fmt == "amazon-2023" else frozenset())
        df = normalise_fields(parsed, self.fmt)
        valid_id = df["asin"].str.contains(ASIN_PATTERN).fill_null(False)
        keys = df["asin"].filter(valid_id).str.to_integer(base=36)
        duplicate = np.zeros(df.height, dtype=bool)
        duplicate[valid_id.to_numpy()] = self._seen_before(keys)
        reason = (pl.select(pl.when(~valid_id).then(pl.lit("bad_id"))
                            .when(pl.Series(duplicate)).then(pl.lit("duplicate_id"))).to_series())
        cand = df.with_columns(reason.alias("reason"))
        cand = cand.with_columns(text.clean_series(cand["title"], self.cfg.max_title_chars, self.text["title"]))
        cand = cand.with_columns(
            pl.when(pl.col("reason").is_null() & (pl.col("title").fill_null("") == "")).then(pl.lit("no_title"))
            .when(pl.col("reason").is_null() & pl.col("image_url").is_null()).then(pl.lit("no_image_url"))
            .otherwise(pl.col("reason")).alias("reason"))
        kept_mask = cand["reason"].is_null()
        nodes = self._finish_nodes(cand.filter(kept_mask))
        quarantine = self._quarantine(batch, cand.filter(~kept_mask), failures)
        return nodes, quarantine

    def _seen_before(self, keys: pl.Series) -> np.ndarray:
        """For each id in order: was it claimed by an earlier record (in this or an earlier batch)?"""
        earlier_batch = np.fromiter(map(self.seen_ids.__contains__, keys.to_list()), dtype=bool, count=len(keys))
        self.seen_ids.update(keys.to_list())
        return earlier_batch | ~keys.is_first_distinct().to_numpy()

    def _finish_nodes(self, kept: pl.DataFrame) -> pa.Table:
        cfg, st = self.cfg, self.text
        n = kept.height
        out = pl.DataFrame({
            "node_id": np.arange(self.next_id, self.next_id + n, dtype=np.int64),
            "asin": kept["asin"],
            "title": kept["title"],
            "features": clean_list_series(kept["features"], cfg.max_feature_chars, cfg.max_features,
                                          st["features"]),
            "description": text.clean_series(kept["description"], cfg.max_description_chars, st["description"])
            .fill_null(""),
            "store": text.clean_series(kept["store"], cfg.max_store_chars, st["store"]),
            "main_category": text.clean_series(kept["main_category"], cfg.max_category_chars, st["main_category"]),
            "category_path": clean_list_series(kept["category_path"], cfg.max_category_chars, None,
                                               st["category_path"]),
            "price": kept.select(parse_price(pl.col("price"))).to_series(),
            "average_rating": kept["average_rating"],
            "rating_number": kept["rating_number"],
            "image_url": kept["image_url"].str.strip_chars(),
            **{column: kept[column] for column in RENDITION_COLUMNS.values()},
            "also_buy": kept["also_buy"],
            "also_view": kept["also_view"],
        }).with_columns(pl.col("store", "main_category").replace("", None))
        self.next_id += n
        kinds = kept.select(price_kind(pl.col("price")).alias("kind"))["kind"].value_counts()
        for kind, count in kinds.iter_rows():
            self.prices[kind] += count
        filled = out.select(
            (pl.col("features").list.len() > 0).sum().alias("features"),
            (pl.col("description") != "").sum().alias("description"),
            pl.col("store").is_not_null().sum().alias("store"),
            pl.col("main_category").is_not_null().sum().alias("main_category"),
            (pl.col("category_path").list.len() > 0).sum().alias("category_path"),
            pl.col("price").is_not_null().sum().alias("price"),
            pl.col("average_rating").is_not_null().sum().alias("average_rating"),
            pl.col("rating_number").is_not_null().sum().alias("rating_number"),
        ).row(0, named=True)
        for k, v in filled.items():
            self.filled[k] += int(v)
        self.lengths["title"].append(out["title"].str.len_chars().to_numpy())
        self.lengths["description"].append(out["description"].str.len_chars().to_numpy())
        self.lengths["features"].append(out["features"].list.len().to_numpy())
        return schemas.conform(out.to_arrow(), "nodes")

    def _quarantine(self, batch: jsonl.LineBatch, rejected: pl.DataFrame, failures: dict[int, str]) -> pa.Table:
        table = jsonl.quarantine_table(batch, rejected["__line"].to_list(), rejected["reason"].to_list(),
                                       rejected["asin"].to_list(), failures, self.cfg.max_raw_chars)
        for reason in table.column("reason").to_pylist():
            self.rejected[reason] += 1
        return table

    def stats(self) -> dict[str, Any]:
        kept = max(self.next_id, 1)
        lengths = {}
        for name, parts in self.lengths.items():
            v = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            lengths[name] = ({"mean": round(float(v.mean()), 1), "p50": float(np.percentile(v, 50)),
                              "p95": float(np.percentile(v, 95)), "max": int(v.max())} if len(v) else {})
        return {
            "format": self.fmt,
            "fill_rate": {k: round(v / kept, 4) for k, v in self.filled.items()},
            "price": self.prices,
            "text_lengths": lengths,  # characters (features: items per node)
            "cleaning": {f: c.as_dict() for f, c in self.text.items()},
        }


def run(ctx: StageContext) -> StageResult:
    fmt = ctx.cfg.source(ctx.opts.source).format
    if fmt not in RAW_SCHEMAS:
        raise StageError(f"nodes: unsupported metadata format {fmt!r} (supported: {', '.join(RAW_SCHEMAS)})")
    source = ctx.input("fetch", "metadata")
    builder = NodeBuilder(ctx.cfg.nodes, fmt)
    nodes_path, quarantine_path = ctx.out_dir / "nodes.parquet", ctx.out_dir / "quarantine.parquet"
    with atomic.atomic_path(nodes_path) as nodes_tmp, atomic.atomic_path(quarantine_path) as quarantine_tmp, \
            ctx.progress(desc="nodes", unit="rec") as bar:
        node_writer = pq.ParquetWriter(nodes_tmp, schemas.arrow_schema("nodes"), compression="zstd")
        quarantine_writer = pq.ParquetWriter(quarantine_tmp, schemas.arrow_schema("quarantine"), compression="zstd")
        try:
            for batch in jsonl.read_line_batches(source):
                nodes, quarantine = builder.process(batch)
                node_writer.write_table(nodes)
                if quarantine.num_rows:
                    quarantine_writer.write_table(quarantine)
                bar.update(len(batch))
        finally:
            node_writer.close()
            quarantine_writer.close()
    rejected = {r: n for r, n in builder.rejected.items() if n}
    ctx.log.info("nodes: %d records, %d kept, rejected %s", builder.input, builder.next_id, rejected or "none")
    return StageResult(
        outputs={"nodes": nodes_path, "quarantine": quarantine_path},
        counts=Counts(input=builder.input, kept=builder.next_id, rejected=rejected),
        stats=builder.stats(),
        provenance={"source": Path(source).name, "format": fmt},
    )
