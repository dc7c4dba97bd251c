"""The one JSON-lines reader (etl/parse/jsonl.py): line numbering, the line cap, the bad-line rule, fast path ==
line-by-line path, and the reason it exists: `edges` and `reviews` count the bad lines of one reviews file alike."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from etl.config import load_config
from etl.core.stage import RunOptions, run_stages
from etl.harness import adopt_stage
from etl.parse import jsonl
from etl.stages import STAGES
from helpers.tables import write_nodes, write_quarantine

SCHEMA = {"user_id": pl.String, "parent_asin": pl.String, "verified_purchase": pl.Boolean,
          "helpful_vote": pl.Int64, "tags": pl.List(pl.String)}


def write(path: Path, lines: list[bytes], gz: bool = True, final_newline: bool = True) -> Path:
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def read_all(path: Path, **kw) -> tuple[dict[int, bytes], list[int]]:
    """{line number: text} of the listed lines and the over-long line numbers, over all batches."""
    lines, oversized = {}, []
    for batch in jsonl.read_line_batches(path, **kw):
        lines.update({int(batch.line_nos[i]): batch.line(i) for i in range(len(batch))})
        oversized += [no for no, _ in batch.oversized]
    return lines, sorted(oversized)


def test_lines_are_numbered_blank_lines_skipped_and_long_lines_capped(tmp_path: Path) -> None:
    lines = [b"a" * 10, b"b" * 500, b"", b"   ", b"c" * 30, b"d" * 150, b"e" * 7]
    expected = {1: lines[0], 5: lines[4], 7: lines[6]}
    for gz in (False, True):
        path = write(tmp_path / f"lines{gz}", lines, gz=gz, final_newline=False)
        # a line is over-long by its length alone: inside one chunk (150 bytes) or across chunks (500 bytes)
        for batch_bytes in (16, 64, 1 << 20):
            assert read_all(path, batch_bytes=batch_bytes, max_line_bytes=100) == (expected, [2, 6]), batch_bytes
        assert read_all(path, batch_bytes=16, max_line_bytes=1000)[1] == []


def test_decode_line_is_the_one_rule() -> None:
    assert jsonl.decode_line(b'{"a": 1}') == ({"a": 1}, None)
    assert jsonl.decode_line(b'  {"a": 1}  ') == ({"a": 1}, None)
    for raw in (b'{"a": ', b"{'a': 1}", b'{"a": 1} trailing', b'{"a": "\xff"}', b"nan nan"):
        assert jsonl.decode_line(raw) == (None, jsonl.BAD_JSON), raw
    for raw in (b"null", b"[1, 2]", b'"text"', b"12", b"true"):
        assert jsonl.decode_line(raw) == (None, jsonl.NOT_AN_OBJECT), raw
    # Text no UTF-8 column can hold: a lone surrogate escape anywhere (a value, a key, nested), UTF-8 bytes of one.
    for raw in (rb'{"a": "\ud800"}', rb'{"a": "x\uDFFFy"}', rb'{"\udbff": 1}', rb'{"a": {"b": ["\ude00\ud83d"]}}'):
        assert jsonl.decode_line(raw) == (None, jsonl.BAD_TEXT), raw
    assert jsonl.decode_line(b'{"a": "\xed\xa0\x80"}') == (None, jsonl.BAD_JSON)
    assert jsonl.decode_line(rb'{"a": "\ud83d\ude00"}') == ({"a": "\U0001F600"}, None)
    assert jsonl.decode_line(rb'{"a": "\\ud800"}') == ({"a": "\\ud800"}, None)  # an escaped backslash, then text
    assert jsonl.decode_line(b'\xef\xbb\xbf{"a": 1}') == ({"a": 1}, None)  # a UTF-8 byte order mark


def mixed_lines(n: int = 400) -> tuple[list[bytes], dict[int, str]]:
    """Good records with wrong-typed fields here and there, and bad lines of every kind; {line number: reason}."""
    lines, bad = [], {}
    for i in range(n):
        obj = {"user_id": f"U{i % 17}", "parent_asin": f"B{i:09d}", "verified_purchase": i % 3 == 0,
               "helpful_vote": i, "tags": ["x", "y"], "text": "z" * (i % 50)}
        if i % 41 == 5:
            obj["helpful_vote"] = str(i)  # a numeric string: coerced
        if i % 43 == 7:
            obj["tags"] = "lone"  # a lone string: one item
        if i % 47 == 9:
            obj["user_id"] = 12345  # a number in a string field: its JSON text
        lines.append(json.dumps(obj).encode())
    for line_no, raw, reason in ((3, b'{"user_id": ', "bad_json"), (50, b"null", "not_an_object"),
                                 (51, b"[1]", "not_an_object"), (120, b'{"user_id": "\xff\xfe"}', "bad_json"),
                                 (250, b'{"a": 1} {"b": 2}', "bad_json"), (399, b'"str"', "not_an_object"),
                                 (300, rb'{"user_id": "U\ud800", "parent_asin": "B000000300"}', "bad_text")):
        lines[line_no - 1] = raw
        bad[line_no] = reason
    return lines, bad


def parse_file(path: Path) -> tuple[pl.DataFrame, dict[int, str]]:
    frames, failures = [], {}
    for batch in jsonl.read_line_batches(path):
        df, fails = jsonl.parse_json_lines(batch, SCHEMA)
        frames.append(df.with_columns(pl.Series("line_no", batch.line_nos[df["__line"].to_numpy()])).drop("__line"))
        failures.update({b.line_no: b.reason for b in jsonl.bad_lines(batch, fails)})
    return pl.concat(frames), failures


def test_fast_path_and_line_by_line_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines, bad = mixed_lines()
    path = write(tmp_path / "mixed.jsonl.gz", lines)
    fast, fast_bad = parse_file(path)
    monkeypatch.setattr(jsonl, "BATCH_BYTES", 1500)
    monkeypatch.setattr(jsonl, "PARSE_BYTES", 300)
    monkeypatch.setattr(jsonl, "PYTHON_BLOCK_LINES", 2)
    small, small_bad = parse_file(path)
    monkeypatch.setattr(jsonl, "PYTHON_BLOCK_LINES", 10 ** 9)  # every line through decode_line
    slow, slow_bad = parse_file(path)
    assert fast_bad == small_bad == slow_bad == bad
    assert fast.equals(small) and fast.equals(slow)
    assert fast.height == len(lines) - len(bad)
    row = fast.filter(pl.col("line_no") == 6).row(0, named=True)  # i = 5: helpful_vote "5" -> 5
    assert row["helpful_vote"] == 5
    assert fast.filter(pl.col("line_no") == 8)["tags"].to_list() == [["lone"]]
    assert fast.filter(pl.col("line_no") == 10)["user_id"].to_list() == ["12345"]


# ------------------------------------------------------------------ edges and reviews count one file's bad lines alike

ASINS = [f"B00000000{c}" for c in "ABCD"]


def review(user: str, asin: str) -> bytes:
    return json.dumps({"rating": 5.0, "title": "t", "text": "A perfectly fine review text here.", "asin": asin,
                       "parent_asin": asin, "user_id": user, "timestamp": 1_600_000_000_000, "helpful_vote": 0,
                       "verified_purchase": True}).encode()


def adopt_inputs(tmp_path: Path, review_lines: list[bytes]):
    cfg = load_config()
    opts = RunOptions(category="electronics", source="amazon-2023", out=tmp_path, progress=False)
    files = tmp_path / "files"
    files.mkdir()
    meta = files / "meta.jsonl.gz"
    meta.write_bytes(gzip.compress(b"{}\n"))
    adopt_stage(cfg, opts, "fetch", {"metadata": meta, "reviews": write(files / "reviews.jsonl.gz", review_lines)})
    nodes_path = write_nodes(files / "nodes.parquet", len(ASINS), asins=ASINS)
    quarantine = write_quarantine(files / "quarantine.parquet")
    adopt_stage(cfg, opts, "nodes", {"nodes": nodes_path, "quarantine": quarantine})
    return cfg, opts


def test_edges_and_reviews_count_the_same_bad_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 4096)
    good = [review(f"U{u}", asin) for u in range(6) for asin in ASINS]  # every pair co-purchased 6 times
    over_long = json.dumps({"user_id": "U9", "parent_asin": ASINS[0], "text": "x" * 10_000}).encode()
    bad = {3: b'{"user_id": "U1", "parent_asin": ', 7: over_long, 11: b"[1, 2, 3]", 12: b"null",
           15: b'{"user_id": "\xff\xfeU", "parent_asin": "B00000000A"}', 20: b'"just a string"'}
    lines = list(good)
    for line_no in sorted(bad):
        lines.insert(line_no - 1, bad[line_no])
    lines.insert(9, b"")  # a blank line: not a record, but it is counted in line numbers
    cfg, opts = adopt_inputs(tmp_path, lines)
    records = run_stages(["reviews"], STAGES, cfg, opts)
    edges, reviews = records["edges"], records["reviews"]

    scan = edges["stats"]["reviews"]
    quarantine = pl.read_parquet(opts.dataset_root / reviews["outputs"]["quarantine"]["path"])
    reasons = dict(zip(quarantine["line_no"].to_list(), quarantine["reason"].to_list()))
    expected_line_nos = sorted(no + (no >= 10) for no in bad)  # the blank line shifts the later ones
    assert sorted(reasons) == expected_line_nos
    assert reasons[expected_line_nos[1]] == "bad_json", "the over-long line"
    assert sorted(r["line"] for r in scan["bad_line_examples"]) == expected_line_nos
    assert scan["bad_lines"] == sum(reviews["counts"]["rejected"].get(r, 0) for r in jsonl.BAD_LINE_REASONS)
    assert scan["bad_lines"] == len(bad)
    assert reviews["counts"]["rejected"] == {"bad_json": 3, "not_an_object": 3}
    assert scan["lines"] == reviews["counts"]["input"] == len(lines) - 1
    assert edges["stats"]["edges_by_kind"] == {"copurchase": 6}
