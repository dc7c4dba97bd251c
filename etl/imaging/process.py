"""Turn downloaded bytes into the training JPEG: validate, refuse bombs, downscale cheaply, re-encode.

Runs in worker processes (see `etl.imaging.crawler`), so it is a pure function of its inputs: bytes in, bytes out.

Choices, and why:
- An image is recognised by its magic bytes first: a body that is no image format at all is `not_image`, a
  different problem from a broken image (`decode_error`).
- The pixel count in the header is checked *before* any pixel is decoded (a 100-byte PNG can claim 10^10 pixels);
  PIL's own `DecompressionBombError` is reported the same way (`too_large`).
- JPEGs (nearly every product image) take a fast path without PIL: libjpeg-turbo (simplejpeg) reads the header
  (size, colour space; EXIF is parsed only when an Exif segment is there) and decodes straight to the smallest
  size in eighths of the original (1/8 .. 8/8, scaled in the DCT domain) whose sides stay >= the target, so an
  800x800 source costs a 300x300 decode; OpenCV resizes the remaining factor (area averaging, or bilinear when the
  factor is <= 1.25, where the two barely differ) and encodes, cheaper than PIL's draft mode (1/2 scale only) +
  bicubic + PIL encode. Quality against a full-resolution Lanczos reference (`bench/image_quality.py`; figures in
  bench/README.md): as good as img2dataset's full decode + area resize on photo-like images, a little below it on
  a zone plate and small text, far below on 3-px stripes, where DCT-domain scaling aliases (as PIL's draft mode
  does). A JPEG the fast decoder refuses (CMYK, a broken stream) goes the
  general way.
- Everything else (PNG, WebP, GIF, ... and those JPEGs) is decoded by PIL at full size and resized with area
  averaging.
- Images are never upscaled: a source smaller than `shorter_side` keeps its size (in `center_crop` mode it is cut
  to its largest centred square). Upscaling adds bytes, not information; the trainer resizes to the model's input
  size anyway.
- Transparency is flattened onto white (product photos are shot on white); CMYK, palette, grey and 16-bit inputs
  become RGB; the EXIF orientation is applied (to the small image, where it is cheap) and EXIF is not copied, so a
  reader never rotates twice. `width`/`height` are the original size as displayed (orientation applied).
"""
from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import simplejpeg
from PIL import Image

cv2.setNumThreads(1)  # one image per worker process; the workers are the parallelism
ResizeMode = Literal["keep_ratio", "center_crop"]

# Leading bytes of the formats product images come in: (offset, signature).
JPEG_START = b"\xff\xd8\xff"
_MAGIC: tuple[tuple[int, bytes], ...] = (
    (0, JPEG_START),                       # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),             # PNG
    (0, b"GIF87a"), (0, b"GIF89a"),        # GIF
    (0, b"BM"),                            # BMP
    (0, b"II*\x00"), (0, b"MM\x00*"),      # TIFF
    (8, b"WEBP"),                          # WebP (RIFF....WEBP)
    (4, b"ftypavif"), (4, b"ftypavis"),    # AVIF
)
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}
# The same transposes on a (height, width, channels) array.
_ORIENT_ARRAY = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: a.transpose(1, 0, 2)[::-1],
}
_BACKGROUND = (255, 255, 255)
BILINEAR_MAX_FACTOR = 1.25  # below this downscale factor bilinear is as good as area averaging, and cheaper
# What a malformed file can make PIL raise while parsing or decoding.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, KeyError, IndexError, ZeroDivisionError,
                  struct.error)


