"""Zero-shot prompt templates for product categories.

Product photos are mostly studio shots of one item, and category names are shop taxonomy nodes
("Headphones", "Cell Phones & Accessories"), so the templates phrase the class as a kind of product
rather than ImageNet's "a photo of a {c}" alone. The set is small on purpose: CLIP_benchmark's recipe
averages the normalised template embeddings, and a handful of varied phrasings carries most of the gain.
"""

from __future__ import annotations

PRODUCT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a product photo of a {c}.",
    "a photo of a {c}, a type of product.",
    "a {c} for sale.",
    "an online shop listing of a {c}.",
    "{c}",
)

_PATH_SEPARATORS = (" > ", " › ")


def prompt_classname(name: str) -> str:
    """The leaf of a category path, trimmed: 'Electronics > Headphones' -> 'Headphones'.

    Labels may be stored as full taxonomy paths; a prompt reads better with the leaf alone.
    """
    leaf = name
    for separator in _PATH_SEPARATORS:
        leaf = leaf.split(separator)[-1]
    leaf = " ".join(leaf.split())
    if not leaf:
        raise ValueError(f"class name {name!r} has no usable text for a prompt")
    return leaf


def class_prompts(classnames: list[str], templates: tuple[str, ...] = PRODUCT_TEMPLATES) -> list[list[str]]:
    """One list of filled-in templates per class, in class order."""
    return [[template.format(c=prompt_classname(name)) for template in templates] for name in classnames]
