"""Stage `nodes` through the real framework: the generated sample's injected defects against its truth file (2023
and 2018), the rejection precedence on hand-written lines, wrong-typed fields, batch boundaries, prices, image
choice, schema, dense ids, and a rerun that does no work."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import schemas
from etl.harness import adopt_stage, load_config, make_opts, run
from etl.parse import jsonl, rawio, text
from etl.sample import generate_catalog
from etl.stages import nodes

META_2023 = "amazon_2023/raw/meta_categories/meta_Electronics.jsonl.gz"
REVIEWS_2023 = "amazon_2023/raw/review_categories/Electronics.jsonl.gz"
META_2018 = "amazon_v2/metaFiles2/meta_Electronics.json.gz"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sample")
    truth = generate_catalog(root, n_products=300, seed=3)
    return root, truth


def run_nodes(tmp_path: Path, metadata: Path, source: str = "amazon-2023", cfg=None, **files: Path) -> dict:
    cfg = cfg or load_config()
    opts = make_opts(tmp_path, source=source)
    adopt_stage(cfg, opts, "fetch", {"metadata": metadata, **files})
    return run(cfg, opts, "nodes")["nodes"]


def outputs(tmp_path: Path, record: dict, source: str = "amazon-2023") -> tuple[pl.DataFrame, pl.DataFrame]:
    root = make_opts(tmp_path, source=source).dataset_root
    return (pl.read_parquet(root / record["outputs"]["nodes"]["path"]),
            pl.read_parquet(root / record["outputs"]["quarantine"]["path"]))


def write_lines(path: Path, lines: list[str], gz: bool = True) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def record(asin: str, title: str = "A product", **extra) -> str:
    base = {"parent_asin": asin, "title": title,
            "images": [{"thumb": f"https://img/{asin}-t.jpg", "large": f"https://img/{asin}-l.jpg",
                        "variant": "MAIN", "hi_res": None}]}
    return json.dumps({**base, **extra})


# ----------------------------------------------------------------------------------------------- the sample

def test_sample_2023_defects_are_handled_as_documented(sample, tmp_path: Path) -> None:
    root, truth = sample
    rec = run_nodes(tmp_path, root / META_2023, reviews=root / REVIEWS_2023)
    df, q = outputs(tmp_path, rec)
    defects = truth["defects"]["meta_2023"]
    by_reason = dict(q.group_by("reason").len().iter_rows())

    def lines(kind: str) -> list[int]:
        return sorted(item["line"] for item in defects[kind]["items"])

    def quarantined(reason: str) -> list[int]:
        return sorted(q.filter(pl.col("reason") == reason)["line_no"].to_list())

    # Each rejected kind: exactly the injected lines, nothing more.
    assert quarantined("bad_json") == lines("truncated_json")
    assert quarantined("not_an_object") == lines("not_an_object")
    assert quarantined("bad_id") == lines("invalid_id")
    assert quarantined("duplicate_id") == lines("duplicate_id")
    assert quarantined("no_title") == lines("empty_title")
    # A MAIN image with only non-http URLs falls through to the next image; only products with none are rejected.
    non_http = {item["asin"]: item["url"] for item in defects["non_http_image_url"]["items"]}
    kept_non_http = df.filter(pl.col("asin").is_in(list(non_http)))
    assert all(url.startswith("http") and url != non_http[a] for a, url in kept_non_http.select("asin", "image_url")
               .iter_rows())
    assert quarantined("no_image_url") == sorted(lines("no_images") + [
        item["line"] for item in defects["non_http_image_url"]["items"] if item["asin"] not in set(df["asin"])])
    assert sum(by_reason.values()) == q.height == sum(rec["counts"]["rejected"].values())
    assert rec["counts"]["rejected"] == by_reason
    assert rec["counts"]["input"] == truth["files"]["meta_2023"]["lines"]
    assert rec["counts"]["kept"] == df.height
    # Quarantine rows carry the raw line (capped) and the id where there was one.
    assert q["raw"].str.len_chars().max() <= load_config().nodes.max_raw_chars
    assert q.filter(pl.col("reason") == "duplicate_id")["asin"].is_in(df["asin"].implode()).all()

    kept = {r["asin"]: r for r in df.iter_rows(named=True)}
    for item in defects["html"]["items"] + defects["mojibake"]["items"]:
        row = kept[item["asin"]]
        for field, clean in item["clean"].items():
            if field == "title":
                assert row["title"] == text.clean_string(clean, 512), field
            elif field.startswith("features["):
                assert text.clean_string(clean, 512) in row["features"], field
            else:
                assert row["description"].startswith(text.clean_string(clean)[:100]), field
    for item in defects["placeholder_price"]["items"]:
        assert kept[item["asin"]]["price"] is None
    expected_odd = {"$1,299.99": 1299.99, "12.99 - 24.99": 12.99}
    for item in defects["odd_price"]["items"]:
        assert kept[item["asin"]]["price"] == expected_odd.get(item["value"])
    for item in defects["long_field"]["items"]:
        row = kept[item["asin"]]
        assert len(row["title"]) <= 512 and len(row["description"]) <= 4000
    for item in defects["empty_categories"]["items"]:
        assert kept[item["asin"]]["category_path"] == []
    stats = rec["stats"]
    assert stats["cleaning"]["title"]["mojibake_repaired"] >= defects["mojibake"]["count"]
    assert stats["cleaning"]["title"]["html_cleaned"] >= defects["html"]["count"]
    assert stats["cleaning"]["title"]["truncated"] + stats["cleaning"]["description"]["truncated"] >= \
        defects["long_field"]["count"]
    assert stats["price"]["missing"] >= defects["placeholder_price"]["count"]

    # Schema, dense ids in input order, no leftovers in the stage folder.
    assert schemas.validate_table(df.to_arrow(), "nodes") == []
    assert schemas.validate_table(q.to_arrow(), "quarantine") == []
    assert df["node_id"].to_list() == list(range(df.height))
    assert df["asin"].str.contains(r"^[A-Z0-9]{10}$").all()
    assert (df["title"].str.len_chars() > 0).all() and df["image_url"].str.starts_with("http").all()


def test_rerun_does_no_work(sample, tmp_path: Path) -> None:
    root, _ = sample
    cfg = load_config()
    opts = make_opts(tmp_path)
    adopt_stage(cfg, opts, "fetch", {"metadata": root / META_2023, "reviews": root / REVIEWS_2023})
    first = run(cfg, opts, "nodes")["nodes"]
    again = run(cfg, opts, "nodes")["nodes"]
    assert again["finished_at"] == first["finished_at"] and again["outputs"] == first["outputs"]
    forced = run(cfg, opts, "nodes", force=("nodes",))["nodes"]
    assert forced["outputs"]["nodes"]["sha256"] == first["outputs"]["nodes"]["sha256"]  # deterministic


def test_sample_2018(sample, tmp_path: Path) -> None:
    root, truth = sample
    rec = run_nodes(tmp_path, root / META_2018, source="amazon-2018")
    df, q = outputs(tmp_path, rec, "amazon-2018")
    defects = truth["defects"]["meta_2018"]
    by_reason = dict(q.group_by("reason").len().iter_rows())
    assert by_reason == {"bad_json": defects["truncated_json"]["count"],
                         "duplicate_id": defects["duplicate_id"]["count"],
                         "no_title": defects["empty_title"]["count"]}
    assert schemas.validate_table(df.to_arrow(), "nodes") == []
    assert df["rating_number"].null_count() == df.height and df["average_rating"].null_count() == df.height
    assert not df["category_path"].explode().str.contains("&amp;").any()  # 2018 categories are HTML-escaped
    kept = {r["asin"]: r for r in df.iter_rows(named=True)}
    for item in defects["placeholder_price"]["items"]:
        if item["asin"] in kept:
            assert kept[item["asin"]]["price"] is None
    assert df["also_buy"].list.len().sum() > 0 and df["store"].null_count() < df.height


# ----------------------------------------------------------------------------------------------- hand-written

def test_precedence_and_line_numbers(tmp_path: Path) -> None:
    lines = [
        record("B000000001"),                                     # 1 kept (node 0)
        "",                                                       # 2 blank: not a record
        record("B000000001", title=""),                           # 3 duplicate_id beats no_title
        record("b00000001x", title=""),                           # 4 bad_id beats no_title
        '{"parent_asin": "B000000002", "title": ',                # 5 bad_json
        "[1, 2]",                                                 # 6 not_an_object
        record("B000000003", title=" <br> ", images=[]),          # 7 no_title beats no_image_url (claims id)
        record("B000000003"),                                     # 8 duplicate_id: the id was claimed at line 7
        record("B000000004", images=[{"large": "ftp://x/y.jpg", "variant": "MAIN"}]),  # 9 no_image_url
        " " * 20 + "\t",                                       # 10 blank (long whitespace)
        record("B000000005", title="Last &amp; kept"),            # 11 kept (node 1)
    ]
    rec = run_nodes(tmp_path, write_lines(tmp_path / "meta.jsonl.gz", lines))
    df, q = outputs(tmp_path, rec)
    assert q.select("line_no", "reason").rows() == [
        (3, "duplicate_id"), (4, "bad_id"), (5, "bad_json"), (6, "not_an_object"), (7, "no_title"),
        (8, "duplicate_id"), (9, "no_image_url")]
    assert q.filter(pl.col("line_no") == 5)["raw"].item() == lines[4]
    assert q.filter(pl.col("line_no") == 4)["asin"].item() == "b00000001x"
    assert df.select("node_id", "asin", "title").rows() == [(0, "B000000001", "A product"),
                                                            (1, "B000000005", "Last & kept")]
    assert rec["counts"] == {"input": 9, "kept": 2, "rejected": {"bad_json": 1, "not_an_object": 1, "bad_id": 1,
                                                                  "duplicate_id": 2, "no_title": 1,
                                                                  "no_image_url": 1}, "filtered": {}}


def test_wrong_types_are_coerced_without_losing_the_batch(tmp_path: Path) -> None:
    lines = [record(f"B00000000{i}") for i in range(5)]
    lines[2] = record("B000000002", features="a single feature", average_rating="4.5", rating_number=12.0,
                      price=19, description="one string", store=7, categories=["A", None, 3])
    lines[3] = json.dumps({**json.loads(record("B000000003")), "average_rating": float("nan")})  # NaN literal
    rec = run_nodes(tmp_path, write_lines(tmp_path / "meta.jsonl", lines, gz=False))
    df, q = outputs(tmp_path, rec)
    assert q.height == 0 and df["asin"].to_list() == [f"B00000000{i}" for i in range(5)]
    row = df.row(2, named=True)
    assert (row["features"], row["average_rating"], row["rating_number"], row["price"], row["description"],
            row["store"], row["category_path"]) == (["a single feature"], 4.5, 12, 19.0, "one string", "7",
                                                     ["A", "3"])
    assert df.row(3, named=True)["average_rating"] is None


def test_batches_do_not_change_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(400):
        asin = f"B{rng.integers(0, 300):09d}"  # repeats across batch boundaries
        lines.append(record(asin, title=f"Item {i} &amp; more") if i % 37 else '{"broken": ')
    path = write_lines(tmp_path / "meta.jsonl.gz", lines)
    big = run_nodes(tmp_path / "big", path)
    monkeypatch.setattr(jsonl, "BATCH_BYTES", 2048)  # ~15 lines per batch
    monkeypatch.setattr(jsonl, "PARSE_BYTES", 512)
    monkeypatch.setattr(jsonl, "PYTHON_BLOCK_LINES", 2)
    small = run_nodes(tmp_path / "small", path)
    assert big["counts"] == small["counts"]
    for a, b in zip(outputs(tmp_path / "big", big), outputs(tmp_path / "small", small)):  # row groups differ
        assert a.equals(b)


def test_oversized_line_is_rejected_and_the_stream_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl, "BATCH_BYTES", 4096)
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 8192)
    lines = [record("B000000001"), record("B000000002", title="x" * 50_000), record("B000000003")]
    rec = run_nodes(tmp_path, write_lines(tmp_path / "meta.jsonl.gz", lines))
    df, q = outputs(tmp_path, rec)
    assert df["asin"].to_list() == ["B000000001", "B000000003"]
    assert q.select("line_no", "reason").rows() == [(2, "bad_json")]


def test_image_choice() -> None:
    def img(variant, hi_res=None, large=None, thumb=None):
        return {"variant": variant, "hi_res": hi_res, "large": large, "thumb": thumb}

    rows = [
        [img("PT01", large="https://a/pt.jpg"), img("MAIN", hi_res="https://a/hi.jpg", large="https://a/l.jpg")],
        [img("MAIN", hi_res="ftp://a/hi.jpg", large=" https://a/l.jpg ", thumb="https://a/t.jpg")],
        [img("MAIN", hi_res="data:x", large="/rel.jpg"), img("PT01", thumb="HTTP://a/pt-t.jpg")],
        [img(None, large="https://a/first.jpg"), img("PT02", hi_res="https://a/second.jpg")],
        [img("MAIN", large="file:///etc/passwd")],
        [],
    ]
    df = pl.DataFrame({"images": rows}, schema={"images": nodes.RAW_SCHEMAS["amazon-2023"]["images"]})
    got = df.select(nodes._image_url_2023().str.strip_chars())["images"].to_list()
    assert got == ["https://a/hi.jpg", "https://a/l.jpg", "HTTP://a/pt-t.jpg", "https://a/first.jpg", None, None]


@pytest.mark.parametrize("raw,price,kind", [
    ("12.99", 12.99, "number"), ("$12.99", 12.99, "number"), ("$1,299.99", 1299.99, "number"),
    (" $ 5 ", 5.0, "number"), ("$.99", 0.99, "number"), ("$5.99 - $12.99", 5.99, "range"),
    ("12.99 - 24.99", 12.99, "range"), ("None", None, "missing"), ("", None, "missing"), (None, None, "missing"),
    ("from $9.99", None, "unparsable"), ("N/A", None, "unparsable"), ("USD 45", None, "unparsable"),
    (".a-box-inner{background-color:#fff;}$19.99", None, "unparsable"), ("$", None, "unparsable"),
    ("-5", None, "unparsable"), ("1e400", None, "unparsable"),
])
def test_price_parsing(raw, price, kind) -> None:
    out = pl.DataFrame({"p": [raw]}, schema={"p": pl.String}).select(
        nodes.parse_price(pl.col("p")).alias("price"), nodes.price_kind(pl.col("p")).alias("kind")).row(0)
    assert out == (pytest.approx(price) if price is not None else None, kind)


def test_2018_image_and_list_fields(tmp_path: Path) -> None:
    line = {"asin": "0000000001", "title": "Old &amp; <i>new</i>", "brand": "Acme", "main_cat": "Electronics",
            "category": ["Electronics", "Cables &amp; Wires", ""], "feature": ["f1", " "],
            "description": ["d1", "d2"], "price": "$5.99 - $12.99", "also_buy": ["0000000002"], "also_view": [],
            "imageURL": ["https://img/small.jpg"], "imageURLHighRes": ["not a url", "https://img/big.jpg"]}
    rec = run_nodes(tmp_path, write_lines(tmp_path / "meta.json.gz", [json.dumps(line)]), source="amazon-2018")
    df, _ = outputs(tmp_path, rec, "amazon-2018")
    assert df.select("asin", "title", "store", "main_category", "category_path", "features", "description",
                     "price", "also_buy", "also_view", "image_url").row(0) == (
        "0000000001", "Old & new", "Acme", "Electronics", ["Electronics", "Cables & Wires"], ["f1"], "d1 d2", 5.99,
        ["0000000002"], [], "https://img/big.jpg")


def test_unreadable_input_is_a_clear_error(tmp_path: Path) -> None:
    from etl.core.stage import StageError

    path = tmp_path / "meta.jsonl.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(StageError, match="cannot read"):
        run_nodes(tmp_path, path)


def slip_etl(*args: str) -> subprocess.CompletedProcess:
    """The real `slip-etl` console script (or its entry point where the script is not installed)."""
    script = Path(sys.executable).parent / "slip-etl"
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from etl.cli import main; "
                                                                         "sys.exit(main())"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=300)


def error_line(stderr: str) -> str:
    """The one error line, last on stderr (after the stages' log lines), with no traceback."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and [x for x in lines if "error" in x] == lines[-1:], stderr
    assert lines[-1].startswith("slip-etl: error: "), stderr
    return lines[-1]


def mirror_with_metadata(folder: Path, metadata: bytes) -> Path:
    """A local mirror of the 2023 source whose metadata file holds `metadata` (the reviews file is fine)."""
    (folder / META_2023).parent.mkdir(parents=True)
    (folder / META_2023).write_bytes(metadata)
    (folder / REVIEWS_2023).parent.mkdir(parents=True)
    (folder / REVIEWS_2023).write_bytes(gzip.compress(b'{"parent_asin": "B000000001", "user_id": "U"}\n'))
    return folder


def test_metadata_that_is_not_gzip_fails_at_nodes_naming_its_first_bytes(tmp_path: Path) -> None:
    page = b"<!DOCTYPE html>\r\n<html><title>503 Service Unavailable</title>\\" + b"x" * 4000
    mirror = mirror_with_metadata(tmp_path / "mirror", page)
    done = slip_etl("nodes", "--source", "amazon-2023", "--mirror", str(mirror), "--out", str(tmp_path / "out"),
                    "--no-progress")
    assert done.returncode == 1, done.stderr  # a stage failure, as every StageError
    line = error_line(done.stderr)
    assert "meta_Electronics.jsonl.gz is not gzip" in line
    # the first 64 bytes, printable: CR LF and the backslash escaped
    assert '(starts with "<!DOCTYPE html>\\x0d\\x0a<html><title>503 Service Unavailable</title>\\x5cxx")' in line
    assert "work/records/fetch.json" in line
    assert not (tmp_path / "out" / "amazon-2023-electronics" / "work" / "records" / "nodes.json").exists()


def test_truncated_gzip_says_what_to_check_not_only_to_fetch_again(tmp_path: Path) -> None:
    whole = gzip.compress("\n".join(record(f"B{i:09d}") for i in range(3000)).encode())
    mirror = mirror_with_metadata(tmp_path / "mirror", whole[: len(whole) // 2])
    done = slip_etl("nodes", "--source", "amazon-2023", "--mirror", str(mirror), "--out", str(tmp_path / "out"),
                    "--no-progress")
    assert done.returncode == 1, done.stderr
    line = error_line(done.stderr)
    assert line.startswith("slip-etl: error: cannot read ") and "meta_Electronics.jsonl.gz" in line
    assert "truncated or corrupt" in line
    # --force fetch alone would copy the same bytes from the mirror: the hint says to check the origin first
    assert "size and sha256" in line and "--mirror" in line and "work/records/fetch.json" in line
    assert "original source" in line


def test_reads_gzip_without_isal_and_plain_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [record(f"B00000000{i}") for i in range(3)]
    gz = write_lines(tmp_path / "meta.jsonl.gz", lines)
    plain = write_lines(tmp_path / "meta.jsonl", lines, gz=False)
    monkeypatch.setattr(rawio, "_igzip", None)  # zlib fallback when ISA-L is not installed
    for path in (gz, plain):
        batches = list(jsonl.read_line_batches(path))
        assert [b.line(i).decode() for b in batches for i in range(len(b))] == lines
