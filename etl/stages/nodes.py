"""Stage `nodes`: stream the raw product metadata into one cleaned node table, quarantining bad records.

Reading. The gzip stream is decompressed in a background thread (ISA-L when installed, ~2x zlib) into batches
of whole lines (`read_line_batches`); each batch is parsed by pyarrow's JSON reader (C++, multithreaded; about
3x less CPU than polars' NDJSON reader on this data, which spends most of its time building the `images`
structs) with a fixed schema (`parse_json_lines`). A batch holding a broken line makes that reader fail as a
whole, so such a batch is bisected: halves that parse are kept, and only blocks of <= 64 lines are parsed line
by line in Python, which also coerces wrong-typed fields (`"features": "text"`, a string rating) to the schema.
A broken line therefore costs about one extra parse of its batch, never a stop. Lines that do not start with
`{` skip the reader (pyarrow would read `null` as an all-null record). Memory is bounded by the batch size
(64 MiB of text); the 5 GB Electronics file is never held whole. Cleaning runs vectorised per batch (etl/text.py).

Records. Each non-blank line is one input record with exactly one fate, checked in this order:
`bad_json` (not JSON or not UTF-8) / `not_an_object` (valid JSON that is not an object), `bad_id` (id missing
or not `^[A-Z0-9]{10}$`, no normalisation), `duplicate_id` (an earlier record with a valid id had the same id:
the first occurrence claims the id even if it is rejected below), `no_title` (empty after cleaning),
`no_image_url` (no http(s) candidate); otherwise the record is kept and gets the next `node_id` (0..N-1 in
input order). Rejected records go to quarantine.parquet with their line number (1-based, counting blank lines)
and up to `nodes.max_raw_chars` characters of the raw line.

Fields (2023 -> 2018): asin = parent_asin / asin; features = features / feature; description = the items of
description joined by a space; store = store / brand; main_category = main_category / main_cat; category_path
= categories / category; also_buy / also_view (2018; empty for 2023). Text is cleaned by etl/text.py and
capped by the `nodes.*` limits; list items that clean to "" are dropped; empty store/main_category -> null.
price: numbers and "$1,299.99" parse; a range "$5.99 - $12.99" -> its lower bound (the price the listing
shows as "from"); "None", "", null and anything else -> null. image_url: 2023 `images` with the MAIN variant
first, then in list order, each offering hi_res > large > thumb; 2018 every imageURLHighRes, then imageURL;
the first http(s) URL wins.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

import schemas
from etl.core.stage import Counts, StageContext, StageError, StageResult
from etl.parse import text
from etl.parse.rawio import inflated_chunks
from slipio import atomic

BATCH_BYTES = 64 << 20
MAX_LINE_BYTES = 256 << 20      # a longer "line" is not a record: it is rejected as bad_json, not buffered
PYTHON_BLOCK_LINES = 64         # bisection stops here and parses line by line
_BLOCK_BYTES = 1 << 20          # pyarrow JSON block: the unit its threads share out
ASIN_PATTERN = r"^[A-Z0-9]{10}$"
URL_PATTERN = r"^(?i)https?://[^\s/?#]+[^\s]*$"
REASONS = ("bad_json", "not_an_object", "bad_id", "duplicate_id", "no_title", "no_image_url")

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


# --------------------------------------------------------------------------------------------- reading lines

@dataclass
class LineBatch:
    """Whole lines of the decompressed stream: `buf[starts[i]:ends[i]]` is line number `line_nos[i]` (1-based).

    Blank lines are not listed (they are not records); `oversized` holds (line_no, prefix) of lines longer than
    MAX_LINE_BYTES that were skipped, not buffered."""

    buf: bytes
    starts: np.ndarray
    ends: np.ndarray
    line_nos: np.ndarray
    oversized: list[tuple[int, bytes]] = field(default_factory=list)
    physical_lines: int = 0

    def __len__(self) -> int:
        return len(self.starts)

    def line(self, i: int) -> bytes:
        return self.buf[self.starts[i]:self.ends[i]]


def read_line_batches(path: Path, batch_bytes: int = BATCH_BYTES) -> Iterator[LineBatch]:
    """Stream `path` (gzip or plain) as batches of whole lines, about `batch_bytes` each."""
    tail = b""
    next_line_no = 1
    skipping: tuple[int, bytes] | None = None  # an oversized line being skipped: (line_no, prefix)
    for chunk in inflated_chunks(path, batch_bytes):
        oversized: list[tuple[int, bytes]] = []
        if skipping is not None:
            nl = chunk.find(b"\n")
            if nl < 0:
                continue
            oversized.append(skipping)
            next_line_no += 1
            skipping, chunk = None, chunk[nl + 1:]
        buf = tail + chunk if tail else chunk
        cut = buf.rfind(b"\n") + 1
        if cut == 0 and len(buf) > MAX_LINE_BYTES:
            skipping, tail = (next_line_no, buf[:4096]), b""
            continue
        tail = buf[cut:]
        batch = _split_lines(buf, next_line_no, cut)
        batch.oversized = oversized
        next_line_no += batch.physical_lines
        if len(batch) or oversized:
            yield batch
    if skipping is not None:
        empty = np.zeros(0, np.int64)
        yield LineBatch(b"", empty, empty, empty, [skipping])
    elif tail:
        yield _split_lines(tail + b"\n", next_line_no)


def _split_lines(buf: bytes, first_line_no: int, end: int | None = None) -> LineBatch:
    """Lines of buf[:end] (which ends with a newline)."""
    ends = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8, count=len(buf) if end is None else end) == 10)
    starts = np.concatenate([np.zeros(1, np.int64), ends[:-1] + 1]) if len(ends) else ends
    line_nos = np.arange(first_line_no, first_line_no + len(ends), dtype=np.int64)
    view = np.frombuffer(buf, dtype=np.uint8)
    empty = ends == starts
    first = view[np.minimum(starts, max(len(view) - 1, 0))] if len(view) else np.zeros(0, np.uint8)
    maybe_blank = np.flatnonzero(empty | np.isin(first, np.frombuffer(b" \t\r\x0b\x0c", dtype=np.uint8)))
    blank = [i for i in maybe_blank if not buf[starts[i]:ends[i]].strip()]
    physical = len(ends)
    if blank:
        keep = np.ones(len(ends), dtype=bool)
        keep[blank] = False
        starts, ends, line_nos = starts[keep], ends[keep], line_nos[keep]
    return LineBatch(buf, starts, ends, line_nos, physical_lines=physical)


# --------------------------------------------------------------------------------------------- parsing JSON

def _arrow_type(dtype: pl.DataType) -> pa.DataType:
    if isinstance(dtype, pl.List):
        return pa.list_(_arrow_type(dtype.inner))
    if isinstance(dtype, pl.Struct):
        return pa.struct([(f.name, _arrow_type(f.dtype)) for f in dtype.fields])
    return {pl.String: pa.string(), pl.Float64: pa.float64(), pl.Int64: pa.int64(), pl.Boolean: pa.bool_()}[dtype]


# pyarrow's JSON reader refuses a field whose type changes between records; 2023's `price` is a number or the
# string "None", so the reader skips it and `_price_text` takes it from the line text instead.
_TEXT_EXTRACTED = {"price"}
_PRICE_VALUE = r'"price"\s*:\s*("(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|null|true|false)'


def parse_json_lines(batch: LineBatch, schema: dict[str, pl.DataType],
                     text_fields: set[str] = frozenset()) -> tuple[pl.DataFrame, dict[int, str]]:
    """Parse every line of `batch` into a frame with `schema` plus `__line` (index into the batch).

    Returns the frame of parsed records and {line index: reason} for lines that are not records
    (`bad_json` / `not_an_object`). Fast path: pyarrow's multithreaded JSON reader over whole runs of lines;
    lines that do not start with `{` (never an object) go straight to the Python path. `text_fields` are
    taken from the line text by `_price_text` instead of the reader (see _TEXT_EXTRACTED)."""
    arrow_schema = pa.schema([(k, _arrow_type(t)) for k, t in schema.items() if k not in text_fields])
    failures: dict[int, str] = {}
    pieces: list[tuple[pa.Table, np.ndarray]] = []
    python_rows: list[tuple[int, dict[str, Any]]] = []
    starts = batch.starts
    buf = np.frombuffer(batch.buf, dtype=np.uint8)
    odd = np.flatnonzero(buf[starts] != ord("{")) if len(batch) else np.zeros(0, np.int64)
    bounds = [-1, *odd.tolist(), len(batch)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        _parse_range(batch, lo + 1, hi, arrow_schema, schema, pieces, python_rows, failures)
        if hi < len(batch):
            _parse_python(batch, hi, hi + 1, schema, python_rows, failures)
    frame = _assemble(pieces, python_rows, schema, text_fields, batch)
    return frame, failures


def _parse_range(batch: LineBatch, lo: int, hi: int, arrow_schema: pa.Schema, schema: dict[str, pl.DataType],
                 pieces: list, python_rows: list, failures: dict[int, str]) -> None:
    if lo >= hi:
        return
    start, end = int(batch.starts[lo]), int(batch.ends[hi - 1])
    try:
        table = pajson.read_json(pa.BufferReader(pa.py_buffer(batch.buf)[start:end]),
                                 read_options=pajson.ReadOptions(block_size=_BLOCK_BYTES),
                                 parse_options=pajson.ParseOptions(explicit_schema=arrow_schema,
                                                                   unexpected_field_behavior="ignore"))
        if table.num_rows == hi - lo:
            pieces.append((table, np.arange(lo, hi, dtype=np.int64)))
            return
    except (pa.ArrowException, ValueError):  # malformed or wrongly typed somewhere in the range
        pass
    if hi - lo > PYTHON_BLOCK_LINES:
        mid = (lo + hi) // 2
        _parse_range(batch, lo, mid, arrow_schema, schema, pieces, python_rows, failures)
        _parse_range(batch, mid, hi, arrow_schema, schema, pieces, python_rows, failures)
    else:
        _parse_python(batch, lo, hi, schema, python_rows, failures)


def _parse_python(batch: LineBatch, lo: int, hi: int, schema: dict[str, pl.DataType], python_rows: list,
                  failures: dict[int, str]) -> None:
    for i in range(lo, hi):
        try:
            obj = json.loads(batch.line(i))
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            failures[i] = "bad_json"
            continue
        if not isinstance(obj, dict):
            failures[i] = "not_an_object"
            continue
        python_rows.append((i, {k: coerce(obj.get(k), t) for k, t in schema.items()}))


def coerce(value: Any, dtype: pl.DataType) -> Any:
    """One JSON value -> `dtype` for the Python path; what does not fit is null.

    Strings keep numbers as text ("12.5"); lists accept a lone string as one item and drop items that do not
    fit; numbers accept numeric strings; non-finite numbers and booleans are null."""
    if value is None:
        return None
    if dtype == pl.String:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return json.dumps(value)
        return None
    if dtype == pl.Boolean:
        return value if isinstance(value, bool) else None
    if dtype == pl.Float64:
        if isinstance(value, bool):
            return None
        try:
            f = float(value)
        except (TypeError, ValueError):
            return None
        return f if math.isfinite(f) else None
    if dtype == pl.Int64:
        if isinstance(value, bool):
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        return value if isinstance(value, int) and -(2 ** 63) <= value < 2 ** 63 else None
    if isinstance(dtype, pl.List):
        items = value if isinstance(value, list) else [value] if isinstance(value, str) else []
        out = [coerce(v, dtype.inner) for v in items]
        return [v for v in out if v is not None]
    if isinstance(dtype, pl.Struct):
        if not isinstance(value, dict):
            return None
        return {f.name: coerce(value.get(f.name), f.dtype) for f in dtype.fields}
    return None


def _assemble(pieces: list, python_rows: list, schema: dict[str, pl.DataType], text_fields: set[str],
              batch: LineBatch) -> pl.DataFrame:
    frames = []
    for table, lines in pieces:
        df = pl.from_arrow(table)
        if text_fields:
            df = df.with_columns(_price_text(batch, lines).alias("price"))
        frames.append(df.with_columns(pl.Series("__line", lines, dtype=pl.Int64)).select(*schema, "__line"))
    if python_rows:
        lines = [i for i, _ in python_rows]
        frames.append(pl.DataFrame([r for _, r in python_rows], schema=schema)
                      .with_columns(pl.Series("__line", lines, dtype=pl.Int64)))
    if not frames:
        return pl.DataFrame(schema={**schema, "__line": pl.Int64})
    return pl.concat(frames, how="vertical").sort("__line")


def _lines_series(batch: LineBatch, lo: int, hi: int) -> pl.Series:
    """Lines lo..hi-1 as a string Series over the batch buffer (each with any blank lines after it)."""
    offsets = np.append(batch.starts[lo:hi], batch.ends[hi - 1]).astype(np.int64)
    arr = pa.Array.from_buffers(pa.large_string(), hi - lo, [None, pa.py_buffer(offsets), pa.py_buffer(batch.buf)])
    return pl.Series(arr)


def _price_text(batch: LineBatch, lines: np.ndarray) -> pl.Series:
    """The first `"price": value` of each line: strings unquoted, numbers as text, null/true/false -> null.

    First occurrence = the top-level field: the dumps write `price` before the nested `details`, and a
    `"price":` inside a string value is escaped (`\\"price\\":`) so it never matches."""
    v = pl.col("v")
    df = pl.DataFrame({"v": _lines_series(batch, int(lines[0]), int(lines[-1]) + 1).str.extract(_PRICE_VALUE, 1)})
    out = df.select(pl.when(v.str.starts_with('"')).then(v.str.slice(1).str.strip_suffix('"'))
                    .when(v.is_in(["null", "true", "false"])).then(None)
                    .otherwise(v).alias("price"),
                    (v.str.starts_with('"') & v.str.contains("\\", literal=True)).alias("escaped"))
    price = out["price"]
    escaped = out["escaped"].fill_null(False)
    if escaped.any():  # a JSON escape inside the string: decode it exactly
        decoded = pl.Series([json.loads(x) for x in df["v"].filter(escaped).to_list()], dtype=pl.String)
        price = price.clone().scatter(escaped.arg_true(), decoded)
    return price


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


def _image_url_2023() -> pl.Expr:
    """MAIN variant first, then list order; per image hi_res > large > thumb; the first http(s) URL.

    A MAIN image without a usable URL falls through to the first image that has one, which is exactly
    coalesce(first usable URL among MAIN images, first usable URL among all images)."""
    image = pl.element().struct
    usable = pl.coalesce(*(_valid_url(image.field(f).str.strip_chars()) for f in ("hi_res", "large", "thumb")))
    main = pl.col("images").list.eval(usable.filter(image.field("variant") == "MAIN").drop_nulls().first())
    first = pl.col("images").list.eval(usable.drop_nulls().first())
    return pl.coalesce(main.list.first(), first.list.first())


def _image_url_2018() -> pl.Expr:
    candidates = pl.concat_list(pl.col("imageURLHighRes").fill_null([]), pl.col("imageURL").fill_null([]))
    return candidates.list.eval(_valid_url(pl.element().str.strip_chars()).drop_nulls()).list.first()


def normalise_fields(df: pl.DataFrame, fmt: str) -> pl.DataFrame:
    """Raw columns of either format -> the common raw columns (before cleaning)."""
    empty = pl.lit([], dtype=pl.List(pl.String))
    if fmt == "amazon-2023":
        return df.select(
            "__line",
            pl.col("parent_asin").alias("asin"), "title", pl.col("features").fill_null([]),
            pl.col("description").fill_null([]).list.join(" ").alias("description"),
            "store", "main_category", pl.col("categories").fill_null([]).alias("category_path"), "price",
            pl.col("average_rating").fill_nan(None), "rating_number", _image_url_2023().alias("image_url"),
            empty.alias("also_buy"), empty.alias("also_view"),
        )
    return df.select(
        "__line",
        "asin", "title", pl.col("feature").fill_null([]).alias("features"),
        pl.col("description").fill_null([]).list.join(" ").alias("description"),
        pl.col("brand").alias("store"), pl.col("main_cat").alias("main_category"),
        pl.col("category").fill_null([]).alias("category_path"), "price",
        pl.lit(None, dtype=pl.Float64).alias("average_rating"), pl.lit(None, dtype=pl.Int64).alias("rating_number"),
        _image_url_2018().alias("image_url"),
        pl.col("also_buy").fill_null([]).list.eval(pl.element().str.strip_chars()).list.drop_nulls(),
        pl.col("also_view").fill_null([]).list.eval(pl.element().str.strip_chars()).list.drop_nulls(),
    )


def quarantine_table(batch: LineBatch, lines: list[int], reasons: list[str], ids: list[str | None],
                     max_raw_chars: int) -> pa.Table:
    """Rejected lines of a batch (plus its oversized lines, as bad_json) as quarantine rows, by line number."""
    line_nos = [int(batch.line_nos[i]) for i in lines]
    raws = [batch.line(i)[: max_raw_chars * 4].decode("utf-8", "replace")[:max_raw_chars] for i in lines]
    for line_no, prefix in batch.oversized:
        line_nos.append(line_no)
        reasons = [*reasons, "bad_json"]
        ids = [*ids, None]
        raws.append(prefix.decode("utf-8", "replace")[:max_raw_chars])
    table = pa.table({"line_no": pa.array(line_nos, pa.int64()), "asin": pa.array(ids, pa.large_string()),
                      "reason": pa.array(reasons, pa.large_string()), "raw": pa.array(raws, pa.large_string())})
    return schemas.conform(table.sort_by("line_no"), "quarantine")


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

    def process(self, batch: LineBatch) -> tuple[pa.Table, pa.Table]:
        self.input += len(batch) + len(batch.oversized)
        parsed, failures = parse_json_lines(batch, self.schema,
                                            _TEXT_EXTRACTED if self.fmt == "amazon-2023" else set())
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

    def _quarantine(self, batch: LineBatch, rejected: pl.DataFrame, failures: dict[int, str]) -> pa.Table:
        table = quarantine_table(batch, rejected["__line"].to_list() + list(failures),
                                 rejected["reason"].to_list() + list(failures.values()),
                                 rejected["asin"].to_list() + [None] * len(failures), self.cfg.max_raw_chars)
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
            for batch in read_line_batches(source, BATCH_BYTES):
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
