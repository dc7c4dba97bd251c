"""Amazon image renditions: the URL chosen per shorter_side, the fallback to a larger one, the sample CDN's sizes."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import schemas
from etl.harness import adopt_stage, load_config, make_opts, run
from etl.imaging.renditions import plan, promised_side
from etl.sample import serve_directory
from etl.stages.nodes import RAW_SCHEMAS, normalise_fields

CDN = "https://m.media-amazon.com/images/I/"
FAST = ["http.connect_timeout_s=2", "http.read_timeout_s=2", "images.retries=1", "images.backoff_base_s=0.05",
        "images.workers=1", "images.concurrency=4"]


def jpeg(width: int, height: int, colour: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def listing(image_id: str, sizes: dict[str, str]) -> dict[str, str]:
    """Rendition -> URL as the 2023 metadata lists them: `{CDN}{id}.{modifier}.jpg`."""
    return {name: f"{CDN}{image_id}.{modifier}.jpg" for name, modifier in sizes.items()}


AMAZON = listing("71abcDEF1L", {"thumb": "_AC_US40_", "large": "_AC_SX466_", "hi_res": "_AC_SL1500_"})


# ---------------------------------------------------------------------------------------------- the choice


def test_promised_side_reads_the_cdn_size_modifiers() -> None:
    assert promised_side(f"{CDN}71abc._AC_SL1500_.jpg") == 1500
    assert promised_side(f"{CDN}71abc._AC_SX466_.jpg") == 466
    assert promised_side(f"{CDN}51abc._SS40_.jpg") == 40
    assert promised_side(f"{CDN}51abc._SY300_.jpg?x=1") == 300
    assert promised_side(f"{CDN}51abc._AC_.jpg") is None and promised_side(f"{CDN}51abc.jpg") is None


@pytest.mark.parametrize("shorter_side, chosen", [
    (32, ("thumb", "large", "hi_res")),  # even the thumb covers 32 px
    (256, ("large", "hi_res")),          # today's default: the 466 px large first, hi_res if it is too small
    (466, ("large", "hi_res")),
    (467, ("hi_res",)),
    (2000, ("hi_res",)),                 # nothing covers 2000 px: the largest there is
])
def test_smallest_rendition_that_covers_shorter_side_first(shorter_side: int, chosen: tuple[str, ...]) -> None:
    tried = plan(AMAZON, shorter_side)
    assert tuple(name for name, _ in tried) == chosen
    assert all(url == AMAZON[name] for name, url in tried)


def test_plan_without_size_modifiers_and_the_old_rule() -> None:
    sample = listing("41xyz", {"thumb": "_AC_US40_", "large": "_AC_", "hi_res": "_AC_SL1500_"})
    assert [name for name, _ in plan(sample, 256)] == ["large", "hi_res"]  # large is taken as ~500 px
    assert [name for name, _ in plan(sample, 600)] == ["hi_res"]
    assert plan(sample, 256, "largest") == (("hi_res", sample["hi_res"]),)  # always hi_res > large > thumb
    no_hi_res = {**sample, "hi_res": None}
    assert plan(no_hi_res, 256, "largest") == (("large", sample["large"]),)
    assert plan({"thumb": sample["thumb"]}, 256) == (("thumb", sample["thumb"]),)  # the best there is
    same = {"thumb": sample["thumb"], "hi_res": sample["large"], "large": sample["large"]}
    assert [url for _, url in plan(same, 256)] == [sample["large"]]  # one file listed twice is tried once
    assert plan({}, 256) == () and plan({"large": None}, 256) == ()


def test_node_table_keeps_every_rendition_of_the_image_it_picks() -> None:
    """image_url's image (MAIN first, the first with a usable URL) is the one whose renditions are kept."""
    broken_main = {"thumb": "ftp://x/t.jpg", "large": "data:x", "variant": "MAIN", "hi_res": None}
    records = pl.DataFrame({
        "__line": [1, 2, 3],
        "parent_asin": ["B000000001", "B000000002", "B000000003"], "title": ["a", "b", "c"],
        "features": [[], [], []], "description": [[], [], []], "store": [None] * 3, "main_category": [None] * 3,
        "categories": [[], [], []], "price": [None] * 3, "average_rating": [None] * 3, "rating_number": [None] * 3,
        "images": [
            [{**AMAZON, "variant": "PT", "hi_res": None},
             {**listing("main1", {"thumb": "_AC_US40_", "large": "_AC_"}), "variant": "MAIN", "hi_res": None}],
            [broken_main, {**AMAZON, "variant": "PT"}],
            [],
        ],
    }, schema={**{"__line": pl.Int64}, **RAW_SCHEMAS["amazon-2023"]})
    out = normalise_fields(records, "amazon-2023").select(
        "image_url", "image_url_thumb", "image_url_large", "image_url_hi_res").rows()
    main1 = listing("main1", {"thumb": "_AC_US40_", "large": "_AC_"})
    assert out[0] == (main1["large"], main1["thumb"], main1["large"], None)  # the MAIN image, not the first one
    assert out[1] == (AMAZON["hi_res"], AMAZON["thumb"], AMAZON["large"], AMAZON["hi_res"])  # MAIN had no http URL
    assert out[2] == (None, None, None, None)
    assert {"image_url_thumb", "image_url_large", "image_url_hi_res"} <= set(schemas.arrow_schema("nodes").names)


