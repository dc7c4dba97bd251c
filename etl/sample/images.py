"""Product photos for the sample: category-dependent, product-specific, noisy, cheap to make.

Look of an image:
- background = the leaf's palette and texture (stripes, checks, rings, waves or a gradient at a leaf-specific
  frequency/angle), seen through a random crop so no two backgrounds are pixel-identical;
- foreground = the group's shape (circle for cameras, wide rectangle for computers, ...) filled with the
  product's colour and its style's pattern, placed and scaled with jitter;
- a brand mark (the brand's colour and initial) in a corner, and pixel noise.
Mean colour therefore separates leaves, shape separates groups, and colour/pattern/brand separate products.
Everything heavy (textures, noise) is computed once per generation and reused, so 3000 products take seconds.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFont

from etl.sample.taxonomy import LEAVES, leaf_palette

TILE = 448  # backgrounds and noise are rendered once at this size and cropped per image
THUMB_SIZE = 40
NOISE_AMPLITUDE = 4
_TEXTURES = ("stripes", "checks", "rings", "waves", "gradient")
_PATTERN_SECONDARY = 0.55  # the pattern colour is the product colour scaled by this (darker) ...
_PATTERN_LIGHT = (245, 245, 245)  # ... or this, for dark product colours


@dataclass(frozen=True)
class Look:
    """What one image of one product shows; every field is chosen by the caller's RNG."""

    leaf_index: int
    shape: str
    colour: tuple[int, int, int]
    pattern: str
    brand_colour: tuple[int, int, int]
    brand_initial: str
    width: int
    height: int
    crop_x: int
    crop_y: int
    body_x: int
    body_y: int
    center_x: float  # fraction of width
    center_y: float
    scale: float  # fraction of min(width, height)
    mirrored: bool


def _leaf_texture(index: int) -> Image.Image:
    """The leaf's background tile: its two palette colours mixed by a leaf-specific texture.

    Computed at half resolution and scaled up: textures are smooth or blocky, and this halves the start-up cost.
    """
    light, dark = leaf_palette(index)
    half = TILE // 2
    yy, xx = np.mgrid[0:half, 0:half].astype(np.float32) / half
    kind = _TEXTURES[index % len(_TEXTURES)]
    freq = 3 + (index * 7) % 9
    angle = math.radians((index * 37) % 180)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == "stripes":
        mix = (np.sin(2 * math.pi * freq * u) > 0).astype(np.float32) * 0.55
    elif kind == "checks":
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        mix = ((np.floor(freq * u) + np.floor(freq * v)) % 2) * 0.5
    elif kind == "rings":
        mix = 0.3 + 0.3 * np.sin(2 * math.pi * freq * np.hypot(xx - 0.5, yy - 0.5))
    elif kind == "waves":
        mix = 0.3 + 0.3 * np.sin(2 * math.pi * freq * (u + 0.05 * np.sin(2 * math.pi * 3 * yy)))
    else:
        mix = 0.15 + 0.7 * u / max(float(u.max()), 1e-6)
    rgb = np.asarray(light, np.float32) * (1 - mix[..., None]) + np.asarray(dark, np.float32) * mix[..., None]
    tile = Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")
    return tile.resize((TILE, TILE), Image.Resampling.BILINEAR)


