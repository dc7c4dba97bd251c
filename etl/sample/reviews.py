"""Review records (2023 format) for purchases: rating from the product's quality, text about the product.

Text mentions the product's noun, brand, colour and a feature, with sentiment matching the rating; a few
reviews are long. ``asin`` is the parent ASIN except for products sold in variants (a child ASIN then).
"""

from __future__ import annotations

import random
import statistics

from etl.sample.catalog import Product, new_asin
from etl.sample.purchases import Purchase, User

VERIFIED_SHARE = 0.92
CHILD_ASIN_SHARE = 0.15  # products whose reviews name a variant (child) ASIN
LONG_REVIEW_SHARE = 0.03
_OPENERS = {
    1: ("Very disappointed.", "Stopped working after a week.", "Would not buy again."),
    2: ("Not great.", "Expected more for the price.", "Mediocre at best."),
    3: ("It's okay.", "Does the job, nothing special.", "Mixed feelings."),
    4: ("Pretty good.", "Solid purchase.", "Happy with it overall."),
    5: ("Love it!", "Excellent product.", "Exactly what I needed."),
}
_TITLES = {1: "Broke quickly", 2: "Meh", 3: "Average", 4: "Good value", 5: "Five stars"}
_BODY = (
    "The {noun} from {brand} arrived quickly and the {colour} color looks like the photos.",
    "I mostly bought it for the {feature}.",
    "Setup took a few minutes.",
    "Build quality feels {quality_word} for a {noun}.",
    "{brand} support answered my question within a day.",
    "It pairs well with the rest of my gear.",
    "The {feature} works as advertised.",
)


def make_reviews(purchases: list[Purchase], products: list[Product], users: list[User],
                 rng: random.Random) -> list[dict]:
    """One review per purchase, in the order the dump lists them (shuffled, not grouped by user)."""
    taken = {product.asin for product in products}
    child = {i: new_asin(rng, taken) for i in range(len(products)) if rng.random() < CHILD_ASIN_SHARE}
    reviews = [_review(p, products[p.product], users[p.user], child.get(p.product), rng) for p in purchases]
    rng.shuffle(reviews)
    return reviews


def _review(purchase: Purchase, product: Product, user: User, child_asin: str | None,
            rng: random.Random) -> dict:
    rating = min(5, max(1, round(rng.gauss(product.quality, 0.9))))
    values = {
        "noun": product.leaf.noun.lower(), "brand": product.brand, "colour": product.colour.lower(),
        "feature": rng.choice(product.features).lower() if product.features else "design",
        "quality_word": ("flimsy", "cheap", "fine", "solid", "premium")[rating - 1],
    }
    n_sentences = rng.randint(8, 20) if rng.random() < LONG_REVIEW_SHARE else rng.randint(1, 4)
    body = rng.sample(_BODY, k=min(n_sentences, len(_BODY))) + rng.choices(_BODY, k=max(0, n_sentences - len(_BODY)))
    sentences = [rng.choice(_OPENERS[rating])] + [sentence.format(**values) for sentence in body]
    return {
        "rating": float(rating),
        "title": _TITLES[rating],
        "text": " ".join(sentences),
        "images": [],
        "asin": child_asin or product.asin,
        "parent_asin": product.asin,
        "user_id": user.user_id,
        "timestamp": purchase.timestamp_ms,
        "helpful_vote": min(500, int(rng.paretovariate(1.3)) - 1),
        "verified_purchase": rng.random() < VERIFIED_SHARE,
    }


def rating_summary(reviews: list[dict], products: list[Product], rng: random.Random) -> dict[str, tuple]:
    """Parent ASIN → (average_rating, rating_number) as the metadata states them.

    rating_number counts star-only ratings too, so it is at least the number of reviews.
    """
    stars: dict[str, list[float]] = {}
    for review in reviews:
        stars.setdefault(review["parent_asin"], []).append(review["rating"])
    summary = {}
    for product in products:
        given = stars.get(product.asin, [])
        average = statistics.fmean(given) if given else product.quality
        summary[product.asin] = (round(average, 1), len(given) + int(len(given) * rng.uniform(0, 2)))
    return summary
