"""Zero-shot prompt templates for product categories.

Product photos are mostly studio shots of one item, and category names are shop taxonomy nodes
("Headphones", "Cell Phones & Accessories"), so the templates phrase the class as a kind of product
rather than ImageNet's "a photo of a {c}" alone. The set is small on purpose: CLIP_benchmark's recipe
averages the normalised template embeddings, and a handful of varied phrasings carries most of the gain.
`slip-eval --templates FILE` replaces them (and optionally the class names) with a user's own set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from slipio.inputs import InputError, read_mapping

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
    """One list of filled-in templates per class, in class order (the default templates and names)."""
    return PromptSet(templates).prompts(classnames)


@dataclass(frozen=True)
class PromptSet:
    """Templates and optional class-name overrides for zero-shot (from `slip-eval --templates FILE`, or the defaults).

    `classnames` maps a release class name (the full label or its leaf) to the text the prompts use, or lists one
    text per class in class order (CLIP_benchmark's classnames files); `source` names the file for error messages.
    """

    templates: tuple[str, ...] = PRODUCT_TEMPLATES
    classnames: Optional[Union[dict[str, str], tuple[str, ...]]] = None
    source: str = "the built-in product templates"

    def prompt_names(self, classnames: list[str]) -> list[str]:
        """The text each class is called in the prompts: its override, else its label's leaf.

        Raises ValueError naming the file when the overrides do not fit the release's classes.
        """
        if self.classnames is None:
            return [prompt_classname(name) for name in classnames]
        if isinstance(self.classnames, tuple):
            if len(self.classnames) != len(classnames):
                raise ValueError(f"{self.source}: classnames lists {len(self.classnames)} names but the release has "
                                 f"{len(classnames)} classes; list one per class in class order, or map names")
            return list(self.classnames)
        leaves = [prompt_classname(name) for name in classnames]
        unknown = sorted(set(self.classnames) - set(classnames) - set(leaves))
        if unknown:
            raise ValueError(f"{self.source}: classnames names {len(unknown)} class(es) the release does not have, "
                             f"e.g. {unknown[0]!r}; use the names in the release's labels.json")
        return [self.classnames.get(name, self.classnames.get(leaf, leaf)) for name, leaf in zip(classnames, leaves)]

    def prompts(self, classnames: list[str]) -> list[list[str]]:
        """One list of filled-in templates per class, in class order."""
        return [[template.format(c=name) for template in self.templates] for name in self.prompt_names(classnames)]


def _check_template(template: Any, path: Path, index: int) -> str:
    if not isinstance(template, str) or not template.strip():
        raise InputError(f"{path}: templates[{index}] must be a non-empty string, got {template!r}")
    try:
        filled = template.format(c="CLASS")
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"{path}: templates[{index}] {template!r} is not a template with only {{c}} "
                         f"({type(exc).__name__}: {exc}); write the class as {{c}} and double other braces") from None
    if "CLASS" not in filled:
        raise InputError(f"{path}: templates[{index}] {template!r} has no {{c}} where the class name goes")
    return template


def load_prompt_file(path: Path) -> PromptSet:
    """A PromptSet from a YAML/JSON file `{templates: [..."{c}"...], classnames: {label: text} | [text, ...]}`.

    Raises InputError naming the file and what to change (not a mapping, no templates, a template without {c},
    unknown keys, names that are not strings).
    """
    path = Path(path)
    data = read_mapping(path)
    unknown = sorted(set(data) - {"templates", "classnames"})
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(unknown)}; a templates file has `templates` and "
                         f"optionally `classnames`")
    templates = data.get("templates")
    if not isinstance(templates, list) or not templates:
        raise InputError(f"{path}: `templates` must be a non-empty list of strings with {{c}}, e.g. "
                         f"[\"a photo of a {{c}}.\"]")
    checked = tuple(_check_template(t, path, i) for i, t in enumerate(templates))
    names = data.get("classnames")
    overrides: Optional[Union[dict[str, str], tuple[str, ...]]] = None
    if isinstance(names, dict):
        if not all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in names.items()):
            raise InputError(f"{path}: `classnames` must map class names to non-empty strings")
        overrides = dict(names)
    elif isinstance(names, list):
        if not names or not all(isinstance(v, str) and v.strip() for v in names):
            raise InputError(f"{path}: `classnames` must list one non-empty string per class")
        overrides = tuple(names)
    elif names is not None:
        raise InputError(f"{path}: `classnames` must be a mapping (class name: text) or a list (one per class)")
    return PromptSet(checked, overrides, str(path))
