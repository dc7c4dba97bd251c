"""What the sample graph means, as data: the generator's regime knobs.

Every default is the value the generator has always used, so ``SampleKnobs()`` writes the historical sample
byte for byte (the golden stage digests check it). A knob only changes the RNG draws of the part it governs when it
leaves its default, so a regime differs from the default sample in that part only.

In pipelines.yaml they live under ``sources.sample.sample_knobs`` (``--set sources.sample.sample_knobs.NAME=VALUE``);
``bench/quality.py --regimes`` names presets of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class SampleKnobs(BaseModel):
    """The regime of a generated catalog; the statistic each knob moves is named in its description."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    brand_loyalty: float = Field(0.6, ge=0, le=1, description=(
        "Chance a brand-loyal user's basket anchor is from their preferred brand; a complement's same-brand chance "
        "scales with it (0.55 at the default). Raises the share of co-purchase edges within a brand."))
    category_focus: float = Field(0.5, ge=0, le=1, description=(
        "Share of regular users with a single interest group (the rest have 2 or 3, in the ratio 0.7 : 0.3). "
        "Raises the share of co-purchase edges within a product group."))
    substitute_share: float = Field(0.0, ge=0, le=1, description=(
        "Chance that an extra basket item is a substitute (another product of the anchor's leaf) instead of a "
        "complement from a kit partner leaf. Lowers the share of cross-category edges."))
    near_duplicate_share: float = Field(0.0, ge=0, le=0.5, description=(
        "Share of products that are near-copies of another product of their leaf: same brand, colour, style and "
        "main image (identical bytes), title differing only in the model number. Raises the share of products "
        "whose image hash another product shares."))
    users_per_product: float = Field(4.0, gt=0, le=40, description=(
        "Regular users per product (each buys a heavy-tailed number of baskets). Raises edges per node."))
    noise_share: float = Field(0.08, ge=0, le=1, description=(
        "Share of a regular user's basket anchors drawn from any group instead of their interests (power users keep "
        "0.3). Lowers the share of edges within a product group."))

    def changed(self) -> dict[str, float]:
        """The knobs that differ from their defaults (what identifies a regime; empty for the default sample)."""
        return {name: value for name, value in self.model_dump().items()
                if value != type(self).model_fields[name].default}


def parse_knobs(values: Mapping[str, Any] | SampleKnobs | None, where: str = "sample_knobs") -> SampleKnobs:
    """``values`` as knobs; ValueError naming ``where``, the bad knob and what is allowed."""
    if isinstance(values, SampleKnobs):
        return values
    try:
        return SampleKnobs(**dict(values or {}))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown knob {name!r} (allowed: {', '.join(SampleKnobs.model_fields)})")
            else:
                problems.append(f"{name}: {error['msg']}")
        raise ValueError(f"{where}: {'; '.join(problems)}") from None
