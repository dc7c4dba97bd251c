"""Hostile text through the parse path: every JSON string escape class and every kind of broken UTF-8, placed in the
metadata's title, a feature, the image URL, the price and a field no stage keeps, and in a review's text, title and
user id, among thousands of good records, through the real `nodes`, `edges` and `reviews` stages (only the fetched
files are adopted). Per class: no crash, every good record kept, each bad record quarantined with its reason (a
lone surrogate is `bad_text`, broken UTF-8 or a raw control byte is `bad_json`) and valid text kept as decoded."""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from etl.harness import adopt_stage, load_config, make_opts, run
from etl.parse import jsonl

# class -> (the bytes placed inside a JSON string, the outcome: a bad-line reason, or the decoded text)
CASES: dict[str, tuple[bytes, str]] = {
    "lone_high_surrogate": (rb"\ud800", "bad_text"),
    "lone_low_surrogate": (rb"\udfff", "bad_text"),
    "reversed_surrogate_pair": (rb"\ude00\ud83d", "bad_text"),
    "paired_surrogates": (rb"\ud83d\ude00", "\U0001F600"),
    "nul_escape": (rb"\u0000", "\x00"),
    "escaped_backslash_not_a_surrogate": (rb"\\ud800", "\\ud800"),
    "overlong_utf8": (b"\xc0\xaf", "bad_json"),
    "invalid_utf8_byte": (b"\xff", "bad_json"),
    "truncated_multibyte": (b"\xe2\x82", "bad_json"),
    "utf8_encoded_surrogate": (b"\xed\xa0\x80", "bad_json"),
    "raw_control_byte": (b"\x01", "bad_json"),
    "raw_nul_byte": (b"\x00", "bad_json"),
}
BAD = set(jsonl.BAD_LINE_REASONS)
META_FIELDS = ("title", "feature", "image_url", "price", "unkept_field")
REVIEW_FIELDS = ("text", "title", "user_id")
GOOD_BETWEEN = 70  # good lines between two hostile ones: more than a Python block, so both parse paths run
MARK = "@@"
N_PRODUCTS = 200   # products the good reviews are spread over (well under reviews.per_product each)


def asin(i: int) -> str:
    return f"B{i:09d}"


