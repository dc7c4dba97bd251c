"""Near-identical products (knob ``near_duplicate_share``): the hard negatives of instance-level retrieval.

Real catalogues list the same item several times (resellers, bundles, a new model number for the same thing): the
listings share a photo and differ in a word of the title. Such a copy keeps its ASIN, image ids (so URLs stay
unique), price, popularity and purchase history of its own, but takes its original's brand, colour, style, text and
main-image look, so its main image files have the original's exact bytes and its title differs only in the model
number.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict

from etl.sample.catalog import Product


def make_near_duplicates(products: list[Product], share: float, rng: random.Random) -> list[tuple[int, int]]:
    """Turn ``round(share × n)`` products into near-copies of another product of their leaf, in place.

    Returns the (copy, original) positions. Originals are never copies themselves; leaves with one product have
    no copies.
    """
    by_leaf: dict[int, list[int]] = defaultdict(list)
    for position, product in enumerate(products):
        by_leaf[product.leaf_index].append(position)
    eligible = sorted(p for members in by_leaf.values() if len(members) > 1 for p in members)
    n_copies = min(round(share * len(products)), len(eligible) // 2)
    copies = set(rng.sample(eligible, n_copies))
    pairs = []
    for copy in sorted(copies):
        originals = [p for p in by_leaf[products[copy].leaf_index] if p not in copies]
        if not originals:
            continue
        original = rng.choice(originals)
        _copy_onto(products[copy], products[original], rng)
        pairs.append((copy, original))
    return pairs


def _copy_onto(copy: Product, original: Product, rng: random.Random) -> None:
    model = f"{original.model}-{rng.choice('ABCDEFGHJK')}{rng.randint(1, 9)}"
    title = original.title.replace(original.model, model)
    if title == original.title:  # this title template has no model number: add one
        title = f"{original.title}, {model}"
    copy.brand, copy.colour, copy.style, copy.model, copy.title = (original.brand, original.colour, original.style,
                                                                   model, title)
    copy.features, copy.description = list(original.features), list(original.description)
    main = original.images[0]
    copy.images[0] = dataclasses.replace(copy.images[0], look=main.look)
