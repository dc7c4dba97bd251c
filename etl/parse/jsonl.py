"""The one JSON-lines reader: every stage that reads the metadata or reviews dumps reads them through here, so two
stages can never count the bad lines of one file differently.

Lines. The gzip stream is decompressed in a background thread (etl/parse/rawio.py) into batches of whole lines
(`read_line_batches`). Line numbers are 1-based and count blank lines; a blank line (whitespace only) is not a
record and is not listed. A line longer than MAX_LINE_BYTES is never buffered: it is skipped and reported in
`LineBatch.oversized` (whatever the batch size: a line is over-long by its length alone). Memory is bounded by
the batch size plus one line.

Bad lines. A non-blank line is a record when it is a JSON object. `decode_line` is the one rule for the rest:
`bad_json` (not UTF-8, not JSON, or longer than MAX_LINE_BYTES), `not_an_object` (valid JSON that is not an
object) and `bad_text` (an object holding a string that is not Unicode text: a lone surrogate escape such as
`"\\ud800"`, which no UTF-8 column can store; a paired `"\\ud83d\\ude00"` is an emoji and is kept). The rule is
for the whole line, not just the fields a stage keeps, so every stage reading a file counts its bad lines alike.
`bad_lines` lists a batch's bad lines (line number, reason, raw prefix) for whatever a stage keeps of them
(a quarantine table, counters, examples); `LineBatch.records` is what a stage counts as its input.

Parsing. Each batch is parsed by pyarrow's JSON reader (C++, multithreaded) with a fixed schema
(`parse_json_lines`), in pieces of about PARSE_BYTES so a broken line costs a re-parse of its piece, not of the
batch. A piece holding a broken or wrongly typed line makes the reader fail as a whole (and a piece that is not
valid UTF-8 is not handed to it: it checks only the fields it keeps), so such a piece is bisected:
halves that parse are kept, and only blocks of <= PYTHON_BLOCK_LINES lines are parsed line by line by `decode_line`,
which also coerces wrong-typed fields (`"features": "text"`, a string rating) to the schema (`coerce`). Lines that
do not start with `{` skip the reader (it would read `null` as an all-null record) and go to `decode_line`.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.json as pajson

import schemas
from etl.parse.rawio import inflated_chunks

BATCH_BYTES = 64 << 20          # decompressed text per batch (handed over by the inflating thread at once)
MAX_LINE_BYTES = 64 << 20       # a longer "line" is not a record: a bad line (bad_json), skipped, never buffered
PARSE_BYTES = 4 << 20           # text handed to one pyarrow read; a broken line costs about two re-reads of it
PYTHON_BLOCK_LINES = 64         # bisection stops here and parses line by line
_BLOCK_BYTES = 1 << 20          # pyarrow JSON block: the unit its threads share out
_OVERSIZED_PREFIX = 4096        # bytes of a skipped over-long line kept for the quarantine / examples

BAD_JSON = "bad_json"
NOT_AN_OBJECT = "not_an_object"
BAD_TEXT = "bad_text"
BAD_LINE_REASONS = (BAD_JSON, NOT_AN_OBJECT, BAD_TEXT)
# A \uD800-\uDFFF escape: the only way a JSON line that is valid UTF-8 can decode to a lone surrogate. A line
# without one needs no further check (a false hit, e.g. an escaped backslash before "ud800", costs one re-encode).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


# --------------------------------------------------------------------------------------------- lines

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

    @property
    def records(self) -> int:
        """Non-blank lines of the batch, over-long ones included: each is one input record with one fate."""
        return len(self.starts) + len(self.oversized)

    def line(self, i: int) -> bytes:
        return self.buf[self.starts[i]:self.ends[i]]


def read_line_batches(path: Path, batch_bytes: int | None = None,
                      max_line_bytes: int | None = None) -> Iterator[LineBatch]:
    """Stream `path` (gzip or plain) as batches of whole lines of about `batch_bytes` (default BATCH_BYTES) each;
    lines longer than `max_line_bytes` (default MAX_LINE_BYTES) are skipped into `LineBatch.oversized`."""
    batch_bytes = BATCH_BYTES if batch_bytes is None else batch_bytes
    cap = MAX_LINE_BYTES if max_line_bytes is None else max_line_bytes
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
        if cut == 0 and len(buf) > cap:
            skipping, tail = (next_line_no, buf[:_OVERSIZED_PREFIX]), b""
            continue
        tail = buf[cut:]
        batch = _split_lines(buf, next_line_no, cap, cut)
        batch.oversized = oversized + batch.oversized
        next_line_no += batch.physical_lines
        if batch.records:
            yield batch
    if skipping is not None:
        empty = np.zeros(0, np.int64)
        yield LineBatch(b"", empty, empty, empty, [skipping])
    elif tail:
        batch = _split_lines(tail + b"\n", next_line_no, cap)
        if batch.records:
            yield batch


def _split_lines(buf: bytes, first_line_no: int, cap: int, end: int | None = None) -> LineBatch:
    """Lines of buf[:end] (which ends with a newline); lines longer than `cap` go to `oversized`."""
    ends = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8, count=len(buf) if end is None else end) == 10)
    starts = np.concatenate([np.zeros(1, np.int64), ends[:-1] + 1]) if len(ends) else ends
    line_nos = np.arange(first_line_no, first_line_no + len(ends), dtype=np.int64)
    view = np.frombuffer(buf, dtype=np.uint8)
    empty = ends == starts
    first = view[np.minimum(starts, max(len(view) - 1, 0))] if len(view) else np.zeros(0, np.uint8)
    maybe_blank = np.flatnonzero(empty | np.isin(first, np.frombuffer(b" \t\r\x0b\x0c", dtype=np.uint8)))
    blank = [i for i in maybe_blank if not buf[starts[i]:ends[i]].strip()]
    physical = len(ends)
    keep = np.ones(len(ends), dtype=bool)
    keep[blank] = False
    long = np.flatnonzero(ends - starts > cap)  # within one chunk; longer ones never reach here
    keep[long] = False
    oversized = [(int(line_nos[i]), buf[starts[i]:starts[i] + _OVERSIZED_PREFIX]) for i in long]
    if not keep.all():
        starts, ends, line_nos = starts[keep], ends[keep], line_nos[keep]
    return LineBatch(buf, starts, ends, line_nos, oversized, physical_lines=physical)


# --------------------------------------------------------------------------------------------- bad lines

def decode_line(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(the object, None) for a record; (None, reason) for a bad line. The one rule for what a bad line is."""
    try:
        # Strict UTF-8 first: json.loads(bytes) would let UTF-8-encoded surrogates (b"\xed\xa0\x80") through.
        obj = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, BAD_JSON
    if not isinstance(obj, dict):
        return None, NOT_AN_OBJECT
    if _SURROGATE_ESCAPE.search(raw) is not None and not _is_unicode_text(obj):
        return None, BAD_TEXT
    return obj, None