def _pattern_masks() -> dict[str, Image.Image]:
    """Style patterns as 'L' masks (255 = secondary colour) at tile size."""
    yy, xx = np.mgrid[0:TILE, 0:TILE]
    masks = {
        "solid": np.zeros((TILE, TILE), bool),
        "diagonal": ((xx + yy) // 18) % 2 == 0,
        "grid": (xx % 28 < 6) | (yy % 28 < 6),
        "dots": np.hypot(xx % 24 - 12, yy % 24 - 12) < 5,
        "bands": (yy // 22) % 3 == 0,
    }
    return {name: Image.fromarray(mask.astype(np.uint8) * 255, "L") for name, mask in masks.items()}


class Renderer:
    """Holds the per-generation caches and renders ``Look``s.

    Noise is baked into the cached background and fill tiles; every image takes crops at random offsets, so
    images differ in their noise too, and rendering costs a few crops and pastes.
    """

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A6E]))
        noise = rng.integers(128 - NOISE_AMPLITUDE, 128 + NOISE_AMPLITUDE + 1, (TILE, TILE), dtype=np.uint8)
        self._noise = Image.fromarray(noise, "L").convert("RGB")
        self._tiles = [self._with_noise(_leaf_texture(index)) for index in range(len(LEAVES))]
        self._patterns = _pattern_masks()
        self._fills: dict[tuple[str, tuple[int, int, int]], Image.Image] = {}

    def _with_noise(self, tile: Image.Image) -> Image.Image:
        return ImageChops.add(tile, self._noise, scale=1.0, offset=-128)

    def _fill(self, pattern: str, colour: tuple[int, int, int]) -> Image.Image:
        """The product body's texture: its colour with its style's pattern (cached per pattern and colour)."""
        key = (pattern, colour)
        if key not in self._fills:
            fill = Image.new("RGB", (TILE, TILE), colour)
            fill.paste(_secondary(colour), (0, 0, TILE, TILE), self._patterns[pattern])
            self._fills[key] = self._with_noise(fill)
        return self._fills[key]

    def render(self, look: Look) -> Image.Image:
        """The full-size RGB image for ``look``."""
        w, h = look.width, look.height
        image = self._tiles[look.leaf_index].crop((look.crop_x, look.crop_y, look.crop_x + w, look.crop_y + h))
        mask = _shape_mask(look)
        left, top, right, bottom = mask.getbbox() or (0, 0, 1, 1)  # paste only where the shape is
        x, y = look.body_x + left, look.body_y + top
        body = self._fill(look.pattern, look.colour).crop((x, y, x + right - left, y + bottom - top))
        image.paste(body, (left, top), mask.crop((left, top, right, bottom)))
        if look.mirrored:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.paste(_badge(look.brand_colour, look.brand_initial, max(28, w // 9)), (8, 8))
        return image


def _secondary(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    if sum(colour) < 200:
        return _PATTERN_LIGHT
    return tuple(round(c * _PATTERN_SECONDARY) for c in colour)  # type: ignore[return-value]


def _shape_mask(look: Look) -> Image.Image:
    """An 'L' mask of the group's shape at the look's position and scale."""
    w, h = look.width, look.height
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    s = look.scale * min(w, h)
    cx, cy = look.center_x * w, look.center_y * h
    if look.shape == "circle":
        draw.ellipse((cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), fill=255)
        draw.ellipse((cx - s / 5, cy - s / 5, cx + s / 5, cy + s / 5), fill=90)
    elif look.shape == "wide_rect":
        draw.rectangle((cx - s / 1.6, cy - s / 2.8, cx + s / 1.6, cy + s / 4), fill=255)
        draw.polygon([(cx - s / 1.4, cy + s / 4), (cx + s / 1.4, cy + s / 4), (cx + s / 1.2, cy + s / 2.6),
                      (cx - s / 1.2, cy + s / 2.6)], fill=255)
    elif look.shape == "card":
        draw.polygon([(cx - s / 2.6, cy - s / 2), (cx + s / 4, cy - s / 2), (cx + s / 2.6, cy - s / 3),
                      (cx + s / 2.6, cy + s / 2), (cx - s / 2.6, cy + s / 2)], fill=255)
    elif look.shape == "ring":
        draw.ellipse((cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), fill=255)
        draw.ellipse((cx - s / 3.2, cy - s / 3.2, cx + s / 3.2, cy + s / 3.2), fill=0)
    elif look.shape == "tall_rect":
        draw.rounded_rectangle((cx - s / 3.6, cy - s / 2, cx + s / 3.6, cy + s / 2), radius=s / 10, fill=255)
    elif look.shape == "screen":
        draw.rectangle((cx - s / 1.5, cy - s / 2.5, cx + s / 1.5, cy + s / 5), fill=255)
        draw.polygon([(cx, cy + s / 6), (cx + s / 5, cy + s / 2.4), (cx - s / 5, cy + s / 2.4)], fill=255)
    elif look.shape == "watch":
        draw.rectangle((cx - s / 6, cy - s / 1.8, cx + s / 6, cy + s / 1.8), fill=170)
        draw.rounded_rectangle((cx - s / 3.2, cy - s / 3.2, cx + s / 3.2, cy + s / 3.2), radius=s / 8, fill=255)
    elif look.shape == "hexagon":
        draw.regular_polygon((cx, cy, s / 2), 6, rotation=30, fill=255)
    else:
        raise ValueError(f"unknown shape {look.shape!r}")
    return mask


@functools.cache
def _badge(colour: tuple[int, int, int], initial: str, size: int) -> Image.Image:
    """The brand's badge: a square in the brand's colour with its initial (cached: few brands, few sizes)."""
    badge = Image.new("RGB", (size, size), colour)
    ImageDraw.Draw(badge).text((size / 2, size / 2), initial, fill=(255, 255, 255), anchor="mm",
                               font=ImageFont.load_default(round(size * 0.7)))
    return badge


def brand_colour(brand: str) -> tuple[int, int, int]:
    """A stable colour per brand name (hash based, so independent of the seed)."""
    digest = hashlib.sha256(brand.encode()).digest()
    return (40 + digest[0] % 180, 40 + digest[1] % 180, 40 + digest[2] % 180)


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def variants(image: Image.Image, with_hi_res: bool) -> dict[str, bytes]:
    """JPEG bytes per size Amazon serves: large (the render), hi_res (only if wanted) and thumb.

    The sample's large and hi_res files hold the same encoding: real ones differ only in size, and sharing it
    saves a resize and an encode per image.
    """
    large = encode_jpeg(image)
    thumb = encode_jpeg(image.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.NEAREST))  # nobody picks thumbs
    return {"large": large, "thumb": thumb, **({"hi_res": large} if with_hi_res else {})}
