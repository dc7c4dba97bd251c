"""Clean sample products: leaf, brand, colour, style, text, price and image plan of each.

Text is built from the leaf's vocabulary, the group's vocabulary, the brand, the colour, the style and a model
number, so a product's title and features identify its category and its attributes. Defects are added later
(``etl.sample.defects``); everything here is well formed.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from etl.sample.images import TILE, Look, brand_colour
from etl.sample.taxonomy import (
    COLOURS,
    GENERIC_FEATURES,
    GROUPS,
    LEAVES,
    STYLES,
    Leaf,
    fill_alternatives,
)

IMAGE_HOST = "https://m.media-amazon.com"
SUFFIXES = {"thumb": "._AC_US40_.jpg", "large": "._AC_.jpg", "hi_res": "._AC_SL1500_.jpg"}
RARE_LEAF_SIZES = (3, 8)  # inclusive range of products in a rare leaf
HI_RES_SHARE = {"MAIN": 0.65, "PT": 0.3}  # how often an image has a hi_res URL (else null, as in the dump)
EXTRA_IMAGES = ((0, 0.6), (1, 0.28), (2, 0.12))  # (number of PT images, probability)
NULL_PRICE_SHARE = 0.08  # the real dump has many products without a price: not a defect
LEGIT_NON_ASCII_SHARE = 0.04  # clean titles with a ™ after the brand, so non-ASCII alone never means mojibake
_ID_ALPHABET = string.ascii_uppercase + string.digits
_IMAGE_ID_ALPHABET = string.ascii_letters + string.digits
_GROUPS = {group.name: group for group in GROUPS}
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
                    "October", "November", "December")


@dataclass
class ProductImage:
    """One image of a product as the 2023 metadata lists it; ``look`` says how to draw it."""

    image_id: str
    variant: str  # MAIN, PT01, PT02, ...
    has_hi_res: bool
    look: Look

    def url(self, size: str) -> str:
        return f"{IMAGE_HOST}/{self.path(size)}"

    def path(self, size: str) -> str:
        """Path of the file under the sample root; identical to the URL's path."""
        return f"images/I/{self.image_id}{SUFFIXES[size]}"

    @property
    def best_size(self) -> str:
        """The size a consumer prefers (hi_res > large), i.e. the one whose file the picked URL names."""
        return "hi_res" if self.has_hi_res else "large"


@dataclass
class Product:
    asin: str
    leaf_index: int
    brand: str
    colour: str
    style: str
    model: str
    title: str
    features: list[str]
    description: list[str]
    price: float | None
    quality: float  # mean star rating buyers give it
    popularity: float  # relative purchase weight inside its leaf
    first_available: str
    weight_oz: float
    images: list[ProductImage] = field(default_factory=list)

    @property
    def leaf(self) -> Leaf:
        return LEAVES[self.leaf_index]


def fresh_id(rng: random.Random, taken: set[str], prefix: str, alphabet: str, length: int) -> str:
    """`prefix` + `length` random characters of `alphabet`, not in ``taken`` (which it extends)."""
    while True:
        new = prefix + "".join(rng.choices(alphabet, k=length))
        if new not in taken:
            taken.add(new)
            return new


def new_asin(rng: random.Random, taken: set[str]) -> str:
    """A fresh ``B0`` + 8 character ASIN."""
    return fresh_id(rng, taken, "B0", _ID_ALPHABET, 8)


def allocate_leaf_counts(n_products: int, rng: random.Random) -> list[int]:
    """Products per leaf: rare leaves get 3-8, the rest share the remainder by weight × jitter (≥ 1 each).

    A catalog too small for that gives rare leaves one product each; below one product per leaf it is refused.
    """
    counts = [rng.randint(*RARE_LEAF_SIZES) if leaf.rare else 0 for leaf in LEAVES]
    common = [i for i, leaf in enumerate(LEAVES) if not leaf.rare]
    if n_products - sum(counts) < len(common):
        counts = [1 if leaf.rare else 0 for leaf in LEAVES]
    remaining = n_products - sum(counts)
    if remaining < len(common):
        raise ValueError(f"n_products={n_products} is too small for {len(LEAVES)} leaf categories")
    weights = {i: LEAVES[i].weight * rng.lognormvariate(0, 0.5) for i in common}
    total = sum(weights.values())
    shares = {i: 1 + (remaining - len(common)) * w / total for i, w in weights.items()}
    for i in common:
        counts[i] = int(shares[i])
    # largest remainder, so the counts add up exactly
    for i in sorted(common, key=lambda i: shares[i] - int(shares[i]), reverse=True)[: n_products - sum(counts)]:
        counts[i] += 1
    return counts


def make_products(n_products: int, rng: random.Random) -> list[Product]:
    """``n_products`` clean products in file order (shuffled, so leaves are interleaved as in the dump)."""
    counts = allocate_leaf_counts(n_products, rng)
    taken_asins: set[str] = set()
    taken_images: set[str] = set()
    products = [
        _make_product(leaf_index, rng, taken_asins, taken_images)
        for leaf_index, count in enumerate(counts)
        for _ in range(count)
    ]
    rng.shuffle(products)
    return products


