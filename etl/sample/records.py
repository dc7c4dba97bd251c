"""Clean products → JSON records in the two dump formats (Amazon Reviews 2023 metadata, 2018 metaFiles2)."""

from __future__ import annotations

import html
import json
import math
import random
from collections import Counter, defaultdict

from etl.sample.catalog import Product
from etl.sample.taxonomy import GROUPS, ROOT

DETAILS_AS_STRING_SHARE = 0.1  # the 2023 dump stores `details` as a JSON string in some lines
VIDEO_SHARE = 0.08
ALSO_BUY_MAX = 12
ALSO_VIEW_MAX = 8
_MAIN_CATEGORY = {group.name: group.main_category for group in GROUPS}


def meta_2023(product: Product, rating: tuple[float, int], rng: random.Random) -> dict:
    """The product as one line of ``meta_<Category>.jsonl`` (2023), keys in the dump's order."""
    details = {
        "Brand": product.brand, "Color": product.colour, "Item model number": product.model,
        "Item Weight": f"{product.weight_oz} ounces", "Date First Available": product.first_available,
    }
    videos = []
    if rng.random() < VIDEO_SHARE:
        videos.append({"title": f"{product.brand} {product.leaf.noun} review",
                       "url": f"https://www.amazon.com/vdp/{rng.getrandbits(128):032x}", "user_id": ""})
    return {
        "main_category": _MAIN_CATEGORY[product.leaf.group],
        "title": product.title,
        "average_rating": rating[0],
        "rating_number": rating[1],
        "features": list(product.features),
        "description": list(product.description),
        "price": product.price,
        "images": [
            {"thumb": image.url("thumb"), "large": image.url("large"), "variant": image.variant,
             "hi_res": image.url("hi_res") if image.has_hi_res else None}
            for image in product.images
        ],
        "videos": videos,
        "store": product.brand,
        "categories": [ROOT, *product.leaf.path],
        "details": json.dumps(details) if rng.random() < DETAILS_AS_STRING_SHARE else details,
        "parent_asin": product.asin,
        "bought_together": None,
    }


def meta_2018(product: Product, also_buy: list[str], also_view: list[str], rank: int) -> dict:
    """The product as one line of ``metaFiles2/meta_<Category>.json`` (2018), keys in the dump's order.

    As in the real file, category names are HTML-escaped (``Camera &amp; Photo``) and the price is a string.
    """
    return {
        "category": [html.escape(name) for name in (ROOT, *product.leaf.path)],
        "tech1": "",
        "description": list(product.description),
        "fit": "",
        "title": product.title,
        "also_buy": list(also_buy),
        "tech2": "",
        "brand": product.brand,
        "feature": list(product.features),
        "rank": f">#{rank:,} in Electronics (See Top 100 in Electronics)",
        "also_view": list(also_view),
        "main_cat": html.escape(_MAIN_CATEGORY[product.leaf.group]),
        "similar_item": "",
        "date": product.first_available,
        "price": f"${_price_2018(product):,.2f}",
        "asin": product.asin,
        "imageURL": [image.url("thumb") for image in product.images],
        "imageURLHighRes": [image.url(image.best_size) for image in product.images],
        "details": {"Item Weight:": f"{product.weight_oz} ounces", "Item model number:": product.model},
    }


def also_buy_lists(products: list[Product], co_purchases: dict[int, Counter]) -> list[list[str]]:
    """Per product: the products most often in the same basket (most first, ties by ASIN)."""
    lists = []
    for index in range(len(products)):
        ranked = sorted(co_purchases.get(index, Counter()).items(), key=lambda kv: (-kv[1], products[kv[0]].asin))
        lists.append([products[other].asin for other, _ in ranked[:ALSO_BUY_MAX]])
    return lists


def also_view_lists(products: list[Product], rng: random.Random) -> list[list[str]]:
    """Per product: substitutes viewed instead of it: same-leaf products, same brand first, nearest price first."""
    near_same_brand = _nearest_by_price(products, lambda p: (p.leaf_index, p.brand))
    near_same_leaf = _nearest_by_price(products, lambda p: p.leaf_index)
    lists = []
    for index in range(len(products)):
        chosen = near_same_brand[index] + [o for o in near_same_leaf[index] if o not in near_same_brand[index]]
        lists.append([products[o].asin for o in chosen[: rng.randint(0, ALSO_VIEW_MAX)]])
    return lists


def _nearest_by_price(products: list[Product], key) -> list[list[int]]:
    """Per product: up to ALSO_VIEW_MAX other products with the same key, nearest in (log) price first."""
    members: dict = defaultdict(list)
    for index, product in enumerate(products):
        members[key(product)].append(index)
    nearest: list[list[int]] = [[] for _ in products]
    for group in members.values():
        group.sort(key=lambda i: (_log_price(products[i]), products[i].asin))
        for rank, index in enumerate(group):
            window = group[max(0, rank - ALSO_VIEW_MAX): rank] + group[rank + 1: rank + 1 + ALSO_VIEW_MAX]
            here = _log_price(products[index])
            window.sort(key=lambda o: (abs(_log_price(products[o]) - here), products[o].asin))
            nearest[index] = window[:ALSO_VIEW_MAX]
    return nearest


def sales_ranks(products: list[Product]) -> list[int]:
    """A best-seller rank per product: more popular products rank higher (smaller number)."""
    order = sorted(range(len(products)), key=lambda i: (-products[i].popularity, products[i].asin))
    ranks = [0] * len(products)
    for position, index in enumerate(order):
        ranks[index] = 1_000 + position * 997
    return ranks


def _price_2018(product: Product) -> float:
    """Products without a 2023 price had one in 2018 (the leaf's median), so "" only comes from the defect."""
    return product.price if product.price is not None else product.leaf.price - 0.01


def _log_price(product: Product) -> float:
    return math.log(product.price if product.price is not None else product.leaf.price)