def _is_unicode_text(obj: dict[str, Any]) -> bool:
    """Whether every key and string of the object encodes to UTF-8 (no lone surrogate left by a JSON escape)."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class BadLine(NamedTuple):
    line_no: int
    reason: str
    raw: bytes  # the line (a prefix of it when it was over-long)


def bad_lines(batch: LineBatch, failures: dict[int, str]) -> list[BadLine]:
    """Every bad line of a batch: the parse failures (line index -> reason) plus the over-long lines (bad_json)."""
    out = [BadLine(int(batch.line_nos[i]), reason, batch.line(i)) for i, reason in failures.items()]
    out += [BadLine(line_no, BAD_JSON, prefix) for line_no, prefix in batch.oversized]
    return out


def quarantine_table(batch: LineBatch, lines: list[int], reasons: list[str], ids: list[str | None],
                     failures: dict[int, str], max_raw_chars: int) -> pa.Table:
    """Quarantine rows (schema `quarantine`), by line number: the stage's rejected lines of a batch (`lines` are
    indices into it, with their reason and id) plus every bad line of the batch."""
    line_nos = [int(batch.line_nos[i]) for i in lines]
    raws = [batch.line(i)[: max_raw_chars * 4].decode("utf-8", "replace")[:max_raw_chars] for i in lines]
    reasons, ids = list(reasons), list(ids)
    for bad in bad_lines(batch, failures):
        line_nos.append(bad.line_no)
        reasons.append(bad.reason)
        ids.append(None)
        raws.append(bad.raw[: max_raw_chars * 4].decode("utf-8", "replace")[:max_raw_chars])
    table = pa.table({"line_no": pa.array(line_nos, pa.int64()), "asin": pa.array(ids, pa.large_string()),
                      "reason": pa.array(reasons, pa.large_string()), "raw": pa.array(raws, pa.large_string())})
    return schemas.conform(table.sort_by("line_no"), "quarantine")


# --------------------------------------------------------------------------------------------- parsing JSON

def _arrow_type(dtype: pl.DataType) -> pa.DataType:
    if isinstance(dtype, pl.List):
        return pa.list_(_arrow_type(dtype.inner))
    if isinstance(dtype, pl.Struct):
        return pa.struct([(f.name, _arrow_type(f.dtype)) for f in dtype.fields])
    return {pl.String: pa.string(), pl.Float64: pa.float64(), pl.Int64: pa.int64(), pl.Boolean: pa.bool_()}[dtype]


def parse_json_lines(batch: LineBatch, schema: dict[str, pl.DataType],
                     text_fields: frozenset[str] | set[str] = frozenset()) -> tuple[pl.DataFrame, dict[int, str]]:
    """Parse every line of `batch` into a frame with `schema` plus `__line` (index into the batch).

    Returns the frame of parsed records (in line order) and {line index: reason} for the bad lines
    (`decode_line`'s reasons; the batch's over-long lines are in `batch.oversized`). `text_fields` are string
    fields taken from the line text (`field_text`) instead of the reader: pyarrow refuses a field whose JSON type
    changes between records (2023's `price` is a number or the string "None")."""
    arrow_schema = pa.schema([(k, _arrow_type(t)) for k, t in schema.items() if k not in text_fields])
    failures: dict[int, str] = {}
    pieces: list[tuple[pa.Table, np.ndarray]] = []
    python_rows: list[tuple[int, dict[str, Any]]] = []
    buf = np.frombuffer(batch.buf, dtype=np.uint8)
    odd = np.flatnonzero(buf[batch.starts] != ord("{")) if len(batch) else np.zeros(0, np.int64)
    bounds = [-1, *odd.tolist(), len(batch)]
    parser = _Parser(batch, arrow_schema, schema, pieces, python_rows, failures)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        parser.parse_run(lo + 1, hi)
        if hi < len(batch):
            parser.parse_python(hi, hi + 1)
    frame = _assemble(pieces, python_rows, schema, text_fields, batch)
    return frame, failures


class _Parser:
    """Fast path over runs of lines, bisection on failure, `decode_line` for what is left."""

    def __init__(self, batch: LineBatch, arrow_schema: pa.Schema, schema: dict[str, pl.DataType], pieces: list,
                 python_rows: list, failures: dict[int, str]) -> None:
        self.batch = batch
        self.buffer = pa.py_buffer(batch.buf)
        self.read_options = pajson.ReadOptions(block_size=_BLOCK_BYTES)
        self.parse_options = pajson.ParseOptions(explicit_schema=arrow_schema, unexpected_field_behavior="ignore")
        self.schema = schema
        self.pieces = pieces
        self.python_rows = python_rows
        self.failures = failures

    def parse_run(self, lo: int, hi: int) -> None:
        """Lines lo..hi-1 (all starting with `{`), in pieces of about PARSE_BYTES."""
        starts = self.batch.starts
        while lo < hi:
            cut = int(np.searchsorted(starts, int(starts[lo]) + PARSE_BYTES, side="left"))
            cut = min(max(cut, lo + 1), hi)
            self._parse_range(lo, cut)
            lo = cut

    def _parse_range(self, lo: int, hi: int) -> None:
        if lo >= hi:
            return
        start, end = int(self.batch.starts[lo]), int(self.batch.ends[hi - 1])
        piece = self.buffer[start:end]
        try:
            if _is_utf8(piece):  # the reader does not check UTF-8 (and skips ignored fields): decode_line does
                table = pajson.read_json(pa.BufferReader(piece), read_options=self.read_options,
                                         parse_options=self.parse_options)
                if table.num_rows == hi - lo:
                    self.pieces.append((table, np.arange(lo, hi, dtype=np.int64)))
                    return
        except (pa.ArrowException, ValueError):  # malformed or wrongly typed somewhere in the range
            pass
        if hi - lo > PYTHON_BLOCK_LINES:
            mid = (lo + hi) // 2
            self._parse_range(lo, mid)
            self._parse_range(mid, hi)
        else:
            self.parse_python(lo, hi)

    def parse_python(self, lo: int, hi: int) -> None:
        for i in range(lo, hi):
            obj, reason = decode_line(self.batch.line(i))
            if reason is not None:
                self.failures[i] = reason
                continue
            self.python_rows.append((i, {k: coerce(obj.get(k), t) for k, t in self.schema.items()}))


def _is_utf8(piece: pa.Buffer) -> bool:
    """Whether the bytes are valid UTF-8 (Arrow's validator over a one-string array: no copy)."""
    offsets = pa.py_buffer(np.array([0, piece.size], dtype=np.int64))
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, piece]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


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


