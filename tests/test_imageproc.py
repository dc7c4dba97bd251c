"""etl.imaging.process: every input kind becomes a correct RGB JPEG, or a precise rejection, without decoding bombs."""
from __future__ import annotations

import hashlib
import io
import pickle
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from etl.imaging.process import (
    ImageRejected,
    _has_exif,
    looks_like_image,
    process_image,
)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def decode(jpeg: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and img.mode == "RGB"
    return img


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth gradient with a little noise: compresses like a photo, so JPEG errors stay small."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 64], -1)
    arr = arr + rng.normal(0, 3, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return 10 * np.log10(255 ** 2 / max(np.mean(diff ** 2), 1e-9))


def png_claiming(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header claims width x height (a decompression bomb's calling card)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_keep_ratio_sets_the_shorter_side_and_reports_the_original():
    data = encode(photo(800, 600), "JPEG", quality=92)
    out = process_image(data, shorter_side=256, mode="keep_ratio", quality=95)
    assert decode(out.jpeg).size == (341, 256)
    assert (out.width, out.height, out.bytes) == (800, 600, len(data))
    assert out.sha256 == hashlib.sha256(data).hexdigest()


def test_center_crop_gives_a_square_of_the_centre():
    img = photo(900, 600)
    img.paste((255, 0, 0), (0, 0, 150, 600))      # left margin: must be cut away
    img.paste((0, 0, 255), (750, 0, 900, 600))    # right margin: likewise
    out = process_image(encode(img, "PNG"), shorter_side=128, mode="center_crop")
    small = decode(out.jpeg)
    assert small.size == (128, 128)
    centre = img.crop((150, 0, 750, 600)).resize((128, 128), Image.Resampling.LANCZOS)
    assert psnr(small, centre) > 30


@pytest.mark.parametrize("mode, size", [("keep_ratio", (120, 80)), ("center_crop", (80, 80))])
def test_small_images_are_never_upscaled(mode, size):
    out = process_image(encode(photo(120, 80), "PNG"), shorter_side=256, mode=mode)
    assert decode(out.jpeg).size == size


def test_jpegs_are_decoded_at_a_reduced_scale_with_exact_dimensions_and_high_quality(monkeypatch):
    """libjpeg-turbo's DCT scaling is what makes big JPEGs cheap: the resize must start from the smallest
    eighth-scale decode whose sides stay >= the target (2048x1536 -> 2/8 -> 512x384), not from 2048x1536."""
    import simplejpeg

    decoded = []
    real_decode = simplejpeg.decode_jpeg

    def spy(*args, **kw):
        decoded.append(real_decode(*args, **kw).shape[:2])
        return real_decode(*args, **kw)

    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy)
    data = encode(photo(2048, 1536, seed=1), "JPEG", quality=95)
    out = process_image(data, shorter_side=256, quality=95)
    small = decode(out.jpeg)
    assert decoded == [(384, 512)]
    assert small.size == (341, 256) and (out.width, out.height) == (2048, 1536)
    reference = Image.open(io.BytesIO(data)).convert("RGB").resize((341, 256), Image.Resampling.LANCZOS)
    assert psnr(small, reference) > 32
    out = process_image(encode(photo(2400, 2400, seed=2), "JPEG", quality=90), shorter_side=256)
    assert decoded[-1] == (300, 300) and decode(out.jpeg).size == (256, 256)


@pytest.mark.parametrize("orientation, shown", [(1, (800, 600)), (3, (800, 600)), (6, (600, 800)),
                                               (8, (600, 800))])
def test_exif_orientation_is_applied(orientation, shown):
    img = Image.new("RGB", (800, 600), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 200, 150))  # stored top-left corner is red
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = process_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95), shorter_side=200)
    small = decode(out.jpeg)
    assert (out.width, out.height) == shown
    assert small.size == ((267, 200) if shown[0] > shown[1] else (200, 267))
    w, h = small.size
    corners = {"tl": (5, 5), "tr": (w - 6, 5), "bl": (5, h - 6), "br": (w - 6, h - 6)}
    red_at = {1: "tl", 3: "br", 6: "tr", 8: "bl"}[orientation]  # where the stored top-left ends up when shown
    for name, xy in corners.items():
        r, g, b = small.getpixel(xy)
        assert (r > 200 and g < 60) == (name == red_at), (name, small.getpixel(xy))
    assert b"Exif" not in out.jpeg[:200]  # not rotated twice by a reader


def test_transparency_is_flattened_on_white():
    img = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    img.paste((200, 0, 0, 255), (100, 100, 200, 200))
    small = decode(process_image(encode(img, "PNG"), shorter_side=300).jpeg)
    assert all(v > 245 for v in small.getpixel((10, 10)))
    r, g, b = small.getpixel((150, 150))
    assert r > 180 and g < 30 and b < 30


@pytest.mark.parametrize("make", [
    lambda: Image.new("LA", (64, 64), (0, 0)),
    lambda: _palette_with_transparent_index(),
])
def test_grey_alpha_and_palette_transparency_become_white(make):
    small = decode(process_image(encode(make(), "PNG"), shorter_side=32).jpeg)
    assert small.size == (32, 32)
    assert all(v > 245 for v in small.getpixel((16, 16)))


