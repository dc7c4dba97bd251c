"""Deterministic Amazon-format mini catalog: the `--source sample` of `slip-etl build`.

``generate_catalog(dest)`` writes, at the same relative paths as the real data repositories:

- ``amazon_2023/raw/meta_categories/meta_<C>.jsonl.gz``  Amazon Reviews 2023 metadata, one object per line
- ``amazon_2023/raw/review_categories/<C>.jsonl.gz``     2023 reviews
- ``amazon_v2/metaFiles2/meta_<C>.json.gz``              2018 metadata of the same products (also_buy, also_view)
- ``images/I/<id>._AC_SL1500_.jpg`` / ``._AC_.jpg`` / ``._AC_US40_.jpg``  hi_res / large / thumb of each image;
  metadata URLs are ``https://m.media-amazon.com/images/I/...`` whose path maps 1:1 onto these files
- ``sample_truth.json``  what was generated and injected (below), for tests of later stages

Same arguments → byte-identical files (seeded ``random.Random`` streams per part, gzip ``mtime=0``, no clocks).

Regimes: ``knobs`` (``etl.sample.knobs.SampleKnobs``) change what the graph means: brand loyalty, category focus,
substitutes vs complements, near-duplicate products, density, noise. Their defaults are the numbers below, so
``SampleKnobs()`` writes the same bytes as ever; non-default knobs are listed in the truth file under ``knobs``.

Structure (what models can learn):
- Category tree ``Electronics > group > ... > leaf``: 8 groups, 45 leaves, 3-4 levels below the root
  (``taxonomy.py``). Products are spread unevenly: leaves get shares by weight × jitter, and 4 rare leaves get
  only 3-8 products whatever ``n_products`` is, so a label rule has to deal with rare classes.
- Product = leaf + brand (skewed pool per group; a few brands span groups) + colour + style + model number.
  Title and features come from the leaf's and group's vocabulary and name brand, colour and style (``catalog.py``).
- Images (``images.py``): group → shape, leaf → background palette/texture, product → colour, style pattern,
  brand badge, placement; pixel noise. 320-400 px JPEG, quality 90. 0-2 extra (PT) images per product;
  hi_res is null for 35 % of MAIN and 70 % of PT images, as in the dump (large and hi_res share bytes).
- Purchases (``purchases.py``): users with 1-3 interest groups and brand/style preferences; baskets of an anchor
  plus complementary-kit items that prefer the anchor's brand/style; 8 % noise anchors; 3+ power users with
  hundreds of purchases. Each purchase is one review (``reviews.py``): about 15 reviews per product on average,
  heavy-tailed; 92 % verified; timestamps in ms. 2018 also_buy = most frequent basket partners; also_view =
  same-leaf substitutes.

Defects (``defects.py``; count = max(2, round(rate × n)); per-product kinds hit disjoint products):

| file | kind | rate |
| --- | --- | --- |
| meta 2023 | truncated_json (line cut short) | 0.4 % |
| meta 2023 | not_an_object (extra line: null, list, number, ...) | 0.1 % |
| meta 2023 | duplicate_id (extra later line, same parent_asin) | 1 % |
| meta 2023 | invalid_id (lowercase, wrong length, empty) | 0.6 % |
| meta 2023 | empty_title ("" or spaces) | 0.5 % |
| meta 2023 | empty_categories | 3 % |
| meta 2023 | no_images (images == []) | 0.8 % |
| meta 2023 | html (entities + tags in title, a feature, the description) | 4 % |
| meta 2023 | mojibake (UTF-8 read as cp1252) | 2 % |
| meta 2023 | placeholder_price ("None") | 4 % |
| meta 2023 | odd_price ("$1,299.99", "12.99 - 24.99", ...) | 1 % |
| meta 2023 | long_field (title or description of 20-60 KB) | 0.3 % |
| meta 2023 | non_http_image_url (ftp://, data:, file://, relative) | 0.5 % |
| images | missing_image (404) / corrupt_image (not a JPEG), every rendition of the MAIN image | 1 % each |
| reviews | truncated_json 0.1 %, empty_user_id 0.5 %, duplicate_line 1 %, unknown_product 0.5 % | |
| meta 2018 | truncated_json 0.4 %, duplicate_id 1 %, empty_title 0.5 %, html 4 %, | |
| | placeholder_price ("") 10 %, odd_price 1 %, dangling_also_buy 10 % (also_buy names absent ASINs) | |

Format variants that are not defects, also listed in the truth file: 2023 ``details`` as a JSON string (10 %),
null price (8 %), clean titles with a legitimate "™"; 2018 category names HTML-escaped ("&amp;") throughout.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import shutil
from collections import Counter
from pathlib import Path

from etl.sample.catalog import Product, make_products
from etl.sample.defects import (
    RATES,
    inject_meta_2018,
    inject_meta_2023,
    inject_reviews,
    plan_product_defects,
)
from etl.sample.duplicates import make_near_duplicates
from etl.sample.images import Renderer, variants
from etl.sample.knobs import SampleKnobs, parse_knobs
from etl.sample.purchases import Purchase, User, co_purchase_counts, make_purchases, make_users
from etl.sample.records import (
    also_buy_lists,
    also_view_lists,
    meta_2018,
    meta_2023,
    sales_ranks,
)
from etl.sample.reviews import make_reviews, rating_summary
from etl.sample.taxonomy import LEAVES, category_tree, complements, taxonomy_for

SAMPLE_GENERATOR_VERSION = "1.1.0"  # 1.1: a broken MAIN image is broken in every rendition
MIN_PRODUCTS = 50  # one product per leaf, and room for every defect kind
TRUTH_FILE = "sample_truth.json"
RAW_PATHS = {
    "meta_2023": "amazon_2023/raw/meta_categories/meta_{category}.jsonl.gz",
    "reviews_2023": "amazon_2023/raw/review_categories/{category}.jsonl.gz",
    "meta_2018": "amazon_v2/metaFiles2/meta_{category}.json.gz",
}
_OWNED = ("amazon_2023", "amazon_v2", "images", TRUTH_FILE)  # what a regeneration may replace
_CORRUPT_BODIES = {
    "html_error_page": b"<html><body><h1>503 Service Unavailable</h1></body></html>\n",
    "png_header_garbage": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "text": b"Image not available\n",
}


def plan_catalog(seed: int, n_products: int, knobs: SampleKnobs = SampleKnobs()
                 ) -> tuple[list[Product], list[User], list[Purchase], list[tuple[int, int]]]:
    """Products, users, purchases and near-duplicate (copy, original) pairs: the catalog before any file is written.

    Cheap (no images), so tests and benches can measure a regime's statistics without rendering it.
    """
    if n_products < MIN_PRODUCTS:
        raise ValueError(f"n_products must be at least {MIN_PRODUCTS}, got {n_products}")
    products = make_products(n_products, _rng(seed, "products"))
    duplicates = (make_near_duplicates(products, knobs.near_duplicate_share, _rng(seed, "near-duplicates"))
                  if knobs.near_duplicate_share else [])
    users = make_users(n_products, _rng(seed, "users"), knobs)
    purchases = make_purchases(products, users, _rng(seed, "purchases"), knobs)
    return products, users, purchases, duplicates


def generate_catalog(dest: Path, *, category: str = "Electronics", seed: int = 0, n_products: int = 3000,
                     knobs: SampleKnobs | dict | None = None) -> dict:
    """Write the sample catalog under ``dest`` and return its truth (also written to ``sample_truth.json``).

    ``dest`` must be empty, missing, or hold an earlier sample (whose files are then replaced), so no stale
    image from another seed can be served. ``knobs``: the regime (default: the historical sample).
    """
    category = taxonomy_for(category)
    knobs = parse_knobs(knobs)
    if n_products < MIN_PRODUCTS:
        raise ValueError(f"n_products must be at least {MIN_PRODUCTS}, got {n_products}")
    dest = Path(dest)
    _prepare(dest)

    products, users, purchases, duplicates = plan_catalog(seed, n_products, knobs)
    reviews = make_reviews(purchases, products, users, _rng(seed, "reviews"))
    ratings = rating_summary(reviews, products, _rng(seed, "ratings"))
    asins = {product.asin for product in products}
    plan = plan_product_defects(n_products, _rng(seed, "plan"))

    records_rng = _rng(seed, "records")
    records_2023 = [meta_2023(product, ratings[product.asin], records_rng) for product in products]
    variants_truth = _format_variants(records_2023)
    lines_2023, defects_2023 = inject_meta_2023(records_2023, plan, _rng(seed, "defects-2023"))
    lines_reviews, defects_reviews = inject_reviews(reviews, asins, _rng(seed, "defects-reviews"))

    also_buy = also_buy_lists(products, co_purchase_counts(purchases))
    also_view = also_view_lists(products, _rng(seed, "also-view"))
    ranks = sales_ranks(products)
    order_2018 = sorted(range(n_products), key=lambda i: products[i].asin)  # the 2018 file is sorted differently
    records_2018 = [meta_2018(products[i], also_buy[i], also_view[i], ranks[i]) for i in order_2018]
    lines_2018, defects_2018 = inject_meta_2018(records_2018, asins, _rng(seed, "defects-2018"))

    defects_images, image_counts = _write_images(dest, products, plan, _rng(seed, "images").getrandbits(64))
    lines = {"meta_2023": lines_2023, "reviews_2023": lines_reviews, "meta_2018": lines_2018}
    files = {name: _write_jsonl_gz(dest, RAW_PATHS[name].format(category=category), lines[name]) for name in lines}

    reviews_per_user = Counter(review["user_id"] for review in reviews)
    leaf_sizes = Counter(product.leaf.name for product in products)
    truth = {
        "generator_version": SAMPLE_GENERATOR_VERSION,
        "category": category,
        "seed": seed,
        "n_products": n_products,
        **({"knobs": knobs.changed(),
            "near_duplicates": [{"asin": products[c].asin, "of": products[o].asin} for c, o in duplicates]}
           if knobs.changed() else {}),
        "line_numbers": "1-based",
        "files": files,
        "counts": {
            "products": n_products, "users": len(users), "reviews": len(reviews), "purchases": len(purchases),
            **image_counts,
        },
        "category_tree": category_tree(),
        "leaves": [{"name": leaf.name, "path": [category, *leaf.path], "group": leaf.group,
                    "products": leaf_sizes[leaf.name], "rare": leaf.rare} for leaf in LEAVES],
        "complementary_leaves": complements(),
        "power_users": [{"user_id": user.user_id, "reviews": reviews_per_user[user.user_id],
                         "groups": list(user.groups)} for user in users if user.power],
        "format_variants": variants_truth,
        "defects": {"meta_2023": defects_2023, "reviews_2023": defects_reviews, "meta_2018": defects_2018,
                    "images": defects_images},
        "products": {product.asin: {"leaf": product.leaf.name, "group": product.leaf.group, "brand": product.brand,
                                    "colour": product.colour, "style": product.style} for product in products},
    }
    (dest / TRUTH_FILE).write_text(json.dumps(truth, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return truth


def _rng(seed: int, part: str) -> random.Random:
    """An independent stream per part, so changing one part does not reshuffle the others."""
    return random.Random(f"slip-sample:{seed}:{part}")


def _prepare(dest: Path) -> None:
    if dest.exists() and any(dest.iterdir()):
        if not (dest / TRUTH_FILE).is_file():
            raise ValueError(f"{dest} is not empty and holds no earlier sample ({TRUTH_FILE}); refusing to write")
        for name in _OWNED:
            target = dest / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    dest.mkdir(parents=True, exist_ok=True)


def _format_variants(records: list[dict]) -> dict:
    details_str = [r["parent_asin"] for r in records if isinstance(r["details"], str)]
    null_price = [r["parent_asin"] for r in records if r["price"] is None]
    no_hi_res = sum(1 for r in records if r["images"][0]["hi_res"] is None)
    return {
        "details_as_json_string_2023": {"count": len(details_str), "asins": details_str},
        "null_price_2023": {"count": len(null_price), "asins": null_price},
        "main_image_without_hi_res_2023": {"count": no_hi_res},
        "html_escaped_categories_2018": True,
    }


def _write_images(dest: Path, products: list[Product], plan: dict[int, str], noise_seed: int) -> tuple[dict, dict]:
    """Render and write every image file the metadata names, except the planned broken ones."""
    renderer = Renderer(noise_seed)
    broken = {position: kind for position, kind in plan.items() if kind in RATES["images"]}
    truth: dict = {kind: {"rate": rate, "count": 0, "items": []} for kind, rate in RATES["images"].items()}
    folder = dest / "images" / "I"
    folder.mkdir(parents=True, exist_ok=True)
    n_files = n_bytes = 0
    for position, product in enumerate(products):
        for image in product.images:
            written: dict[bytes, Path] = {}
            kind = broken.get(position) if image.variant == "MAIN" else None
            sizes = variants(renderer.render(image.look), image.has_hi_res)
            if kind is not None:  # gone (or broken) in every rendition, so whichever one a consumer picks fails
                subtype = kind_subtype(position)
                item = {"asin": product.asin, "url": image.url(image.best_size), "path": image.path(image.best_size),
                        "urls": [image.url(size) for size in sizes]}
                truth[kind]["items"].append(item if kind == "missing_image" else {**item, "subtype": subtype})
            for size, data in sizes.items():
                if kind is not None:
                    if kind == "missing_image":
                        continue
                    data = _CORRUPT_BODIES[kind_subtype(position)]
                _write_or_link(dest / image.path(size), data, written.get(data))
                written[data] = dest / image.path(size)
                n_files += 1
                n_bytes += len(data)
    for entry in truth.values():
        entry["count"] = len(entry["items"])
    return truth, {"image_files": n_files, "image_bytes": n_bytes}


def kind_subtype(position: int) -> str:
    """The corrupt-body kind of the product at `position` (one per product, the same in every rendition)."""
    return sorted(_CORRUPT_BODIES)[position % len(_CORRUPT_BODIES)]


def _write_or_link(path: Path, data: bytes, same_bytes_at: Path | None) -> None:
    """Write ``data``, or hard-link the file that already holds it (large and hi_res share bytes): saves disk."""
    if same_bytes_at is not None:
        try:
            path.hardlink_to(same_bytes_at)
            return
        except OSError:  # file systems without hard links
            pass
    path.write_bytes(data)


def _write_jsonl_gz(dest: Path, relative: str, lines: list[str]) -> dict:
    """One line per record, gzip with mtime 0 and no file name, so the bytes depend on the content only."""
    data = gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), compresslevel=6, mtime=0)
    path = dest / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"path": relative, "lines": len(lines), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