class ImageRejected(Exception):
    """The bytes are not a usable image; `status` is the image_status value (not_image, decode_error, too_large,
    empty_body)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(status, message)  # both in args, so the exception pickles across processes
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


@dataclass(frozen=True)
class ProcessedImage:
    jpeg: bytes  # the resized, re-encoded RGB JPEG
    width: int   # original size, as displayed (EXIF orientation applied)
    height: int
    sha256: str  # of the original bytes
    bytes: int   # original size in bytes


def looks_like_image(data: bytes) -> bool:
    """True when `data` starts like one of the image formats we decode."""
    return any(data[off:off + len(sig)] == sig for off, sig in _MAGIC)


def process_image(data: bytes, *, shorter_side: int, mode: ResizeMode = "keep_ratio", quality: int = 95,
                  max_pixels: int = 40_000_000) -> ProcessedImage:
    """Validate `data` and return it as an RGB JPEG whose shorter side is at most `shorter_side`.

    Raises ImageRejected with status `not_image`, `too_large`, `decode_error` or `empty_body` (no bytes).
    """
    if mode not in ("keep_ratio", "center_crop"):
        raise ValueError(f"resize mode must be keep_ratio or center_crop, got {mode!r}")
    if not data:  # a transfer problem, not a verdict on the image: the crawler retries it
        raise ImageRejected("empty_body", "no bytes to decode")
    if not looks_like_image(data):
        raise ImageRejected("not_image", f"no image signature in the first bytes {data[:16]!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # max_pixels is the limit here
        try:
            return _convert(data, shorter_side, mode, quality, max_pixels)
        except Image.DecompressionBombError as exc:
            raise ImageRejected("too_large", str(exc)) from None
        except MemoryError:
            raise ImageRejected("too_large", "out of memory decoding the image") from None
        except _DECODE_ERRORS as exc:
            raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}") from None


def _convert(data: bytes, shorter_side: int, mode: ResizeMode, quality: int, max_pixels: int) -> ProcessedImage:
    fast = _fast_jpeg(data, shorter_side, max_pixels)
    if fast is not None:
        pixels, width, height, orientation = fast
    else:
        img = _open_checked(data, max_pixels)
        width, height = img.size
        orientation = _orientation(img)
        pixels = cv2.cvtColor(np.asarray(_to_rgb(img)), cv2.COLOR_RGB2BGR)
    small = _resize(pixels, shorter_side, mode)
    if orientation in _ORIENT_ARRAY:
        small = np.ascontiguousarray(_ORIENT_ARRAY[orientation](small))
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a {small.shape} image")
    return ProcessedImage(jpeg=jpeg.tobytes(), width=width, height=height,
                          sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))


def _fast_jpeg(data: bytes, shorter_side: int, max_pixels: int) -> tuple[np.ndarray, int, int, int] | None:
    """(BGR pixels at the smallest eighth-scale keeping both sides >= the target, width, height, EXIF orientation)
    of a JPEG libjpeg-turbo decodes; None for anything else (CMYK/YCCK, a broken stream, not a JPEG), which PIL
    then decodes or names the problem of. PIL is not involved here: opening the file with it costs more than this
    whole decode."""
    if not data.startswith(JPEG_START):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return None
    if colorspace not in ("YCbCr", "Gray", "RGB"):
        return None
    _check_pixels(width, height, max_pixels)
    floor = min(shorter_side, width, height)  # never ask for more than the image has: no upscaling
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="BGR", min_height=floor, min_width=floor)
    except (ValueError, RuntimeError):
        return None
    return pixels, width, height, _jpeg_orientation(data) if _has_exif(data) else 1


def _has_exif(jpeg: bytes) -> bool:
    """Whether a JPEG's leading APPn/COM segments hold an Exif block (most product images have none)."""
    pos = 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF:
        marker = jpeg[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if not (0xE0 <= marker <= 0xEF or marker == 0xFE):
            return False  # past the application segments: frame/table data follows
        if marker == 0xE1 and jpeg[pos + 4:pos + 10] == b"Exif\x00\x00":
            return True
        pos += 2 + int.from_bytes(jpeg[pos + 2:pos + 4], "big")
    return False


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    pixels = width * height
    if pixels > max_pixels:
        raise ImageRejected("too_large", f"{width}x{height} = {pixels} pixels > max_pixels {max_pixels} "
                                         f"(refused before decoding)")
    if pixels == 0:
        raise ImageRejected("decode_error", f"empty image {width}x{height}")


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only), refuse by pixel count, verify the structure; nothing is decoded yet."""
    img = Image.open(io.BytesIO(data))
    _check_pixels(*img.size, max_pixels)
    if img.format != "JPEG":  # PNG: chunk CRCs, etc.; a JPEG's verify() checks nothing and would cost a re-open
        img.verify()
        img = Image.open(io.BytesIO(data))
    return img


def _jpeg_orientation(data: bytes) -> int:
    try:
        return _orientation(Image.open(io.BytesIO(data)))
    except _DECODE_ERRORS:
        return 1  # the pixels decoded; an unreadable header copy does not make them unusable


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS:
        return 1  # a broken EXIF block does not make the pixels unusable
    return value if isinstance(value, int) else 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB pixels; anything transparent is composited onto white."""
    if img.mode == "RGB":
        return img
    if (img.mode == "P" and "transparency" in img.info) or img.mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, _BACKGROUND)
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode.startswith("I") or img.mode == "F":
        img = _scale_to_8bit(img)
    return img.convert("RGB")


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit / float grey to 8-bit grey by scaling (PIL's own conversion clips everything above 255 to white)."""
    arr = np.asarray(img, dtype=np.float64)
    top = 1.0 if img.mode == "F" and arr.max(initial=0) <= 1.0 else 65535.0 if arr.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8), mode="L")


def _resize(pixels: np.ndarray, shorter_side: int, mode: ResizeMode) -> np.ndarray:
    """Shorter side to `shorter_side` (never up); center_crop also cuts the centred square."""
    h, w = pixels.shape[:2]
    short = min(w, h)
    if mode == "center_crop":
        top, left = (h - short) // 2, (w - short) // 2
        pixels = pixels[top:top + short, left:left + short]
        w = h = short
    if short <= shorter_side:
        return np.ascontiguousarray(pixels)
    scale = shorter_side / short
    size = (shorter_side, max(1, round(h * scale))) if w == short else (max(1, round(w * scale)), shorter_side)
    interpolation = cv2.INTER_LINEAR if 1 / scale <= BILINEAR_MAX_FACTOR else cv2.INTER_AREA
    return cv2.resize(pixels, size, interpolation=interpolation)
