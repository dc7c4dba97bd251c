"""Which rendition of a product image to download: the smallest that still covers `images.shorter_side`.

The 2023 metadata lists each image as `thumb`, `large` and `hi_res` URLs (2018: `imageURL` thumbnails and
`imageURLHighRes`); Amazon's CDN picks the size from a modifier in the file name: `41xyz._AC_SL1500_.jpg`
(longest side 1500), `._AC_SX466_` (width 466), `._SY300_` (height 300), `._SS40_` / `._US40_` (a 40 px square).
Downloading `hi_res` (about 1500 px) to keep a 256 px shorter side moves several times the bytes a `large` does.

The rule (`plan`):
- A URL's *promised side* is the number of its size modifier (SL/UL: longest side, SX/UX: width, SY/UY: height,
  SS/US: square side); a URL without one is assumed to be its rendition's usual size (`NOMINAL_SIDE`: `large`
  files are about 500 px, `hi_res` about 1500 px, `thumb` 75 px). Every listed side bounds the shorter side from
  above, so a promise below `shorter_side` can never cover it.
- Candidates are the image's renditions ordered by promise (then thumb < large < hi_res); those promising at least
  `shorter_side` are tried smallest first, and the crawler moves to the next one when the downloaded image's
  shorter side is below `shorter_side` (a wide image, or a CDN that served less than promised). When none
  promises enough, only the largest is fetched (the best there is), as before.
- `largest` is the old behaviour: hi_res > large > thumb, one URL, no fallback.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, Optional

RENDITIONS = ("thumb", "large", "hi_res")  # small to large, as the metadata names them
NOMINAL_SIDE = {"thumb": 75, "large": 500, "hi_res": 1500}  # assumed when the URL has no size modifier
Policy = Literal["smallest_covering", "largest"]

_MODIFIERS = re.compile(r"\._([A-Za-z0-9_,]+)_\.[A-Za-z]+$")  # "._AC_SL1500_.jpg" -> "AC_SL1500"
_SIZE = re.compile(r"^(?:SL|UL|SX|UX|SY|UY|SS|US)(\d+)$")


def promised_side(url: str) -> Optional[int]:
    """The side length the URL's size modifier asks the CDN for (the largest one given), or None without one."""
    match = _MODIFIERS.search(url.split("?", 1)[0])
    if not match:
        return None
    sides = [int(m.group(1)) for token in match.group(1).split("_") if (m := _SIZE.match(token))]
    return max(sides) if sides else None


def expected_side(name: str, url: str) -> int:
    """The promise of `url`, else the usual size of rendition `name`."""
    side = promised_side(url)
    return side if side is not None else NOMINAL_SIDE.get(name, NOMINAL_SIDE["large"])


def plan(urls: Mapping[str, Optional[str]], shorter_side: int,
         policy: Policy = "smallest_covering") -> tuple[tuple[str, str], ...]:
    """(rendition, url) pairs to try in order for one image (see the module docstring); empty without any URL."""
    listed = [(name, url) for name in RENDITIONS if (url := urls.get(name))]
    if not listed:
        return ()
    if policy == "largest":
        return (listed[-1],)
    ordered = sorted(listed, key=lambda item: (expected_side(*item), RENDITIONS.index(item[0])))
    unique: list[tuple[str, str]] = []
    for name, url in ordered:  # 2018 lists may name one file twice
        if all(url != seen for _, seen in unique):
            unique.append((name, url))
    covering = [item for item in unique if expected_side(*item) >= shorter_side]
    return tuple(covering) if covering else (unique[-1],)