def _make_product(leaf_index: int, rng: random.Random, taken_asins: set[str], taken_images: set[str]) -> Product:
    leaf = LEAVES[leaf_index]
    group = _GROUPS[leaf.group]
    brand = _pick_brand(group.brands, rng)
    colour, _ = rng.choice(COLOURS)
    style, style_phrase, _ = rng.choice(STYLES)
    model = f"{brand[:2].upper()}-{rng.randint(100, 9999)}{rng.choice(['', '', 'X', 'S', 'Pro'])}"
    terms = [fill_alternatives(term, rng) for term in rng.sample(leaf.terms, k=min(len(leaf.terms), 4))]
    product = Product(
        asin=new_asin(rng, taken_asins),
        leaf_index=leaf_index,
        brand=brand,
        colour=colour,
        style=style,
        model=model,
        title=_title(leaf, brand, colour, style_phrase, model, terms, rng),
        features=_features(group.terms, terms, style_phrase, colour, rng),
        description=_description(leaf, brand, model, group.terms, rng),
        price=None if rng.random() < NULL_PRICE_SHARE else _price(leaf.price, rng),
        quality=min(4.9, max(2.2, rng.gauss(4.1, 0.45))),
        popularity=rng.lognormvariate(0, 1.1),
        first_available=_date(rng),
        weight_oz=round(rng.uniform(0.5, 80), 1),
    )
    product.images = _images(product, group.shape, rng, taken_images)
    return product


def _pick_brand(brands: tuple[str, ...], rng: random.Random) -> str:
    """Brand shares are skewed (the first brands of a group sell most), as in real catalogues."""
    return rng.choices(brands, weights=[1 / (rank + 1) for rank in range(len(brands))])[0]


def _title(leaf: Leaf, brand: str, colour: str, style_phrase: str, model: str, terms: list[str],
           rng: random.Random) -> str:
    shown_brand = f"{brand}™" if rng.random() < LEGIT_NON_ASCII_SHARE else brand
    template = rng.randrange(3)
    if template == 0:
        return f"{shown_brand} {leaf.noun} {model}, {terms[0]}, {terms[1]}, {style_phrase}, {colour}"
    if template == 1:
        return f"{shown_brand} {style_phrase} {leaf.noun} with {terms[0]} - {colour}"
    return f"{leaf.noun} by {shown_brand}, {terms[0]} and {terms[1]} ({colour}, {model}, {style_phrase})"


def _features(group_terms: tuple[str, ...], terms: list[str], style_phrase: str, colour: str,
              rng: random.Random) -> list[str]:
    bullets = [term[0].upper() + term[1:] for term in terms]
    bullets.append(f"{rng.choice(group_terms).capitalize()} you can rely on every day")
    bullets.append(f"{style_phrase} finish in {colour}")
    bullets.append(fill_alternatives(rng.choice(GENERIC_FEATURES), rng).capitalize())
    rng.shuffle(bullets)
    return bullets[: rng.randint(3, len(bullets))]


def _description(leaf: Leaf, brand: str, model: str, group_terms: tuple[str, ...],
                 rng: random.Random) -> list[str]:
    """0-2 paragraphs; some contain '&' and quotes on purpose, so HTML escaping of them is reversible."""
    paragraphs = [
        f'The {brand} "{model}" {leaf.noun.lower()} brings {rng.choice(group_terms)} to work & play.',
        f"Designed by {brand} for everyday use: {fill_alternatives(rng.choice(leaf.terms), rng)}"
        f" and {rng.choice(group_terms)}.",
    ]
    return paragraphs[: rng.choices((0, 1, 2), weights=(0.2, 0.6, 0.2))[0]]


def _price(median: float, rng: random.Random) -> float:
    return max(4.99, round(median * rng.lognormvariate(0, 0.35)) - 0.01)


def _date(rng: random.Random) -> str:
    return f"{rng.choice(_MONTHS)} {rng.randint(1, 28)}, {rng.randint(2012, 2022)}"


def _images(product: Product, shape: str, rng: random.Random, taken: set[str]) -> list[ProductImage]:
    n_extra = rng.choices([n for n, _ in EXTRA_IMAGES], weights=[p for _, p in EXTRA_IMAGES])[0]
    colour_rgb = dict(COLOURS)[product.colour]
    pattern = next(p for name, _, p in STYLES if name == product.style)
    images = []
    for position in range(1 + n_extra):
        variant = "MAIN" if position == 0 else f"PT{position:02d}"
        width = rng.choice((320, 352, 384, 400))
        height = width if rng.random() < 0.85 else rng.choice((320, 352, 384, 400))
        look = Look(
            leaf_index=product.leaf_index, shape=shape, colour=colour_rgb, pattern=pattern,
            brand_colour=brand_colour(product.brand), brand_initial=product.brand[0],
            width=width, height=height,
            crop_x=rng.randrange(TILE - width + 1), crop_y=rng.randrange(TILE - height + 1),
            body_x=rng.randrange(TILE - width + 1), body_y=rng.randrange(TILE - height + 1),
            center_x=rng.uniform(0.42, 0.58), center_y=rng.uniform(0.45, 0.58),
            scale=rng.uniform(0.5, 0.72), mirrored=position > 0 and rng.random() < 0.5,
        )
        has_hi_res = rng.random() < HI_RES_SHARE["MAIN" if position == 0 else "PT"]
        images.append(ProductImage(_new_image_id(rng, taken), variant, has_hi_res, look))
    return images


def _new_image_id(rng: random.Random, taken: set[str]) -> str:
    """An 11-character id shaped like Amazon's (e.g. ``71a3KxZ9QbL``), unique within the catalog."""
    while True:
        image_id = rng.choice("345678") + "1" + "".join(rng.choices(_IMAGE_ID_ALPHABET, k=8)) + "L"
        if image_id not in taken:
            taken.add(image_id)
            return image_id
