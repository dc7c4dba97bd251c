"""etl/text.py: each cleaning step on a table of real-world cases, the Series/expression/string entry points
agreeing, and the cheap pre-checks never skipping a value that needs work."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from etl.harness import adopt_stage, load_config, make_opts, run
from etl.parse import text
from etl.stages import nodes

CASES = [
    # (raw, cleaned) with no cap
    ("Good &amp; cheap", "Good & cheap"),
    ("5&quot; screen &#39;HD&#39; &#x2013; &ndash; &eacute;", "5\" screen 'HD' \u2013 \u2013 \u00e9"),
    ("AT&T R&D &copy 2020", "AT&T R&D &copy 2020"),                 # semicolon-less forms stay
    ("&amp;lt;b&amp;gt;", "&lt;b&gt;"),                               # decoded exactly once
    ("&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b>"),                       # escaped markup is text
    ("&unknownentity; &#128512;", "&unknownentity; \U0001F600"),
    ("<p>Line one</p><p>Line two</p>", "Line one Line two"),
    ("first<br>second<br/>third<BR />fourth", "first second third fourth"),
    ("wi<b>re</b>less <a href=\"https://x\">link</a>", "wireless link"),
    ("<script>var x = '<b>';</script>After<style>p {color: red}</style> text", "After text"),
    ("<!-- comment -->kept", "kept"),
    ("5 < 10 and 20 > 3 <3", "5 < 10 and 20 > 3 <3"),                 # not tags
    ("Caf\u00c3\u00a9 \u00e2\u20ac\u201c 360\u00c2\u00b0", "Caf\u00e9 \u2013 360\u00b0"),  # UTF-8 read as cp1252
    ("don\u00e2\u20ac\u2122t", "don\u2019t"),
    ("\u00c3\u00bcber", "\u00fcber"),                                  # latin-1 flavour
    ("\u00c3\u00a9\u00c2\u00ae legit \u00e9\u00ae", "\u00e9\u00ae legit \u00e9\u00ae"),
    ("caf\u00e9\u00ae stays", "caf\u00e9\u00ae stays"),                 # suspicious pair, but legitimate
    ("  lead and trail \t", "lead and trail"),
    ("a\u00a0\u00a0b\u2028c\r\nd\te", "a b c d e"),
    ("zero\u200bwidth\ufeff soft\u00adhyphen ctl\x00\x07x", "zerowidth softhyphen ctlx"),
    ("\u00c2\u00a0nbsp mojibake", "nbsp mojibake"),
    ("USB\u202e\u2066cable\u2069\u202c", "USBcable"),                 # bidi override + isolate
    ("a\u202ab\u202bc\u202cd\u202de\u2067f\u2068g\u200eh\u200fi\u061cj", "abcdefghij"),
    ("", ""),
    ("plain words stay", "plain words stay"),
]


@pytest.mark.parametrize("raw,expected", CASES)
def test_clean_string_table(raw: str, expected: str) -> None:
    assert text.clean_string(raw) == expected


def test_series_expression_and_string_agree() -> None:
    raws = [raw for raw, _ in CASES] + [None]
    expected = [want for _, want in CASES] + [None]
    series = text.clean_series(pl.Series(raws, dtype=pl.String))
    assert series.to_list() == expected
    lazy = pl.LazyFrame({"t": raws}).select(text.clean_text(pl.col("t"))).collect()["t"].to_list()
    assert lazy == expected
    streamed = pl.LazyFrame({"t": raws}).select(text.clean_text(pl.col("t"))).collect(engine="streaming")
    assert streamed["t"].to_list() == expected


@pytest.mark.parametrize("raw,limit,expected", [
    ("hello world foo", 7, "hello"),
    ("hello world foo", 11, "hello world"),          # the limit falls on a word end
    ("hello world foo", 12, "hello world"),          # the space past a word is dropped too
    ("hello world", 11, "hello world"),              # at the limit: unchanged
    ("abcdefghijkl", 5, "abcde"),                    # one token: hard cut
    ("a bcdefghijkl", 8, "a bcdefg"),                # a word cut would keep < half: hard cut
    ("\u00e9\u00e9\u00e9\u00e9\u00e9 \u00e9\u00e9\u00e9", 7, "\u00e9\u00e9\u00e9\u00e9\u00e9"),  # characters, not bytes
    ("<b>" + "x" * 20 + "</b> end", 22, "x" * 20),   # capped after cleaning
])
def test_cap_at_word_boundary(raw: str, limit: int, expected: str) -> None:
    assert text.clean_string(raw, limit) == expected
    assert len(text.clean_string(raw, limit)) <= limit


def test_counts_say_what_changed() -> None:
    counts = text.CleaningCounts()
    out = text.clean_series(pl.Series(["<b>x</b> &amp; y", "Caf\u00c3\u00a9", "long long long", "fine", None]),
                            8, counts)
    assert out.to_list() == ["x & y", "Caf\u00e9", "long", "fine", None]
    assert counts.as_dict() == {"values": 4, "html_cleaned": 1, "mojibake_repaired": 1, "truncated": 1}


def test_input_series_is_not_modified() -> None:
    raw = pl.Series(["<p>a</p>", "b  c", "x" * 50])
    before = raw.to_list()
    text.clean_series(raw, 10)
    assert raw.to_list() == before


def test_ftfy_runs_only_on_suspicious_values(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = text.ftfy.fix_encoding

    def spy(value: str) -> str:
        seen.append(value)
        return real(value)

    monkeypatch.setattr(text.ftfy, "fix_encoding", spy)
    out = text.clean_series(pl.Series(["plain", "caf\u00e9", "Caf\u00c3\u00a9", "\u00e2\u20ac\u201c dash"]))
    assert out.to_list() == ["plain", "caf\u00e9", "Caf\u00e9", "\u2013 dash"]
    assert seen == ["Caf\u00c3\u00a9", "\u00e2\u20ac\u201c dash"]


def test_list_cleaning_drops_empty_items_and_caps_count() -> None:
    lists = pl.Series("l", [["  <b>A</b> ", "", "   ", "&amp;", "B", "C"], [], None, ["x" * 30]])
    out = nodes.clean_list_series(lists, max_chars=10, max_items=2).to_list()
    assert out == [["A", "&"], [], [], ["x" * 10]]


def test_step_expressions_are_usable_on_their_own() -> None:
    df = pl.DataFrame({"t": ["<p>a &amp; b</p>", "Caf\u00c3\u00a9", " x \t y "]})
    out = df.select(
        text.strip_html(pl.col("t")).alias("html"),
        text.repair_mojibake(pl.col("t")).alias("moji"),
        text.normalize_whitespace(pl.col("t")).alias("ws"),
        text.cap_chars(pl.col("t"), 3).alias("cap"),
    )
    assert out["html"].to_list() == [" a & b ", "Caf\u00c3\u00a9", " x \t y "]
    assert out["moji"].to_list()[1] == "Caf\u00e9"
    assert out["ws"].to_list()[2] == "x y"
    assert out["cap"].to_list()[1] == "Caf"


BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e",
        "\u200f", "\u061c"]


def test_bidi_controls_are_stripped_from_titles_and_features_by_the_nodes_stage(tmp_path: Path) -> None:
    """A title that would display reversed ("USB cable" + U+202E + "gpj.exe") and features wrapped in isolates,
    through the real nodes stage (gzip JSON lines in, nodes.parquet out); a title of bidi controls alone is
    no title."""
    def line(asin: str, title: str, features: list[str]) -> str:
        return json.dumps({"parent_asin": asin, "title": title, "features": features, "description": [],
                           "images": [{"large": f"https://img/{asin}.jpg", "variant": "MAIN"}]})

    lines = [line("B000000001", "USB cable \u202egpj.exe", ["\u2066fast\u2069 charging", "\u202dlong\u202c"]),
             line("B000000002", "".join(f"plain{c}" for c in BIDI), ["".join(BIDI) + "x"]),
             line("B000000003", "".join(BIDI), ["y"])]
    metadata = tmp_path / "meta.jsonl.gz"
    metadata.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    cfg, opts = load_config(), make_opts(tmp_path, source="amazon-2023")
    adopt_stage(cfg, opts, "fetch", {"metadata": metadata})
    rec = run(cfg, opts, "nodes")["nodes"]
    df = pl.read_parquet(opts.dataset_root / rec["outputs"]["nodes"]["path"])
    assert df.select("asin", "title", "features").rows() == [
        ("B000000001", "USB cable gpj.exe", ["fast charging", "long"]),
        ("B000000002", "plain" * len(BIDI), ["x"]),
    ]
    assert rec["counts"]["rejected"] == {"no_title": 1}
