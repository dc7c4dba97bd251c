"""Who buys what, and together with what: the structure behind the reviews and the co-purchase graphs.

- Regular users have 1-3 interest groups, often a preferred brand and style, and a heavy-tailed number of
  baskets (mostly 1-3). A basket starts with an *anchor* product from an interest group (or, for noise, from any
  group) and often adds products from complementary leaves (``taxonomy.KITS``: camera ↔ memory card ↔ tripod,
  laptop ↔ bag ↔ mouse, ...). Complements prefer the anchor's brand, then its style, so co-purchased products
  share brand/style more than their categories alone would explain.
- A few power users buy hundreds of products across many groups with more noise (the hubs a graph stage must
  cope with).
- Items of a basket are reviewed within two days of each other; baskets of a user are weeks apart.

The regime knobs (``etl.sample.knobs``) set brand loyalty, focus, substitutes, density and noise; their defaults
are the constants below.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

from etl.sample.catalog import Product, fresh_id
from etl.sample.knobs import SampleKnobs
from etl.sample.taxonomy import GROUPS, LEAVES, STYLES, complements

USERS_PER_PRODUCT = 4.0  # knob users_per_product
PRODUCTS_PER_POWER_USER = 600  # one power user per this many products (at least MIN_POWER_USERS)
MIN_POWER_USERS = 3
POWER_BASKETS = (120, 260)
NOISE_SHARE = {"regular": 0.08, "power": 0.3}  # anchors from any group instead of the user's (knob noise_share)
COMPLEMENT_P = (0.6, 0.35)  # chance of a first, then a second complementary item in a basket
PREFERRED_BRAND_P = 0.6  # an anchor comes from the user's preferred brand when that leaf has it (brand_loyalty)
SAME_BRAND_P = 0.55  # a complement comes from the anchor's brand when that leaf has it (× brand_loyalty / 0.6) ...
SAME_STYLE_P = 0.35  # ... else from the anchor's style
INTEREST_GROUPS = (1, 2, 3)
INTEREST_GROUP_WEIGHTS = (0.5, 0.35, 0.15)  # regular users' number of interest groups (knob category_focus = 1st)
START_MS = 1388534400000  # 2014-01-01
END_MS = 1693526400000  # 2023-09-01
DAY_MS = 86_400_000
_USER_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


@dataclass(frozen=True)
class User:
    user_id: str
    groups: tuple[str, ...]
    brand: str | None
    style: str | None
    power: bool


@dataclass(frozen=True)
class Purchase:
    user: int  # index into the user list
    product: int  # index into the product list
    basket: int
    timestamp_ms: int


class _WeightedIndex:
    """Weighted choice among products grouped by a key (leaf, leaf+brand, leaf+style), O(log n) per draw."""

    def __init__(self, products: list[Product], key) -> None:
        members: dict = defaultdict(list)
        for index, product in enumerate(products):
            members[key(product)].append(index)
        self._items = dict(members)
        self._cum = {k: list(itertools.accumulate(products[i].popularity for i in items))
                     for k, items in self._items.items()}

    def pick(self, key, rng: random.Random) -> int | None:
        items = self._items.get(key)
        if not items:
            return None
        return rng.choices(items, cum_weights=self._cum[key])[0]


def make_users(n_products: int, rng: random.Random, knobs: SampleKnobs = SampleKnobs()) -> list[User]:
    """Regular users (``knobs.users_per_product`` per product) followed by the power users."""
    group_names = [group.name for group in GROUPS]
    group_weights = [sum(max(leaf.weight, 0.3) for leaf in LEAVES if leaf.group == g) for g in group_names]
    brands = {group.name: group.brands for group in GROUPS}
    taken: set[str] = set()
    users = []
    n_power = max(MIN_POWER_USERS, round(n_products / PRODUCTS_PER_POWER_USER))
    n_regular = round(n_products * knobs.users_per_product)
    focus = knobs.category_focus  # at the default 0.5 these are exactly INTEREST_GROUP_WEIGHTS
    group_count_weights = (focus, (1 - focus) * 0.7, (1 - focus) * 0.3)
    for position in range(n_regular + n_power):
        power = position >= n_regular
        n_groups = rng.randint(4, 8) if power else rng.choices(INTEREST_GROUPS, weights=group_count_weights)[0]
        groups = _sample_weighted(group_names, group_weights, n_groups, rng)
        brand = rng.choice(brands[groups[0]]) if rng.random() < 0.7 else None
        style = rng.choice([name for name, _, _ in STYLES]) if rng.random() < 0.5 else None
        users.append(User(_new_user_id(rng, taken), tuple(groups), brand, style, power))
    return users


def make_purchases(products: list[Product], users: list[User], rng: random.Random,
                   knobs: SampleKnobs = SampleKnobs()) -> list[Purchase]:
    """All purchases, user by user; a user never buys the same product twice."""
    by_leaf = _WeightedIndex(products, lambda p: p.leaf_index)
    by_brand = _WeightedIndex(products, lambda p: (p.leaf_index, p.brand))
    by_style = _WeightedIndex(products, lambda p: (p.leaf_index, p.style))
    leaf_index = {leaf.name: i for i, leaf in enumerate(LEAVES)}
    partners = {leaf_index[name]: [leaf_index[o] for o in others] for name, others in complements().items()}
    leaves_of_group = {g.name: [i for i, leaf in enumerate(LEAVES) if leaf.group == g.name] for g in GROUPS}
    all_leaves = list(range(len(LEAVES)))
    leaf_weight = [max(leaf.weight, 0.3) for leaf in LEAVES]
    same_brand = min(1.0, SAME_BRAND_P * (knobs.brand_loyalty / PREFERRED_BRAND_P))  # 0.55 at the default

    purchases: list[Purchase] = []
    basket_id = 0
    for user_index, user in enumerate(users):
        bought: set[int] = set()
        n_baskets = rng.randint(*POWER_BASKETS) if user.power else min(40, int(rng.paretovariate(1.6)))
        time_ms = rng.randrange(START_MS, END_MS - 400 * DAY_MS)
        noise = NOISE_SHARE["power"] if user.power else knobs.noise_share
        for _ in range(n_baskets):
            candidates = all_leaves if rng.random() < noise else leaves_of_group[rng.choice(user.groups)]
            anchor_leaf = rng.choices(candidates, weights=[leaf_weight[i] for i in candidates])[0]
            anchor = None
            if user.brand and rng.random() < knobs.brand_loyalty:
                anchor = by_brand.pick((anchor_leaf, user.brand), rng)
            if anchor is None:
                anchor = by_leaf.pick(anchor_leaf, rng)
            basket = [anchor]
            for chance in COMPLEMENT_P:
                if rng.random() >= chance:
                    break
                if knobs.substitute_share and rng.random() < knobs.substitute_share:  # no draw at the default 0
                    basket.append(by_leaf.pick(anchor_leaf, rng))
                    continue
                basket.append(_complement(products[anchor], partners[anchor_leaf], by_leaf, by_brand, by_style,
                                          same_brand, rng))
            for product in basket:
                if product is not None and product not in bought:
                    bought.add(product)
                    purchases.append(Purchase(user_index, product, basket_id, time_ms + rng.randrange(2 * DAY_MS)))
            basket_id += 1
            gap_days = rng.expovariate(1 / 4) if user.power else rng.expovariate(1 / 60)
            time_ms = min(END_MS - 2 * DAY_MS, time_ms + int(gap_days * DAY_MS) + DAY_MS)
    return purchases


def _complement(anchor: Product, partner_leaves: list[int], by_leaf: _WeightedIndex, by_brand: _WeightedIndex,
                by_style: _WeightedIndex, same_brand: float, rng: random.Random) -> int | None:
    leaf = rng.choice(partner_leaves)
    draw = rng.random()
    picked = None
    if draw < same_brand:
        picked = by_brand.pick((leaf, anchor.brand), rng)
    elif draw < same_brand + SAME_STYLE_P:
        picked = by_style.pick((leaf, anchor.style), rng)
    return picked if picked is not None else by_leaf.pick(leaf, rng)


def co_purchase_counts(purchases: list[Purchase]) -> dict[int, Counter]:
    """Product → Counter of products bought in the same basket (symmetric)."""
    baskets: dict[int, list[int]] = defaultdict(list)
    for purchase in purchases:
        baskets[purchase.basket].append(purchase.product)
    counts: dict[int, Counter] = defaultdict(Counter)
    for items in baskets.values():
        for a, b in itertools.permutations(items, 2):
            counts[a][b] += 1
    return counts


def _sample_weighted(items: list[str], weights: list[float], k: int, rng: random.Random) -> list[str]:
    """``k`` distinct items drawn with probability proportional to weight."""
    pool, pool_weights, chosen = list(items), list(weights), []
    for _ in range(min(k, len(pool))):
        index = rng.choices(range(len(pool)), weights=pool_weights)[0]
        chosen.append(pool.pop(index))
        pool_weights.pop(index)
    return chosen


def _new_user_id(rng: random.Random, taken: set[str]) -> str:
    """A 28-character id shaped like the 2023 dump's (``AGBFYI2DDIKXC5Y4FARTYDTQBMFQ``)."""
    return fresh_id(rng, taken, "A", _USER_ALPHABET, 27)