def _palette_with_transparent_index() -> Image.Image:
    img = Image.new("P", (64, 64), 0)
    img.putpalette([0, 0, 0] * 256)
    img.info["transparency"] = 0
    return img


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour():
    """libjpeg-turbo's fast path refuses CMYK; the general (PIL) path must take it, colours right."""
    cmyk = Image.new("CMYK", (300, 200), (0, 255, 255, 0))  # pure red in CMYK
    small = decode(process_image(encode(cmyk, "JPEG", quality=95), shorter_side=100).jpeg)
    r, g, b = small.getpixel((50, 50))
    assert r > 220 and g < 40 and b < 40


def test_sixteen_bit_grey_is_scaled_not_clipped():
    arr = np.full((64, 64), 32768, dtype=np.uint16)
    small = decode(process_image(encode(Image.fromarray(arr), "PNG"), shorter_side=32).jpeg)
    assert all(120 < v < 136 for v in small.getpixel((16, 16)))


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "BMP", "TIFF"])
def test_other_formats_decode(fmt):
    img = photo(200, 100) if fmt != "GIF" else photo(200, 100).convert("P")
    out = process_image(encode(img, fmt), shorter_side=50)
    assert decode(out.jpeg).size == (100, 50)


def test_bomb_is_refused_from_the_header_without_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    bomb = png_claiming(50_000, 50_000)
    assert len(bomb) < 100
    t = time.perf_counter()
    with pytest.raises(ImageRejected) as exc:
        process_image(bomb, shorter_side=256, max_pixels=40_000_000)
    assert exc.value.status == "too_large" and time.perf_counter() - t < 1.0
    # below PIL's own limit, our max_pixels decides
    with pytest.raises(ImageRejected) as exc:
        process_image(png_claiming(3000, 3000), shorter_side=256, max_pixels=1_000_000)
    assert exc.value.status == "too_large" and "before decoding" in exc.value.message


def test_a_jpeg_bomb_is_refused_from_its_header_without_decoding(monkeypatch):
    import simplejpeg

    def no_decoding(*args, **kw):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(simplejpeg, "decode_jpeg", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    data = bytearray(encode(photo(64, 48), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60_000, 60_000)  # height, width
    with pytest.raises(ImageRejected) as exc:
        process_image(bytes(data), shorter_side=256, max_pixels=40_000_000)
    assert exc.value.status == "too_large" and "60000x60000" in exc.value.message


def test_exif_is_found_only_where_a_jpeg_has_it():
    img = photo(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    assert not _has_exif(encode(img, "JPEG"))
    assert _has_exif(encode(img, "JPEG", exif=exif.tobytes()))
    assert _has_exif(encode(img, "JPEG", exif=exif.tobytes(), comment=b"made by a test", icc_profile=b"x" * 300))
    assert not _has_exif(b"\xff\xd8\xff")  # truncated: no segment to read


def test_a_huge_claim_beyond_pils_own_limit_is_too_large():
    with pytest.raises(ImageRejected) as exc:
        process_image(png_claiming(100_000, 100_000), shorter_side=256, max_pixels=10**12)
    assert exc.value.status == "too_large"


@pytest.mark.parametrize("data", [b"<!doctype html><html><body>Not found</body></html>", b"GIF8",
                                  b'{"error": "nope"}'])
def test_non_images_are_not_image(data):
    assert not looks_like_image(data)
    with pytest.raises(ImageRejected) as exc:
        process_image(data, shorter_side=256)
    assert exc.value.status == "not_image"


def test_an_empty_body_is_empty_body_never_not_image():
    """No bytes says nothing about the image (a server hiccup): the crawler retries `empty_body`."""
    with pytest.raises(ImageRejected) as exc:
        process_image(b"", shorter_side=256)
    assert exc.value.status == "empty_body"


def _corrupt_png_crc() -> bytes:
    data = bytearray(encode(photo(64, 64), "PNG"))
    data[-20] ^= 0xFF  # inside the last IDAT chunk
    return bytes(data)


@pytest.mark.parametrize("make", [
    lambda: encode(photo(400, 300), "JPEG")[:3000],             # truncated body
    lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8,          # JPEG magic, garbage after
    lambda: encode(photo(64, 64), "PNG")[:40],                   # PNG cut inside the data
    _corrupt_png_crc,
    lambda: png_claiming(0, 10),                                 # zero-sized
])
def test_broken_images_are_decode_errors(make):
    with pytest.raises(ImageRejected) as exc:
        process_image(make(), shorter_side=64)
    assert exc.value.status == "decode_error"


def test_rejections_survive_the_trip_back_from_a_worker_process():
    err = pickle.loads(pickle.dumps(ImageRejected("too_large", "5x5 > 4")))
    assert (err.status, err.message) == ("too_large", "5x5 > 4")


def test_output_is_deterministic_and_quality_is_applied():
    data = encode(photo(640, 480, seed=3), "JPEG", quality=90)
    a = process_image(data, shorter_side=128, quality=95)
    assert a == process_image(data, shorter_side=128, quality=95)
    assert len(process_image(data, shorter_side=128, quality=40).jpeg) < len(a.jpeg)


def test_unknown_resize_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="keep_ratio or center_crop"):
        process_image(encode(photo(10, 10), "PNG"), shorter_side=8, mode="stretch")  # type: ignore[arg-type]