def good_product(j: int) -> str:
    """The j-th good product of the metadata file (every GOOD_BETWEEN + 1-th record there is hostile)."""
    return asin(j + j // GOOD_BETWEEN)


def with_snippet(obj: dict[str, Any], snippet: bytes) -> bytes:
    """The object as one JSON line with MARK replaced by raw bytes (which json.dumps could not write)."""
    line = json.dumps(obj, ensure_ascii=False).encode()
    assert line.count(MARK.encode()) == 1
    return line.replace(MARK.encode(), snippet)


def product(i: int, field: str | None = None) -> dict[str, Any]:
    values = {"title": f"Product {i}", "feature": f"Feature {i}", "image_url": f"https://img.example/{i}.jpg",
              "price": "$12.50", "unkept_field": "note"}
    if field is not None:
        values[field] = {"title": f"Fuzz {MARK} title", "feature": f"Fuzz {MARK} feature",
                         "image_url": f"https://img.example/fuzz{MARK}.jpg", "price": f"$1{MARK}2",
                         "unkept_field": f"x{MARK}y"}[field]
    return {"parent_asin": asin(i), "title": values["title"], "features": [values["feature"]],
            "images": [{"thumb": None, "large": None, "variant": "MAIN", "hi_res": values["image_url"]}],
            "price": values["price"], "details": {"Note": values["unkept_field"]}}


def review(i: int, field: str | None = None) -> dict[str, Any]:
    values = {"text": f"Good review number {i} with enough text.", "title": f"Review {i}", "user_id": f"G{i}"}
    if field is not None:
        values[field] = {"text": f"Fuzz {MARK} review text that is long enough", "title": f"Fuzz {MARK} title",
                         "user_id": f"U{MARK}X{i}"}[field]
    return {"rating": 4.0, "title": values["title"], "text": values["text"],
            "parent_asin": good_product(i % N_PRODUCTS), "user_id": values["user_id"],
            "timestamp": 1_600_000_000_000 + i, "helpful_vote": 0, "verified_purchase": True}


def hostile_file(path: Path, fields: tuple[str, ...], make) -> tuple[dict[tuple[str, str], tuple[int, int]], list]:
    """Good lines with one hostile line per (class, field) between them; returns where each went
    ({(class, field): (line number, record index)}) and the good records' indices."""
    lines: list[bytes] = []
    where: dict[tuple[str, str], tuple[int, int]] = {}
    good: list[int] = []
    i = 0
    for case, (snippet, _) in CASES.items():
        for field in fields:
            for _ in range(GOOD_BETWEEN):
                lines.append(json.dumps(make(i)).encode())
                good.append(i)
                i += 1
            lines.append(with_snippet(make(i, field), snippet))
            where[(case, field)] = (len(lines), i)
            i += 1
    for _ in range(GOOD_BETWEEN):
        lines.append(json.dumps(make(i)).encode())
        good.append(i)
        i += 1
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return where, good


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("fuzz")
    meta_where, meta_good = hostile_file(tmp / "meta.jsonl.gz", META_FIELDS, product)
    review_where, review_good = hostile_file(tmp / "reviews.jsonl.gz", REVIEW_FIELDS, review)
    cfg, opts = load_config(), make_opts(tmp / "out")
    adopt_stage(cfg, opts, "fetch", {"metadata": tmp / "meta.jsonl.gz", "reviews": tmp / "reviews.jsonl.gz"})
    records = run(cfg, opts, "nodes", "edges", "reviews")
    root = opts.dataset_root

    def table(stage: str, name: str) -> pl.DataFrame:
        return pl.read_parquet(root / records[stage]["outputs"][name]["path"])

    return {"records": records, "meta_where": meta_where, "meta_good": meta_good, "review_where": review_where,
            "review_good": review_good, "nodes": table("nodes", "nodes"), "nodes_q": table("nodes", "quarantine"),
            "reviews": table("reviews", "reviews"), "reviews_q": table("reviews", "quarantine")}


def quarantined(q: pl.DataFrame, line_no: int) -> tuple[str, str] | None:
    row = q.filter(pl.col("line_no") == line_no)
    assert row.height <= 1
    return (row["reason"].item(), row["raw"].item()) if row.height else None


def visible(decoded: str, words: str) -> str:
    """What text cleaning makes of `Fuzz <decoded> <words>` (a NUL is an invisible control character)."""
    return " ".join(f"Fuzz {decoded.replace(chr(0), '')} {words}".split())


@pytest.mark.parametrize("case", list(CASES))
def test_metadata_escape_class(built, case: str) -> None:
    _, outcome = CASES[case]
    nodes, q = built["nodes"], built["nodes_q"]
    for field in META_FIELDS:
        line_no, i = built["meta_where"][(case, field)]
        row = nodes.filter(pl.col("asin") == asin(i))
        where = f"{case} in {field} (line {line_no})"
        if outcome in BAD:
            assert row.height == 0, where
            reason, raw = quarantined(q, line_no) or (None, "")
            assert reason == outcome, where
            assert asin(i) in raw, where  # the record itself is kept, to be inspected
            continue
        if field == "image_url" and "\x00" in outcome:  # a URL with a control character is not a URL
            assert (quarantined(q, line_no) or ("",))[0] == "no_image_url", where
            continue
        assert quarantined(q, line_no) is None and row.height == 1, where
        node = row.row(0, named=True)
        expected = {
            "title": ("title", visible(outcome, "title")),
            "feature": ("features", [visible(outcome, "feature")]),
            "image_url": ("image_url", f"https://img.example/fuzz{outcome}.jpg"),
            "price": ("price", None),  # "$1<x>2" is no price
            "unkept_field": ("title", f"Product {i}"),
        }[field]
        assert node[expected[0]] == expected[1], where


@pytest.mark.parametrize("case", list(CASES))
def test_review_escape_class(built, case: str) -> None:
    _, outcome = CASES[case]
    reviews, q = built["reviews"], built["reviews_q"]
    for field in REVIEW_FIELDS:
        line_no, i = built["review_where"][(case, field)]
        row = reviews.filter(pl.col("timestamp") == 1_600_000_000_000 + i)
        where = f"{case} in {field} (line {line_no})"
        if outcome in BAD:
            assert row.height == 0, where
            reason, raw = quarantined(q, line_no) or (None, "")
            assert reason == outcome and f"{1_600_000_000_000 + i}" in raw, where
            continue
        assert quarantined(q, line_no) is None and row.height == 1, where
        got = row.row(0, named=True)
        expected = {"text": ("text", visible(outcome, "review text that is long enough")),
                    "title": ("title", visible(outcome, "title")),
                    "user_id": ("user_id", f"U{outcome}X{i}")}[field]  # user ids are kept as given
        assert got[expected[0]] == expected[1], where


def test_every_good_record_is_kept(built) -> None:
    nodes, reviews = built["nodes"], built["reviews"]
    assert set(asin(i) for i in built["meta_good"]) <= set(nodes["asin"].to_list())
    assert set(1_600_000_000_000 + i for i in built["review_good"]) <= set(reviews["timestamp"].to_list())
    for stage in ("nodes", "reviews"):
        c = built["records"][stage]["counts"]
        assert c["input"] == c["kept"] + sum(c["rejected"].values()) + sum(c["filtered"].values())
    assert built["records"]["reviews"]["counts"]["filtered"] == {}


def test_edges_counts_the_bad_review_lines_as_reviews_quarantines_them(built) -> None:
    scan = built["records"]["edges"]["stats"]["reviews"]
    counts = built["records"]["reviews"]["counts"]
    expected_bad = {r: sum(1 for (case, _f) in built["review_where"] if CASES[case][1] == r) for r in BAD}
    assert {r: counts["rejected"].get(r, 0) for r in BAD} == expected_bad
    assert scan["bad_lines"] == sum(expected_bad.values())
    assert scan["lines"] == counts["input"] == len(built["review_where"]) + len(built["review_good"])
    assert scan["missing_fields"] == 0  # a user id holding valid text (an emoji, a NUL) is a user id