# ---------------------------------------------------------------------------------------------- the crawl


def seed_nodes(tmp_path: Path, cfg, opts, rows: dict[int, dict[str, str | None]]) -> None:
    """Adopt fetch/nodes/edges as finished stages: node `i` lists the renditions `rows[i]` (image_url: the largest)."""
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    (fixtures / "meta.jsonl").write_text("{}\n")
    adopt_stage(cfg, opts, "fetch", {"metadata": fixtures / "meta.jsonl"})
    table = pa.Table.from_pylist([
        {"node_id": nid, "asin": f"B{nid:09d}", "title": f"product {nid}", "features": [], "description": "",
         "category_path": [], "also_buy": [], "also_view": [],
         "image_url": urls.get("hi_res") or urls.get("large") or urls.get("thumb") or urls.get("image_url"),
         **{f"image_url_{name}": urls.get(name) for name in ("thumb", "large", "hi_res")}}
        for nid, urls in sorted(rows.items())], schema=schemas.arrow_schema("nodes"))
    pq.write_table(table, fixtures / "nodes.parquet")
    adopt_stage(cfg, opts, "nodes", {"nodes": fixtures / "nodes.parquet"})
    pq.write_table(pa.Table.from_pylist([{"node_id": n, "kept": True, "reason": None} for n in sorted(rows)],
                                        schema=schemas.arrow_schema("node_filter")), fixtures / "node_filter.parquet")
    pq.write_table(schemas.arrow_schema("edges").empty_table(), fixtures / "edges.parquet")
    adopt_stage(cfg, opts, "edges", {"edges": fixtures / "edges.parquet",
                                     "node_filter": fixtures / "node_filter.parquet"})


@pytest.fixture()
def cdn(tmp_path: Path) -> dict:
    """Image files where node 0's large is smaller than its name promises (a CDN serving less than asked)."""
    root = tmp_path / "cdn"
    (root / "I").mkdir(parents=True)
    files = {"short._AC_SX300_.jpg": jpeg(200, 150), "short._AC_SL1500_.jpg": jpeg(600, 450),
             "fine._AC_SX300_.jpg": jpeg(300, 300), "fine._AC_SL1500_.jpg": jpeg(900, 900),
             "plain.jpg": jpeg(320, 320), "tiny._AC_US40_.jpg": jpeg(40, 40),
             "gone._AC_SX300_.jpg": jpeg(200, 150)}  # its hi_res is missing (404)
    for name, data in files.items():
        (root / "I" / name).write_bytes(data)
    rows = {0: listing("short", {"large": "_AC_SX300_", "hi_res": "_AC_SL1500_"}),
            1: listing("fine", {"large": "_AC_SX300_", "hi_res": "_AC_SL1500_"}),
            2: {"image_url": f"{CDN}plain.jpg"},  # a node table without renditions: image_url as before
            3: listing("tiny", {"thumb": "_AC_US40_"}),
            4: listing("gone", {"large": "_AC_SX300_", "hi_res": "_AC_SL1500_"})}
    return {"root": root, "files": files, "rows": rows}


def crawl(tmp_path: Path, cdn: dict, *overrides: str) -> tuple[dict[int, dict], Any]:
    cfg = load_config(overrides=[*FAST, *overrides])
    with serve_directory(cdn["root"]) as base:  # plain files: sizes are what the files hold
        opts = make_opts(tmp_path / "out", allow_hosts=("127.0.0.1",), image_url_rewrite=((CDN, base + "I/"),))
        seed_nodes(tmp_path, cfg, opts, cdn["rows"])
        run(cfg, opts, "images")
    table = pq.read_table(opts.work_dir / "images" / "status.parquet")
    assert schemas.validate_table(table, "image_status") == []
    assert "rendition" in table.column_names and schemas.load_schema("image_status")["version"] == 2
    return {row["node_id"]: row for row in table.to_pylist()}, opts


