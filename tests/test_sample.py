"""The embedded sample: deterministic Amazon-format files with real structure and documented defects, and the
loopback server the fetch and image stages download it from."""

from __future__ import annotations

import contextlib
import gzip
import html
import itertools
import json
import re
import socket
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from etl.sample import SAMPLE_GENERATOR_VERSION, generate_catalog, serve_directory
from etl.sample.defects import RATES
from etl.sample.taxonomy import LEAVES

SMALL = 300
ASIN = re.compile(r"^[A-Z0-9]{10}$")
HTML_MARKUP = re.compile(r"<[a-z/][^>]*>|&[a-z]+;|&#x?[0-9a-f]+;", re.IGNORECASE)
MOJIBAKE = re.compile("Ã|Â|â€|â„")
PRICE_2018 = re.compile(r"^\$[\d,]+\.\d\d$")
DAY_MS = 86_400_000


# --- helpers ---------------------------------------------------------------------------------------------------------


def read_lines(root: Path, truth: dict, name: str) -> list[str]:
    with gzip.open(root / truth["files"][name]["path"], "rt", encoding="utf-8") as handle:
        return handle.read().split("\n")[:-1]


def parse(lines: list[str]) -> dict[int, object]:
    """1-based line number → parsed JSON, for the lines that parse."""
    parsed = {}
    for number, line in enumerate(lines, start=1):
        with contextlib.suppress(ValueError):
            parsed[number] = json.loads(line)
    return parsed


def objects(root: Path, truth: dict, name: str) -> dict[int, dict]:
    return {n: v for n, v in parse(read_lines(root, truth, name)).items() if isinstance(v, dict)}


def truth_lines(truth: dict, file: str, kind: str) -> set[int]:
    return {item["line"] for item in truth["defects"][file][kind]["items"]}


def clean_text(text: str) -> str:
    """What a text cleaner is expected to make of an HTML defect: unescape, strip tags, collapse whitespace."""
    return " ".join(re.sub(r"<[^>]*>", " ", html.unescape(text)).split())


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def url_path(url: str) -> str:
    return url.split("/", 3)[3]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sample")
    return root, generate_catalog(root, seed=0, n_products=SMALL)


# --- determinism -----------------------------------------------------------------------------------------------------


def test_same_arguments_give_byte_identical_files_and_regeneration_leaves_nothing_stale(small, tmp_path):
    root, truth = small
    other = tmp_path / "other"
    other_truth = generate_catalog(other, seed=1, n_products=100)
    seed_0_at_100 = generate_catalog(tmp_path / "seed0", seed=0, n_products=100)
    assert other_truth["files"]["meta_2023"]["sha256"] != seed_0_at_100["files"]["meta_2023"]["sha256"]
    assert set(other_truth["products"]).isdisjoint(seed_0_at_100["products"])

    regenerated = generate_catalog(other, seed=0, n_products=SMALL)  # over the seed-1 sample
    assert regenerated == truth
    assert tree_bytes(other) == tree_bytes(root)  # same files, same bytes, no seed-1 image left behind
    assert truth["generator_version"] == SAMPLE_GENERATOR_VERSION


def test_gzip_headers_carry_no_time_or_name(small):
    root, truth = small
    for entry in truth["files"].values():
        header = (root / entry["path"]).read_bytes()[:10]
        assert header[3] & 0x08 == 0, "no file name in the header"
        assert header[4:8] == b"\0\0\0\0", "mtime must be 0"


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no category"):
        generate_catalog(tmp_path / "a", category="Toys")
    with pytest.raises(ValueError, match="at least"):
        generate_catalog(tmp_path / "b", n_products=10)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate_catalog(foreign, n_products=SMALL)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


# --- formats and counts ----------------------------------------------------------------------------------------------


def test_files_sit_at_the_real_repositories_paths(small):
    root, truth = small
    assert truth["files"]["meta_2023"]["path"] == "amazon_2023/raw/meta_categories/meta_Electronics.jsonl.gz"
    assert truth["files"]["reviews_2023"]["path"] == "amazon_2023/raw/review_categories/Electronics.jsonl.gz"
    assert truth["files"]["meta_2018"]["path"] == "amazon_v2/metaFiles2/meta_Electronics.json.gz"
    for entry in truth["files"].values():
        assert (root / entry["path"]).stat().st_size == entry["bytes"]