def _assemble(pieces: list, python_rows: list, schema: dict[str, pl.DataType], text_fields: frozenset[str] | set[str],
              batch: LineBatch) -> pl.DataFrame:
    frames = []
    for table, lines in pieces:
        df = pl.from_arrow(table)
        if text_fields:
            df = df.with_columns([field_text(batch, lines, name).alias(name) for name in sorted(text_fields)])
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


def field_text(batch: LineBatch, lines: np.ndarray, name: str) -> pl.Series:
    """The first `"<name>": value` of each line: strings unquoted, numbers as text, null/true/false -> null.

    First occurrence = the top-level field when the dump writes it before any nested object that could hold the
    same key (2023's `price` precedes `details`); a `"<name>":` inside a string value is escaped (`\\"price\\":`)
    so it never matches."""
    pattern = rf'"{re.escape(name)}"\s*:\s*("(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|null|true|false)'
    v = pl.col("v")
    df = pl.DataFrame({"v": _lines_series(batch, int(lines[0]), int(lines[-1]) + 1).str.extract(pattern, 1)})
    out = df.select(pl.when(v.str.starts_with('"')).then(v.str.slice(1).str.strip_suffix('"'))
                    .when(v.is_in(["null", "true", "false"])).then(None)
                    .otherwise(v).alias("value"),
                    (v.str.starts_with('"') & v.str.contains("\\", literal=True)).alias("escaped"))
    value = out["value"]
    escaped = out["escaped"].fill_null(False)
    if escaped.any():  # a JSON escape inside the string: decode it exactly
        decoded = pl.Series([json.loads(x) for x in df["v"].filter(escaped).to_list()], dtype=pl.String)
        value = value.clone().scatter(escaped.arg_true(), decoded)
    return value