def test_too_small_rendition_falls_back_to_a_larger_one_and_the_status_says_which(tmp_path: Path, cdn: dict) -> None:
    status, opts = crawl(tmp_path, cdn)
    assert all(row["status"] == "ok" for row in status.values()), status
    rows = cdn["rows"]
    short = status[0]  # large promised 300 px wide but held 200 x 150: hi_res was fetched and kept
    assert (short["rendition"], short["url"], short["width"], short["height"]) == (
        "hi_res", rows[0]["hi_res"], 600, 450)
    assert short["attempts"] == 2 and short["bytes"] == len(cdn["files"]["short._AC_SL1500_.jpg"])
    fine = status[1]  # large covers 256: hi_res never requested
    assert (fine["rendition"], fine["url"], fine["width"], fine["attempts"]) == ("large", rows[1]["large"], 300, 1)
    assert (status[2]["rendition"], status[2]["url"]) == (None, rows[2]["image_url"])
    assert (status[3]["rendition"], status[3]["width"]) == ("thumb", 40)  # only a thumb listed: kept, small
    gone = status[4]  # too small, and the larger one is gone: the smaller image is kept rather than nothing
    assert (gone["rendition"], gone["url"], gone["width"], gone["attempts"]) == ("large", rows[4]["large"], 200, 2)
    stats = json.loads((opts.work_dir / "records" / "images.json").read_text())["stats"]
    assert stats["renditions"] == {"hi_res": 1, "image_url": 1, "large": 2, "thumb": 1}
    assert stats["this_run"]["rendition_fallbacks"] == 2 and stats["this_run"]["renditions"] == stats["renditions"]


def test_largest_rule_fetches_hi_res_as_before(tmp_path: Path, cdn: dict) -> None:
    status, _ = crawl(tmp_path, cdn, "images.rendition=largest")
    assert [(status[n]["rendition"], status[n]["attempts"]) for n in (0, 1)] == [("hi_res", 1), ("hi_res", 1)]
    assert status[1]["url"] == cdn["rows"][1]["hi_res"] and status[1]["width"] == 900
    assert (status[4]["status"], status[4]["http_status"]) == ("http_error", 404)  # its hi_res is gone


# ---------------------------------------------------------------------------------------------- the sample CDN


def test_sample_server_serves_sized_renditions_of_one_file(tmp_path: Path) -> None:
    folder = tmp_path / "images" / "I"
    folder.mkdir(parents=True)
    stored = jpeg(400, 300)
    for name in ("41a._AC_.jpg", "41a._AC_SL1500_.jpg", "41a._AC_SX200_.jpg", "41a._SY150_.jpg", "41a._SS400_.jpg"):
        (folder / name).write_bytes(stored)
    (folder / "41b._AC_SL1500_.jpg").write_bytes(b"<html>not an image</html>")

    def fetch(base: str, name: str) -> bytes:
        response = httpx.get(f"{base}images/I/{name}", timeout=10)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        return response.content

    with serve_directory(tmp_path, renditions=True) as base:
        sizes = {name: Image.open(io.BytesIO(fetch(base, name))).size
                 for name in ("41a._AC_SL1500_.jpg", "41a._AC_SX200_.jpg", "41a._SY150_.jpg")}
        assert sizes == {"41a._AC_SL1500_.jpg": (1500, 1125), "41a._AC_SX200_.jpg": (200, 150),
                         "41a._SY150_.jpg": (200, 150)}
        assert fetch(base, "41a._AC_.jpg") == stored  # no size modifier: as stored
        assert fetch(base, "41a._SS400_.jpg") == stored  # already that size
        assert len(fetch(base, "41a._AC_SL1500_.jpg")) > 3 * len(stored)  # a real, bigger rendition
        assert fetch(base, "41b._AC_SL1500_.jpg") == b"<html>not an image</html>"  # broken bytes stay broken
        assert httpx.get(f"{base}images/I/41c._AC_SL1500_.jpg", timeout=10).status_code == 404
    with serve_directory(tmp_path) as base:  # off by default: every file byte for byte
        assert fetch(base, "41a._AC_SL1500_.jpg") == stored