@pytest.mark.parametrize("name, keys", [
    ("meta_2023", {"main_category", "title", "average_rating", "rating_number", "features", "description", "price",
                   "images", "videos", "store", "categories", "details", "parent_asin", "bought_together"}),
    ("reviews_2023", {"rating", "title", "text", "images", "asin", "parent_asin", "user_id", "timestamp",
                      "helpful_vote", "verified_purchase"}),
    ("meta_2018", {"asin", "title", "feature", "description", "price", "imageURL", "imageURLHighRes", "also_buy",
                   "also_view", "category", "main_cat", "brand", "rank", "date", "details"}),
])
def test_lines_parse_except_the_broken_ones_and_counts_match_truth(small, name, keys):
    root, truth = small
    lines = read_lines(root, truth, name)
    assert len(lines) == truth["files"][name]["lines"]
    parsed = parse(lines)
    assert set(range(1, len(lines) + 1)) - set(parsed) == truth_lines(truth, name, "truncated_json")
    non_objects = {n for n, value in parsed.items() if not isinstance(value, dict)}
    expected_non_objects = truth_lines(truth, name, "not_an_object") if name == "meta_2023" else set()
    assert non_objects == expected_non_objects
    for value in parsed.values():
        if isinstance(value, dict):
            assert set(value) >= keys


def test_2023_metadata_fields_have_the_dump_types(small):
    root, truth = small
    records = list(objects(root, truth, "meta_2023").values())
    assert all(r["bought_together"] is None for r in records)
    assert {type(r["price"]) for r in records} == {float, str, type(None)}
    assert {type(r["details"]) for r in records} == {dict, str}
    assert all(isinstance(json.loads(r["details"]), dict) for r in records if isinstance(r["details"], str))
    hi_res = [image["hi_res"] for r in records for image in r["images"]]
    assert None in hi_res and any(hi_res)
    variants = {image["variant"] for r in records for image in r["images"]}
    assert {"MAIN", "PT01"} <= variants
    depths = {len(r["categories"]) for r in records if r["categories"]}
    assert depths == {4, 5}  # root + 3 or 4 levels


def test_reviews_carry_ms_timestamps_and_mostly_verified_purchases(small):
    root, truth = small
    reviews = list(objects(root, truth, "reviews_2023").values())
    assert all(1_300_000_000_000 < r["timestamp"] < 1_700_000_000_000 for r in reviews)
    verified = sum(r["verified_purchase"] for r in reviews) / len(reviews)
    assert 0.85 < verified < 0.98
    per_product = Counter(r["parent_asin"] for r in reviews if r["parent_asin"] in truth["products"])
    assert 10 <= len(reviews) / SMALL <= 20
    assert max(per_product.values()) > 4 * np.median(list(per_product.values()))  # heavy tail


# --- defects ---------------------------------------------------------------------------------------------------------


def detect_meta_2023(lines: list[str], products: dict) -> dict[str, set[int]]:
    """Find each 2023 metadata defect from the file alone (independently of how it was injected)."""
    found: dict[str, set[int]] = defaultdict(set)
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            found["truncated_json"].add(number)
            continue
        if not isinstance(record, dict):
            found["not_an_object"].add(number)
            continue
        asin = record["parent_asin"]
        if asin in seen:
            found["duplicate_id"].add(number)
        seen.add(asin)
        texts = [record["title"], *record["features"], *record["description"]]
        checks = {
            "invalid_id": not ASIN.match(asin),
            "empty_title": not record["title"].strip(),
            "empty_categories": record["categories"] == [],
            "no_images": record["images"] == [],
            "html": any(HTML_MARKUP.search(t) for t in texts),
            "mojibake": any(MOJIBAKE.search(t) for t in texts),
            "placeholder_price": record["price"] == "None",
            "odd_price": isinstance(record["price"], str) and record["price"] != "None",
            "long_field": max(map(len, texts)) > 10_000,
            "non_http_image_url": bool(record["images"]) and not record["images"][0]["large"].startswith("https://"),
        }
        found.update({kind: found[kind] | {number} for kind, hit in checks.items() if hit})
    return found


