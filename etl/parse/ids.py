"""What a product id looks like in the raw dumps: the one pattern `nodes` keys its table by and `reviews` joins on."""
from __future__ import annotations

ASIN_PATTERN = r"^[A-Z0-9]{10}$"  # exactly, no normalisation (schema `nodes`: 2023 parent_asin / 2018 asin)
