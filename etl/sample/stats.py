"""What a generated catalog's graph looks like: the statistics the regime knobs claim to move.

The graph here is the one the `edges` stage builds from 2023 reviews: two products are linked when at least
``min_shared`` users bought both. Users with more than ``max_user_products`` purchases (the power users) are left
out instead of subsampled as the stage does, so the statistics need no seed of their own.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path

from etl.sample.catalog import Product
from etl.sample.purchases import Purchase


def co_review_edges(purchases: list[Purchase], min_shared: int = 2, max_user_products: int = 100
                    ) -> dict[tuple[int, int], int]:
    """(lo, hi) product pairs → number of users who bought both, for pairs with at least ``min_shared``."""
    by_user: dict[int, set[int]] = defaultdict(set)
    for purchase in purchases:
        by_user[purchase.user].add(purchase.product)
    counts: Counter = Counter()
    for bought in by_user.values():
        if len(bought) <= max_user_products:
            counts.update(itertools.combinations(sorted(bought), 2))
    return {pair: n for pair, n in counts.items() if n >= min_shared}


def graph_stats(products: list[Product], purchases: list[Purchase], min_shared: int = 2) -> dict[str, float]:
    """Edges per node and the shares of edges within a brand, across leaves and within a group."""
    edges = co_review_edges(purchases, min_shared)
    n_edges = len(edges)

    def share(same) -> float:
        return sum(1 for a, b in edges if same(products[a], products[b])) / n_edges if n_edges else 0.0

    return {
        "nodes": len(products),
        "edges": n_edges,
        "edges_per_node": n_edges / len(products),
        "within_brand_share": share(lambda a, b: a.brand == b.brand),
        "cross_leaf_share": share(lambda a, b: a.leaf_index != b.leaf_index),
        "within_group_share": share(lambda a, b: a.leaf.group == b.leaf.group),
    }


def shared_image_share(dest: Path, category: str = "Electronics") -> float:
    """Share of products whose main image file (the URL the metadata prefers) has bytes another product's has.

    Read from the written catalog: metadata lines and image files, as a consumer hashing images would see them.
    """
    meta = dest / f"amazon_2023/raw/meta_categories/meta_{category}.jsonl.gz"
    digests: dict[str, str] = {}
    for line in gzip.decompress(meta.read_bytes()).decode("utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # planted truncated lines
        if not isinstance(record, dict) or not record.get("images"):
            continue
        url = record["images"][0].get("hi_res") or record["images"][0].get("large") or ""
        path = dest / url.split("://", 1)[-1].split("/", 1)[-1] if "://" in url else None
        if path is not None and path.is_file():
            digests[str(record.get("parent_asin"))] = hashlib.sha256(path.read_bytes()).hexdigest()
    counts = Counter(digests.values())
    return sum(1 for d in digests.values() if counts[d] > 1) / len(digests) if digests else 0.0