def test_every_2023_metadata_defect_is_present_as_the_truth_states(small):
    root, truth = small
    found = detect_meta_2023(read_lines(root, truth, "meta_2023"), truth["products"])
    for kind in RATES["meta_2023"]:
        stated = truth["defects"]["meta_2023"][kind]
        assert stated["count"] >= 2, kind
        assert stated["count"] == len(stated["items"])
        assert found[kind] == truth_lines(truth, "meta_2023", kind), kind


def test_html_and_mojibake_defects_are_reversible_to_the_stated_clean_text(small):
    root, truth = small
    records = objects(root, truth, "meta_2023")
    for kind, repair in (("html", clean_text), ("mojibake", lambda t: t.encode("cp1252").decode("utf-8"))):
        for item in truth["defects"]["meta_2023"][kind]["items"]:
            record = records[item["line"]]
            for field, clean in item["clean"].items():
                name, _, index = field.partition("[")
                value = record[name] if not index else record[name][int(index.rstrip("]"))]
                assert value != clean and repair(value) == clean, (kind, field)


def test_every_review_defect_is_present_as_the_truth_states(small):
    root, truth = small
    lines = read_lines(root, truth, "reviews_2023")
    found: dict[str, set[int]] = defaultdict(set)
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if line in seen:
            found["duplicate_line"].add(number)
        seen.add(line)
        try:
            review = json.loads(line)
        except ValueError:
            found["truncated_json"].add(number)
            continue
        if review["user_id"] == "":
            found["empty_user_id"].add(number)
        if review["parent_asin"] not in truth["products"]:
            found["unknown_product"].add(number)
    for kind in RATES["reviews_2023"]:
        assert truth["defects"]["reviews_2023"][kind]["count"] >= 2, kind
        assert found[kind] == truth_lines(truth, "reviews_2023", kind), kind


