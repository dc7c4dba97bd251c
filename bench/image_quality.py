"""How close each resize pipeline's 256-px output is to a full-resolution Lanczos reference (PSNR, dB).

Compares SLIP-kit's `process_image` (libjpeg-turbo eighth-scale decode + OpenCV resize) with PIL's draft mode +
bicubic (what SLIP-kit did before) and with img2dataset's way (OpenCV full decode + area resize), on the
benchmark's 800x800 JPEGs and on three hard cases (a zone plate, small text, 3-px stripes) where aliasing shows.
Each output is decoded from the final JPEG q95, so the re-encode's own error is part of every figure.

    python bench/image_quality.py
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etl.imaging.process import process_image  # noqa: E402

SIDE = 256
QUALITY = 95


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-9))


def jpeg_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def slip_kit(data: bytes) -> np.ndarray:
    return jpeg_rgb(process_image(data, shorter_side=SIDE, quality=QUALITY).jpeg)


def pil_draft_bicubic(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (SIDE, SIDE))
    out = io.BytesIO()
    img.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BICUBIC, reducing_gap=3.0).save(out, "JPEG",
                                                                                           quality=QUALITY)
    return jpeg_rgb(out.getvalue())


def img2dataset_way(data: bytes) -> np.ndarray:
    full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    small = cv2.resize(full, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(cv2.imdecode(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1],
                                     cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


PIPELINES = {"SLIP-kit (eighth-scale decode + OpenCV)": slip_kit, "PIL draft + bicubic": pil_draft_bicubic,
             "img2dataset (full decode + area)": img2dataset_way}


def hard_cases() -> dict[str, Image.Image]:
    y, x = np.mgrid[0:800, 0:800]
    zone = (127.5 + 127.5 * np.cos((x ** 2 + y ** 2) * np.pi / 3200)).astype(np.uint8)
    text = Image.new("RGB", (800, 800), "white")
    draw = ImageDraw.Draw(text)
    font = ImageFont.load_default(size=14)
    for row in range(50):
        draw.text((10, row * 16), "Specifications: USB-C 3.2 Gen 2, 10 Gbps, 100W PD charging " * 2, fill="black",
                  font=font)
    stripes = Image.new("RGB", (800, 800), "white")
    draw = ImageDraw.Draw(stripes)
    for col in range(0, 800, 3):
        draw.line([(col, 0), (col, 800)], fill="black")
    return {"zone plate": Image.fromarray(np.stack([zone] * 3, -1)), "14-px text": text, "3-px stripes": stripes}


def score(data: bytes) -> dict[str, float]:
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((SIDE, SIDE), Image.Resampling.LANCZOS))
    return {name: psnr(fn(data), reference) for name, fn in PIPELINES.items()}


def main() -> None:
    rows: dict[str, dict[str, float]] = {}
    photos = sorted((ROOT / "bench" / "out" / "jpegs-800").glob("*.jpg"))[:40]
    if photos:
        scores = [score(p.read_bytes()) for p in photos]
        rows[f"bench JPEGs (mean of {len(photos)})"] = {k: float(np.mean([s[k] for s in scores])) for k in PIPELINES}
    for name, img in hard_cases().items():
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=92)
        rows[name] = score(buf.getvalue())
    print("| input | " + " | ".join(PIPELINES) + " |")
    print("| --- |" + " ---: |" * len(PIPELINES))
    for name, s in rows.items():
        print(f"| {name} | " + " | ".join(f"{s[k]:.1f}" for k in PIPELINES) + " |")


if __name__ == "__main__":
    main()