def test_every_2018_metadata_defect_is_present_as_the_truth_states(small):
    root, truth = small
    found: dict[str, set[int]] = defaultdict(set)
    seen: set[str] = set()
    for number, line in enumerate(read_lines(root, truth, "meta_2018"), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            found["truncated_json"].add(number)
            continue
        if record["asin"] in seen:
            found["duplicate_id"].add(number)
        seen.add(record["asin"])
        texts = [record["title"], *record["feature"], *record["description"]]
        checks = {
            "empty_title": not record["title"].strip(),
            "html": any(HTML_MARKUP.search(t) for t in texts),
            "placeholder_price": record["price"] == "",
            "odd_price": record["price"] != "" and not PRICE_2018.match(record["price"]),
            "dangling_also_buy": any(asin not in truth["products"] for asin in record["also_buy"]),
        }
        found.update({kind: found[kind] | {number} for kind, hit in checks.items() if hit})
        assert all("&amp;" in name for name in record["category"] if "&" in name)  # as the real 2018 file
    for kind in RATES["meta_2018"]:
        assert truth["defects"]["meta_2018"][kind]["count"] >= 2, kind
        assert found[kind] == truth_lines(truth, "meta_2018", kind), kind


def test_every_image_url_maps_onto_a_jpeg_except_the_listed_broken_ones(small):
    root, truth = small
    urls = set()
    for record in objects(root, truth, "meta_2023").values():
        urls |= {image[size] for image in record["images"] for size in ("thumb", "large", "hi_res") if image[size]}
    for record in objects(root, truth, "meta_2018").values():
        urls |= set(record["imageURL"]) | set(record["imageURLHighRes"])
    http_urls = {url for url in urls if url.startswith("https://m.media-amazon.com/images/I/")}
    stated_odd = {item["url"] for item in truth["defects"]["meta_2023"]["non_http_image_url"]["items"]}
    assert urls - http_urls == stated_odd

    missing = {url for item in truth["defects"]["images"]["missing_image"]["items"] for url in item["urls"]}
    corrupt = {url for item in truth["defects"]["images"]["corrupt_image"]["items"] for url in item["urls"]}
    assert len(missing) >= 2 and len(corrupt) >= 2 and missing <= http_urls and corrupt <= http_urls
    absent, undecodable = set(), set()
    for url in http_urls:
        path = root / url_path(url)
        if not path.is_file():
            absent.add(url)
            continue
        try:
            with Image.open(path) as image:
                image.load()
                assert image.format == "JPEG"
                if "_US40_" not in url:
                    assert min(image.size) >= 320 and max(image.size) <= 400
        except (OSError, AssertionError):
            undecodable.add(url)
    assert absent == missing
    assert undecodable == corrupt
    assert len(list((root / "images" / "I").iterdir())) == truth["counts"]["image_files"]


def test_each_defect_kind_is_injected_max_2_or_rate_times_n_times_on_lines_with_one_defect_each(small):
    """The rule the generator documents: count = max(2, round(rate x n)), n = products for the metadata and image
    kinds, clean reviews for the review kinds; per-product kinds hit disjoint products, so a line has one defect."""
    _, truth = small
    n = {"meta_2023": SMALL, "images": SMALL, "meta_2018": SMALL, "reviews_2023": truth["counts"]["reviews"]}
    for file, kinds in RATES.items():
        for kind, rate in kinds.items():
            stated = truth["defects"][file][kind]
            assert stated["count"] == len(stated["items"]) == max(2, round(rate * n[file])), (file, kind)
    for file in ("meta_2023", "reviews_2023", "meta_2018"):
        lines = [item["line"] for kind in RATES[file] for item in truth["defects"][file][kind]["items"]]
        assert len(lines) == len(set(lines)), file
    per_product = [item["asin"] for file in ("meta_2023", "images") for kind in RATES[file]
                   if kind != "not_an_object" for item in truth["defects"][file][kind]["items"]]
    assert len(per_product) == len(set(per_product))


# --- structure -------------------------------------------------------------------------------------------------------


def test_category_tree_has_dozens_of_uneven_leaves_including_rare_ones(small):
    _, truth = small
    leaves = truth["leaves"]
    assert 35 <= len(leaves) <= 50
    assert {len(leaf["path"]) for leaf in leaves} == {4, 5}
    assert sum(leaf["products"] for leaf in leaves) == SMALL
    assert sum(1 for leaf in leaves if leaf["products"] < 10) >= 4
    assert len({leaf["group"] for leaf in leaves}) >= 6
    assert set(truth["category_tree"]) == {"Electronics"}


def test_titles_name_the_products_category_noun_brand_and_colour(small):
    root, truth = small
    nouns = {leaf.name: leaf.noun for leaf in LEAVES}
    clean = [r for n, r in objects(root, truth, "meta_2023").items()
             if r["parent_asin"] in truth["products"] and not HTML_MARKUP.search(r["title"])
             and not MOJIBAKE.search(r["title"]) and r["title"].strip()]
    assert len(clean) > SMALL * 0.8
    for record in clean:
        product = truth["products"][record["parent_asin"]]
        assert nouns[product["leaf"]] in record["title"]
        assert product["brand"] in record["title"] and product["colour"] in record["title"]


def test_images_look_like_their_category(small):
    """Mean colours of MAIN images differ between leaves much more than within a leaf."""
    root, truth = small
    broken = {item["url"] for kind in ("missing_image", "corrupt_image")
              for item in truth["defects"]["images"][kind]["items"]}
    by_leaf: dict[str, list[np.ndarray]] = defaultdict(list)
    for record in objects(root, truth, "meta_2023").values():
        product = truth["products"].get(record["parent_asin"])
        if not product or not record["images"] or not record["images"][0]["large"].startswith("https"):
            continue
        url = record["images"][0]["hi_res"] or record["images"][0]["large"]
        if url in broken:
            continue
        with Image.open(root / url_path(url)) as image:
            by_leaf[product["leaf"]].append(np.asarray(image.convert("RGB"), np.float32).mean(axis=(0, 1)))
    means = {leaf: np.stack(v) for leaf, v in by_leaf.items() if len(v) >= 4}
    assert len(means) >= 15
    within = np.mean([m.var(axis=0).sum() for m in means.values()])
    between = np.stack([m.mean(axis=0) for m in means.values()]).var(axis=0).sum()
    assert between > 3 * within


def test_purchases_follow_complementary_kits_brands_and_power_users(small):
    root, truth = small
    products = truth["products"]
    reviews = [r for r in objects(root, truth, "reviews_2023").values()
               if r["parent_asin"] in products and r["user_id"]]
    leaves_of_user: dict[str, set[str]] = defaultdict(set)
    for review in reviews:
        leaves_of_user[review["user_id"]].add(products[review["parent_asin"]]["leaf"])
    users_per_leaf = Counter(leaf for leaves in leaves_of_user.values() for leaf in leaves)
    users_per_pair = Counter(pair for leaves in leaves_of_user.values()
                             for pair in itertools.combinations(sorted(leaves), 2))
    group = {leaf["name"]: leaf["group"] for leaf in truth["leaves"]}
    partners = truth["complementary_leaves"]

    def lift(pairs: list[tuple[str, str]]) -> float:
        observed = sum(users_per_pair[pair] for pair in pairs)
        expected = sum(users_per_leaf[a] * users_per_leaf[b] / len(leaves_of_user) for a, b in pairs)
        return observed / expected

    kit_pairs = [(a, b) for a in partners for b in partners[a] if a < b]
    other_pairs = [(a, b) for a, b in itertools.combinations(sorted(partners), 2)
                   if b not in partners[a] and group[a] != group[b]]
    assert lift(kit_pairs) > 2.5 * lift(other_pairs)

    # items bought together (same user, within two days, different leaves) share a brand far more than chance
    by_user: dict[str, list[dict]] = defaultdict(list)
    for review in reviews:
        by_user[review["user_id"]].append(review)
    together = [(products[a["parent_asin"]], products[b["parent_asin"]])
                for history in by_user.values()
                for a, b in itertools.combinations(sorted(history, key=lambda r: r["timestamp"]), 2)
                if abs(a["timestamp"] - b["timestamp"]) < 2 * DAY_MS]
    together = [(a, b) for a, b in together if a["leaf"] != b["leaf"]]
    asins = sorted(products)
    rng = np.random.default_rng(0)
    random_pairs = [(products[asins[i]], products[asins[j]]) for i, j in rng.integers(0, len(asins), (5000, 2))]
    random_pairs = [(a, b) for a, b in random_pairs if a["leaf"] != b["leaf"]]

    def same_brand(pairs: list) -> float:
        return sum(a["brand"] == b["brand"] for a, b in pairs) / len(pairs)

    assert same_brand(together) > 2 * same_brand(random_pairs)

    per_user = Counter(review["user_id"] for review in reviews)
    power = {user["user_id"] for user in truth["power_users"]}
    assert len(power) >= 3
    assert all(per_user[user] >= 100 for user in power)
    assert np.median([count for user, count in per_user.items() if user not in power]) <= 3


def test_2018_also_buy_reflects_the_same_purchases(small):
    root, truth = small
    bought_by: dict[str, set[str]] = defaultdict(set)
    for review in objects(root, truth, "reviews_2023").values():
        bought_by[review["parent_asin"]].add(review["user_id"])
    known = [(record["asin"], other) for record in objects(root, truth, "meta_2018").values()
             for other in record["also_buy"] if other in truth["products"]]
    assert len(known) > SMALL
    shared = sum(bool(bought_by[a] & bought_by[b]) for a, b in known) / len(known)
    assert shared > 0.95


# --- default size ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_size_generates_in_modest_time(tmp_path):
    started = time.perf_counter()
    truth = generate_catalog(tmp_path / "full")
    elapsed = time.perf_counter() - started
    sizes = {name: entry["bytes"] for name, entry in truth["files"].items()}
    print(f"\ndefault sample: {elapsed:.1f} s, {truth['counts']}, file bytes {sizes}")
    assert elapsed < 180
    assert truth["n_products"] == 3000
    assert 10 <= truth["counts"]["reviews"] / 3000 <= 20
    assert min(leaf["products"] for leaf in truth["leaves"]) < 10
    assert all(user["reviews"] >= 200 for user in truth["power_users"])


# --- server ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "root"
    (root / "images" / "I").mkdir(parents=True)
    files = {
        "data.jsonl.gz": gzip.compress(b'{"a": 1}\n' * 500, mtime=0),
        "images/I/41abc._AC_.jpg": bytes(range(256)) * 40,
        "sample_truth.json": b'{"ok": true}',
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (tmp_path / "secret.txt").write_text("outside the root")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    with serve_directory(root) as base:
        yield base, files


def raw_request(base: str, target: str) -> bytes:
    """Send a request line exactly as written (httpx would normalise the dots away)."""
    host, port = base.removeprefix("http://").rstrip("/").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_server_get_and_head_report_length_and_type(served):
    base, files = served
    with httpx.Client(base_url=base) as client:
        for name, media in (("data.jsonl.gz", "application/gzip"), ("images/I/41abc._AC_.jpg", "image/jpeg"),
                            ("sample_truth.json", "application/json")):
            response = client.get(name)
            assert response.status_code == 200
            assert response.content == files[name]
            assert response.headers["content-type"] == media
            assert int(response.headers["content-length"]) == len(files[name])
            head = client.head(name)
            assert head.status_code == 200 and head.content == b""
            assert int(head.headers["content-length"]) == len(files[name])


def test_server_range_requests_resume_downloads(served):
    base, files = served
    data, size = files["images/I/41abc._AC_.jpg"], len(files["images/I/41abc._AC_.jpg"])
    with httpx.Client(base_url=base) as client:
        for header, (start, end) in (("bytes=10-19", (10, 19)), ("bytes=100-", (100, size - 1)),
                                     ("bytes=-5", (size - 5, size - 1)), (f"bytes=0-{size * 2}", (0, size - 1))):
            response = client.get("images/I/41abc._AC_.jpg", headers={"Range": header})
            assert response.status_code == 206, header
            assert response.headers["content-range"] == f"bytes {start}-{end}/{size}"
            assert response.content == data[start:end + 1]
        for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}"):
            response = client.get("images/I/41abc._AC_.jpg", headers={"Range": header})
            assert response.status_code == 416
            assert response.headers["content-range"] == f"bytes */{size}"
        ignored = client.get("images/I/41abc._AC_.jpg", headers={"Range": "bytes=0-1,5-6"})
        assert ignored.status_code == 200 and ignored.content == data


def test_server_refuses_missing_files_listings_and_escapes(served):
    base, _ = served
    with httpx.Client(base_url=base) as client:
        for path in ("nope.json", "images/", "images/I", "", "link.txt"):
            assert client.get(path).status_code == 404, path
    for target in ("/../secret.txt", "/images/../../secret.txt", "/%2e%2e/secret.txt", "/images/..%2f..%2fsecret.txt",
                   "/%2Fetc%2Fpasswd", "/images%5c..%5c..%5csecret.txt"):
        reply = raw_request(base, target)
        assert reply.startswith(b"HTTP/1.1 404"), target
        assert b"outside the root" not in reply


def test_server_keeps_connections_alive_for_reuse(served):
    base, _ = served
    with httpx.Client(base_url=base) as client:
        ports = set()
        for path, headers in (("sample_truth.json", {}), ("nope", {}), ("data.jsonl.gz", {"Range": "bytes=0-3"}),
                              ("data.jsonl.gz", {"Range": "bytes=99999999-"}), ("sample_truth.json", {})):
            response = client.get(path, headers=headers)
            assert response.http_version == "HTTP/1.1"
            ports.add(response.extensions["network_stream"].get_extra_info("client_addr")[1])
    assert len(ports) == 1


def test_server_is_quiet_survives_aborted_downloads_and_shuts_down_cleanly(tmp_path, capfd):
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.jsonl.gz").write_bytes(b"x" * 8_000_000)
    threads_before = threading.active_count()
    with serve_directory(root) as base:
        with httpx.Client(base_url=base) as client:
            with client.stream("GET", "big.jsonl.gz") as response:
                next(response.iter_bytes())  # then hang up mid-transfer
            assert client.get("missing").status_code == 404
        idle = httpx.Client(base_url=base)
        assert idle.get("big.jsonl.gz", headers={"Range": "bytes=0-0"}).status_code == 206  # stays open
        started = time.perf_counter()
    assert time.perf_counter() - started < 5
    idle.close()
    assert threading.active_count() == threads_before
    with pytest.raises(httpx.ConnectError):
        httpx.get(base + "big.jsonl.gz", timeout=2)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
