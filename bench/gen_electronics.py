"""Electronics-scale synthetic Amazon 2023 inputs for the table benchmarks (metadata and reviews).

Why synthetic: the real Electronics files (1.6M products, ~5 GB of metadata JSON; 44M reviews) cannot be fetched
here, but the stages' cost depends on volume and shape, not on the words: record count, text bytes per record,
nested lists, a heavy-tailed user and product activity, and defects at realistic rates. This module reproduces
those, fast: every column is built with numpy/Arrow (no per-record Python), polars serialises NDJSON, and parts
are generated and gzip-compressed in worker processes, then concatenated in order (a multi-member gzip file is a
valid gzip file). Same seed, same sizes -> byte-identical files, whatever the number of workers.

Text is cut from a large pool of Zipf-distributed pseudo-words (plus punctuation, numbers, units, HTML entities
and non-ASCII letters), so it compresses and parses like real prose rather than like repeated strings.

    python bench/gen_electronics.py --products 1.6M --reviews 20M --out bench/out --seed 0
    python bench/gen_electronics.py --products 100k --reviews 1M       # smoke size

Library use (the edges benchmark): `write_reviews(path, n_reviews, n_products, seed)`,
`write_metadata(path, n_products, seed)`; both return a dict of what was written (rows, bytes, injected defects).
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

try:  # ISA-L compresses ~4x faster than zlib at the same format; zlib is the fallback.
    from isal import igzip as _gzip

    _GZIP_LEVEL = 1
except ImportError:  # pragma: no cover - depends on the environment
    import gzip as _gzip

    _GZIP_LEVEL = 1

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
IMAGE_BASE = "https://m.media-amazon.com/images/I/"
POOL_BYTES = 128 << 20           # largest text pool per worker; one part's text of one field must fit in it
REVIEW_PART_ROWS = 100_000
META_PART_ROWS = 20_000
_ALNUM36 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
_ALNUM32 = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", dtype=np.uint8)
_ALNUM62 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", dtype=np.uint8)

# Rates of the defects a real dump has (per record). Reviews: truncated lines, exact duplicates, near-empty texts.
REVIEW_DEFECTS = {"bad_json": 1e-5, "duplicate": 1e-3}
META_DEFECTS = {"bad_json": 1e-5, "not_an_object": 2e-6, "bad_id": 1e-4, "duplicate_id": 5e-4,
                "no_title": 2e-3, "no_image_url": 3e-3}
META_DIRT = {"html_entity": 0.03, "html_tags": 0.10, "mojibake": 0.003, "price_none_string": 0.03}


# ----------------------------------------------------------------------------------------------- ids

def _scramble(idx: np.ndarray, modulus: int, mult: int, add: int) -> np.ndarray:
    """A bijection on [0, modulus) so consecutive indices get unrelated-looking ids."""
    return (idx.astype(np.int64) * mult + add) % modulus


def _coprime(modulus: int, start: int) -> int:
    """The first multiplier >= start sharing no factor with modulus (so `_scramble` is a bijection)."""
    m = start
    while np.gcd(m, modulus) != 1:
        m += 1
    return m


def _strings_from_codes(codes: np.ndarray) -> pa.Array:
    """An (n, width) uint8 array of ASCII codes -> an Arrow large_string array, without Python objects."""
    n, width = codes.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets),
                                                         pa.py_buffer(np.ascontiguousarray(codes).tobytes())])


def _digits(x: np.ndarray, alphabet: np.ndarray, width: int) -> np.ndarray:
    base = len(alphabet)
    powers = base ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return alphabet[(x[:, None] // powers[None, :]) % base]


def asin_codes(product_idx: np.ndarray, prefix: bytes = b"B0") -> np.ndarray:
    """ASIN-shaped ids (`B0` + 8 of [0-9A-Z]) for product indices; shared by metadata and reviews."""
    width = 10 - len(prefix)
    x = _scramble(product_idx, 36 ** width, 2_654_435_761, 1_234_567)
    head = np.broadcast_to(np.frombuffer(prefix, dtype=np.uint8), (len(product_idx), len(prefix)))
    return np.hstack([head, _digits(x, _ALNUM36, width)])


def asins(product_idx: np.ndarray, prefix: bytes = b"B0") -> pa.Array:
    return _strings_from_codes(asin_codes(product_idx, prefix))


def user_ids(user_idx: np.ndarray) -> pa.Array:
    """28-character user ids shaped like the 2023 dump's (`A` + 27 of [A-Z2-7])."""
    a = _digits(_scramble(user_idx, 32 ** 12, 2_862_933_555_777_941, 7), _ALNUM32, 12)
    b = _digits(_scramble(user_idx, 32 ** 12, 3_935_559_000_370_003, 11), _ALNUM32, 12)
    c = _digits(_scramble(user_idx, 32 ** 3, 40_503, 5), _ALNUM32, 3)
    head = np.full((len(user_idx), 1), ord("A"), dtype=np.uint8)
    return _strings_from_codes(np.hstack([head, a, b, c]))


def power_law_draws(rng: np.random.Generator, n: int, n_items: int, s: float, c: float) -> np.ndarray:
    """n i.i.d. ranks in [0, n_items) with density ~ (rank + c)^-s (inverse CDF; s != 1).

    s < 1 with a moderate offset c gives the reviews' shape: most users/products appear once or a few times, a
    few hundred thousand times more often (s=0.8, c=100 over n users: ~40% distinct, top users ~thousands)."""
    u = rng.random(n)
    a, b = c ** (1 - s), (n_items + c) ** (1 - s)
    x = (a + u * (b - a)) ** (1 / (1 - s)) - c
    return np.clip(x.astype(np.int64), 0, n_items - 1)


# ----------------------------------------------------------------------------------------------- text

class TextPool:
    """A large buffer of word-like text; a field value is a slice of it cut at word boundaries."""

    def __init__(self, seed: int, n_bytes: int = POOL_BYTES):
        rng = np.random.default_rng([seed, 99])
        syllables = [c + v for c in "bcdfghjklmnprstvwxz" for v in "aeiouy"] + ["th", "ch", "st", "er", "an"]
        n_words = 30_000
        words = ["".join(rng.choice(syllables, rng.integers(1, 5))) for _ in range(n_words)]
        words[:54] = ["the", "and", "a", "to", "it", "is", "for", "of", "this", "with", "I", "in", "that", "my",
                      "on", "not", "but", "you", "have", "was", "great", "use", "cable", "works", "USB-C", "4K",
                      "HDMI", "1080p", "5V", "2.4GHz", "Bluetooth", "battery", "charger", "it's", "don't", "café",
                      "naïve", "½", "—", "100%", "(2-Pack)", "[Upgraded]", "mAh", "Wi-Fi", "speaker", "case",
                      "screen", "fast", "easy", "would", "recommend", "price", "quality", "sound"]
        # Markup and JSON-escaped characters at a rank that puts them in a few percent of long texts.
        words[1500:1506] = ["&amp;", "&quot;", "<br>", "<br />", "\"quoted\"", "back\\slash"]
        words = [w.capitalize() if i % 7 == 3 else w for i, w in enumerate(words)]
        punct = [",", ".", "!", "?", ";", ":"]
        weights = 1.0 / np.arange(1, n_words + 1) ** 1.05
        weights /= weights.sum()
        # Fixed-width token table (NUL-padded, space-terminated): gathering rows and dropping NULs builds the
        # pool without a Python object per token.
        tokens = [w.encode() + b" " for w in words] + [p.encode() + b" " for p in punct]
        width = max(len(t) for t in tokens)
        table = np.zeros((len(tokens), width), dtype=np.uint8)
        for i, t in enumerate(tokens):
            table[i, :len(t)] = np.frombuffer(t, dtype=np.uint8)
        cdf = np.cumsum(weights)
        chunks, size, step = [], 0, 1 << 20
        while size < n_bytes:
            idx = np.minimum(np.searchsorted(cdf, rng.random(step)), n_words - 1)
            sentence_end = rng.random(step) < 0.08
            idx[sentence_end] = n_words + rng.integers(0, len(punct), int(sentence_end.sum()))
            rows = table[idx].ravel()
            chunks.append(rows[rows != 0])
            size += len(chunks[-1])
        self.data = np.concatenate(chunks)[:n_bytes].tobytes()
        buf = np.frombuffer(self.data, dtype=np.uint8)
        self.spaces = np.flatnonzero(buf == ord(" ")).astype(np.int64)

    def slices(self, rng: np.random.Generator, lengths: np.ndarray) -> pa.Array:
        """len(lengths) strings of about those byte lengths (cut at spaces; trailing space kept: strip later)."""
        lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 0)
        total = int(lengths.sum()) + 64 * len(lengths) + 64
        if total >= len(self.data):
            raise ValueError(f"{total} text bytes requested from a {len(self.data)}-byte pool; use smaller parts")
        start = int(rng.integers(0, len(self.data) - total))
        ends = start + np.cumsum(lengths)
        cut = self.spaces[np.minimum(np.searchsorted(self.spaces, ends), len(self.spaces) - 1)] + 1
        cut = np.maximum.accumulate(np.concatenate([[start], cut]))
        first = int(np.searchsorted(self.spaces, start))
        cut[0] = self.spaces[first] + 1  # start after a space: never split a UTF-8 sequence
        cut = np.maximum.accumulate(cut)
        offsets = (cut - cut[0]).astype(np.int64)
        data = self.data[cut[0]:cut[-1]]
        return pa.Array.from_buffers(pa.large_string(), len(lengths), [None, pa.py_buffer(offsets),
                                                                     pa.py_buffer(data)])


def _text(pool: TextPool, rng: np.random.Generator, lengths: np.ndarray) -> pl.Series:
    return pl.Series(pool.slices(rng, lengths)).str.strip_chars_end(" ")


def _lognormal_lengths(rng: np.random.Generator, n: int, median: float, sigma: float, cap: int) -> np.ndarray:
    return np.minimum(rng.lognormal(np.log(median), sigma, n), cap).astype(np.int64)


def _list_of(values: pl.Series, counts: np.ndarray) -> pl.Series:
    """Group a flat series into lists of `counts` items each (Arrow offsets, no Python loop)."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    arr = values.to_arrow()
    return pl.Series(pa.LargeListArray.from_arrays(pa.array(offsets), arr))


# ----------------------------------------------------------------------------------------------- workers

_POOLS: dict[tuple[int, int], TextPool] = {}


def _pool(seed: int, rows: int, bytes_per_row: int) -> TextPool:
    """The worker's text pool, sized for the largest field of a part (small runs build a small one)."""
    n_bytes = int(min(POOL_BYTES, max(1 << 22, 2 * rows * bytes_per_row)))
    n_bytes = 1 << max(22, (n_bytes - 1).bit_length())  # few distinct sizes -> reused across parts
    key = (seed, n_bytes)
    if key not in _POOLS:
        _POOLS.clear()
        _POOLS[key] = TextPool(seed, n_bytes)
    return _POOLS[key]


def _ndjson(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_ndjson(buf)
    return buf.getvalue()


def _break_lines(payload: bytes, rng: np.random.Generator, rate: float, kinds: list[bytes]) -> tuple[bytes, int]:
    """Replace a `rate` share of lines with broken JSON (truncated objects or the given bad lines)."""
    ends = np.flatnonzero(np.frombuffer(payload, dtype=np.uint8) == ord("\n"))
    n_bad = int(rng.binomial(len(ends), rate))
    if n_bad == 0:
        return payload, 0
    starts = np.concatenate([[0], ends[:-1] + 1])
    out, prev = [], 0
    for i in np.sort(rng.choice(len(ends), n_bad, replace=False)):
        line = payload[starts[i]:ends[i]]
        kind = int(rng.integers(0, len(kinds) + 1))
        out += [payload[prev:starts[i]], line[: max(1, len(line) // 2)] if kind == len(kinds) else kinds[kind]]
        prev = int(ends[i])
    out.append(payload[prev:])
    return b"".join(out), n_bad


def _review_part(args: tuple[int, int, int, int, int, int]) -> tuple[bytes, dict[str, int]]:
    seed, part, start, n, n_products, n_users = args
    rng = np.random.default_rng([seed, 2, part])
    pool = _pool(seed, n, 560)
    # Who bought what: a heavy-tailed user activity; products partly by global popularity, partly near a
    # user-specific anchor (so users' purchases overlap and the co-purchase projection has structure).
    users = power_law_draws(rng, n, n_users, s=0.8, c=100.0)
    users = _scramble(users, n_users, _coprime(n_users, 1_000_003), 17)
    popular = _scramble(power_law_draws(rng, n, n_products, s=0.9, c=50.0), n_products, _coprime(n_products, 7919), 3)
    anchor = _scramble(users, n_products, _coprime(n_products, 104_729), 11)
    near = (anchor + rng.geometric(0.02, n) * rng.choice([-1, 1], n)) % n_products
    products = np.where(rng.random(n) < 0.5, popular, near)
    dup = rng.random(n) < REVIEW_DEFECTS["duplicate"]  # exact re-posts of the last original review
    dup[0] = False
    src = np.maximum.accumulate(np.where(dup, 0, np.arange(n)))
    text_len = np.where(rng.random(n) < 0.08, rng.integers(0, 25, n), _lognormal_lengths(rng, n, 260, 0.9, 12000))
    title_len = _lognormal_lengths(rng, n, 22, 0.6, 200)
    timestamp = (946_684_800_000 + (rng.beta(4, 1.3, n) * (1_695_000_000_000 - 946_684_800_000))).astype(np.int64)
    helpful = np.where(rng.random(n) < 0.7, 0, np.minimum(rng.zipf(1.8, n), 20_000)).astype(np.int64)
    child = np.where(rng.random(n) < 0.3, products + 7 * n_products, products)
    n_images = np.where(rng.random(n) < 0.05, rng.integers(1, 4, n), 0)
    image_ids = _strings_from_codes(_digits(rng.integers(0, 62 ** 8, int(n_images.sum())), _ALNUM62, 8))
    image_url = pl.Series(image_ids)
    images = pl.DataFrame({
        "small_image_url": "https://images-na.ssl-images-amazon.com/images/I/" + image_url + "._SL256_.jpg",
        "medium_image_url": "https://images-na.ssl-images-amazon.com/images/I/" + image_url + "._SL800_.jpg",
        "large_image_url": "https://images-na.ssl-images-amazon.com/images/I/" + image_url + ".jpg",
        "attachment_type": pl.repeat("IMAGE", len(image_url), eager=True),
    }).to_struct("s")
    df = pl.DataFrame({
        "rating": rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], n, p=[0.08, 0.05, 0.08, 0.16, 0.63]),
        "title": _text(pool, rng, title_len),
        "text": _text(pool, rng, text_len),
        "images": _list_of(images, n_images),
        "asin": pl.Series(asins(child % (8 * n_products), b"B0")),
        "parent_asin": pl.Series(asins(products)),
        "user_id": pl.Series(user_ids(users)),
        "timestamp": timestamp,
        "helpful_vote": helpful,
        "verified_purchase": rng.random(n) < 0.9,
    })
    df = df[src]
    payload, n_bad = _break_lines(_ndjson(df), rng, REVIEW_DEFECTS["bad_json"], [b"{\"rating\": 5.0, \"title\""])
    return _gzip.compress(payload, _GZIP_LEVEL), {"rows": n, "bad_json": n_bad, "duplicate": int(dup.sum()),
                                                 "raw_bytes": len(payload)}


_MAIN_CATEGORIES = ["All Electronics", "Computers", "Cell Phones & Accessories", "Home Audio & Theater",
                    "Camera & Photo", "Amazon Devices", "Industrial & Scientific", "Car Electronics",
                    "Portable Audio & Accessories", "Video Games", "Musical Instruments", "Office Products"]
_CATEGORY_LEVELS = [
    ["Electronics"],
    ["Computers & Accessories", "Camera & Photo", "Cell Phones & Accessories", "Headphones, Earbuds & Accessories",
     "Home Audio", "Television & Video", "Accessories & Supplies", "Car & Vehicle Electronics",
     "Portable Audio & Video", "Wearable Technology", "Video Projectors", "GPS, Finders & Accessories"],
    [f"Subcategory {i}" for i in range(120)],
    [f"Leaf {i}" for i in range(900)],
    [f"Leaf detail {i}" for i in range(3000)],
]
_DETAIL_KEYS = ["Brand", "Item Weight", "Product Dimensions", "Item model number", "Date First Available",
                "Manufacturer", "Color", "Connectivity Technology", "Batteries", "Best Sellers Rank"]


def _pick(rng: np.random.Generator, values: list[str], n: int) -> pl.Series:
    return pl.Series(np.asarray(values, dtype=object)[rng.choice(len(values), n)], dtype=pl.String)


def _image_structs(rng: np.random.Generator, counts: np.ndarray) -> pl.Series:
    """`images` lists: MAIN first, then PT01..; thumb/large always, hi_res for ~75%."""
    total = int(counts.sum())
    ids = pl.Series(_strings_from_codes(np.hstack([
        np.broadcast_to(np.frombuffer(b"71", dtype=np.uint8), (total, 2)),
        _digits(rng.integers(0, 62 ** 9, total), _ALNUM62, 9)])))
    first = np.zeros(total, dtype=bool)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    first[starts[counts > 0]] = True
    pos = np.arange(total) - np.repeat(starts, counts)
    base = IMAGE_BASE + ids
    flat = pl.DataFrame({
        "thumb": base + "._AC_US40_.jpg",
        "large": base + "._AC_.jpg",
        "variant": pl.Series(np.where(first, "MAIN", np.char.add("PT", np.char.zfill(pos.astype(str), 2)))),
        "hi_res": pl.select(pl.when(pl.lit(pl.Series(rng.random(total) < 0.75)))
                            .then(base + "._AC_SL1500_.jpg")).to_series(),
    })
    return _list_of(flat.to_struct("s"), counts)


def _meta_part(args: tuple[int, int, int, int]) -> tuple[bytes, dict[str, int]]:
    seed, part, start, n = args
    rng = np.random.default_rng([seed, 1, part])
    pool = _pool(seed, n, 1000)
    idx = np.arange(start, start + n, dtype=np.int64)
    duplicate = rng.random(n) < META_DEFECTS["duplicate_id"]  # a product listed again (same id, new content)
    duplicate[0] = False
    idx[duplicate] = idx[np.flatnonzero(duplicate) - 1]
    n_features = np.minimum(rng.poisson(5, n), 12)
    n_desc = rng.choice([0, 1, 2, 3], n, p=[0.3, 0.55, 0.1, 0.05])
    n_images = np.maximum(1, np.minimum(rng.poisson(5, n), 12))
    no_image = rng.random(n) < META_DEFECTS["no_image_url"]
    n_images[no_image] = 0
    n_videos = np.where(rng.random(n) < 0.3, rng.integers(1, 4, n), 0)
    depth = rng.choice([0, 2, 3, 4, 5], n, p=[0.2, 0.1, 0.3, 0.3, 0.1])
    title = _text(pool, rng, _lognormal_lengths(rng, n, 95, 0.45, 1500))
    no_title = rng.random(n) < META_DEFECTS["no_title"]
    mojibake = rng.random(n) < META_DIRT["mojibake"]
    entity = rng.random(n) < META_DIRT["html_entity"]
    title = pl.select(pl.when(pl.lit(pl.Series(mojibake))).then("Caf\u00c3\u00a9 Don\u00e2\u20ac\u2122t " + title)
                      .when(pl.lit(pl.Series(no_title))).then(pl.lit("  "))
                      .when(pl.lit(pl.Series(entity))).then(title.str.replace(" ", " &amp; "))
                      .otherwise(title)).to_series()
    desc_items = _text(pool, rng, _lognormal_lengths(rng, int(n_desc.sum()), 440, 1.0, 30000))
    tags = pl.Series(rng.random(len(desc_items)) < META_DIRT["html_tags"])
    desc_items = pl.select(pl.when(pl.lit(tags)).then("<p>" + desc_items.str.replace(" ", "<br /> ", n=3) + "</p>")
                           .otherwise(desc_items)).to_series()
    price = np.round(np.exp(rng.normal(3.3, 1.1, n)), 2)
    price_kind = rng.choice(3, n, p=[0.55, 0.45 - META_DIRT["price_none_string"], META_DIRT["price_none_string"]])
    # Numbers and the string "None" share one JSON field: numbers go out as marked strings, unquoted below.
    price_text = pl.select(pl.when(pl.lit(pl.Series(price_kind == 0))).then("\u0001" + pl.lit(pl.Series(price))
                                                                          .cast(pl.String) + "\u0002")
                           .when(pl.lit(pl.Series(price_kind == 2))).then(pl.lit("None"))).to_series()
    levels = [np.asarray(level, dtype=object) for level in _CATEGORY_LEVELS]
    cat_items = [levels[k][rng.integers(0, len(levels[k]), n)] for k in range(len(levels))]
    cat_flat = np.stack(cat_items, axis=1)[np.arange(5)[None, :] < depth[:, None]]
    details = pl.DataFrame({k: _pick(rng, [f"{k} value {i}" for i in range(200)], n) for k in _DETAIL_KEYS})
    details = details.with_columns(pl.when(pl.lit(pl.Series(rng.random(n) < 0.3))).then(None)
                                   .otherwise(pl.col(k)).alias(k) for k in _DETAIL_KEYS[5:])
    video_ids = pl.Series(_strings_from_codes(_digits(rng.integers(0, 36 ** 10, int(n_videos.sum())), _ALNUM36, 10)))
    videos = pl.DataFrame({"title": _text(pool, rng, _lognormal_lengths(rng, len(video_ids), 40, 0.5, 200)),
                           "url": "https://www.amazon.com/vdp/" + video_ids,
                           "user_id": pl.repeat("", len(video_ids), eager=True)}).to_struct("s")
    parent = pl.Series(asins(idx))
    bad_id = rng.random(n) < META_DEFECTS["bad_id"]
    parent = pl.select(pl.when(pl.lit(pl.Series(bad_id))).then(parent.str.to_lowercase().str.slice(0, 9))
                       .otherwise(parent)).to_series()
    df = pl.DataFrame({
        "main_category": _pick(rng, _MAIN_CATEGORIES, n),
        "title": title,
        "average_rating": np.round(rng.uniform(1, 5, n), 1),
        "rating_number": np.minimum(rng.zipf(1.6, n), 500_000),
        "features": _list_of(_text(pool, rng, _lognormal_lengths(rng, int(n_features.sum()), 110, 0.6, 2000)),
                             n_features),
        "description": _list_of(desc_items, n_desc),
        "price": price_text,
        "images": _image_structs(rng, n_images),
        "videos": _list_of(videos, n_videos),
        "store": _text(pool, rng, rng.integers(3, 24, n)),
        "categories": _list_of(pl.Series(cat_flat.astype(str)), depth),
        "details": details.to_struct("s"),
        "parent_asin": parent,
        "bought_together": pl.repeat(None, n, dtype=pl.String, eager=True),
    })
    payload = _ndjson(df).replace(b'"\\u0001', b"").replace(b'\\u0002"', b"")
    payload, n_bad = _break_lines(payload, rng, META_DEFECTS["bad_json"] + META_DEFECTS["not_an_object"],
                                  [b"null", b"[]"])
    counts = {"rows": n, "bad_json+not_an_object": n_bad, "bad_id": int(bad_id.sum()),
              "duplicate_id": int(duplicate.sum()), "no_title": int(no_title.sum()), "no_image": int(no_image.sum()),
              "mojibake": int(mojibake.sum()), "raw_bytes": len(payload)}
    return _gzip.compress(payload, _GZIP_LEVEL), counts


def _run_parts(path: Path, make_part: Callable, tasks: list[tuple], workers: int | None,
               progress: bool) -> tuple[dict[str, int], int]:
    """Generate parts in worker processes and append them to `path` in order (atomic: temp file + rename)."""
    totals: dict[str, int] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp-gen")
    workers = workers or min(len(tasks), os.cpu_count() or 1)
    compressed = 0
    with open(tmp, "wb") as fh:
        for i, (blob, counts) in enumerate(_map(make_part, tasks, workers)):
            fh.write(blob)
            compressed += len(blob)
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + v
            if progress:
                print(f"\r{path.name}: part {i + 1}/{len(tasks)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    os.replace(tmp, path)
    return totals, compressed


def _map(fn: Callable, tasks: list[tuple], workers: int) -> Iterator[Any]:
    if workers <= 1:
        yield from map(fn, tasks)
        return
    # spawn, not fork: polars' thread pool must not be forked.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        yield from ex.map(fn, tasks)


def write_reviews(path: Path | str, n_reviews: int, n_products: int, seed: int = 0, *, n_users: int | None = None,
                  workers: int | None = None, part_rows: int = REVIEW_PART_ROWS,
                  progress: bool = False) -> dict[str, Any]:
    """Write a 2023-format `reviews` .jsonl.gz with `n_reviews` lines over products 0..n_products-1.

    Fields as in the dump (rating, title, text, images, asin, parent_asin, user_id, timestamp ms, helpful_vote,
    verified_purchase ~90% true); text ~300-500 bytes on average, 8% under 25 characters; users heavy-tailed
    (about 0.4 distinct users per review at any scale — 18M at 44M — the busiest with thousands of reviews);
    `parent_asin` values equal `write_metadata`'s for the same n_products. Defects: truncated lines
    (`bad_json`) and exact re-posts (`duplicate`), counted in the returned dict."""
    path = Path(path)
    n_users = n_users or max(1, n_reviews)
    tasks = [(seed, p, s, min(part_rows, n_reviews - s), n_products, n_users)
             for p, s in enumerate(range(0, n_reviews, part_rows))]
    t0 = time.perf_counter()
    totals, compressed = _run_parts(path, _review_part, tasks, workers, progress)
    return {"path": str(path), "rows": n_reviews, "bytes": compressed, "seconds": round(time.perf_counter() - t0, 1),
            **totals}


def write_metadata(path: Path | str, n_products: int, seed: int = 0, *, workers: int | None = None,
                   part_rows: int = META_PART_ROWS, progress: bool = False) -> dict[str, Any]:
    """Write a 2023-format `meta_Electronics.jsonl.gz` with `n_products` lines (~3.2 KB each on average).

    All 2023 fields (main_category, title, average_rating, rating_number, features, description, price as
    number / null / "None", images with MAIN + PTnn variants, videos, store, categories, details, parent_asin,
    bought_together). Injected defects (rates in META_DEFECTS; counts returned): truncated or non-object lines,
    malformed ids, repeated ids, blank titles, no images; plus dirt that cleaning must handle (HTML tags in
    ~10% of description items, entities, mojibake)."""
    path = Path(path)
    tasks = [(seed, p, s, min(part_rows, n_products - s)) for p, s in enumerate(range(0, n_products, part_rows))]
    t0 = time.perf_counter()
    totals, compressed = _run_parts(path, _meta_part, tasks, workers, progress)
    return {"path": str(path), "rows": n_products, "bytes": compressed,
            "seconds": round(time.perf_counter() - t0, 1), **totals}


def _count(text: str) -> int:
    """'1.6M', '100k', '20000' -> int."""
    t = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--products", type=_count, default=1_600_000, help="metadata lines (default 1.6M)")
    ap.add_argument("--reviews", type=_count, default=20_000_000, help="review lines (default 20M; 0 = none)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default bench/out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    ap.add_argument("--force", action="store_true", help="regenerate files that exist already")
    args = ap.parse_args(argv)
    folder = args.out / f"electronics-p{args.products}-r{args.reviews}-s{args.seed}"
    jobs = [("meta_Electronics.jsonl.gz", lambda p: write_metadata(p, args.products, args.seed,
                                                                  workers=args.workers or None, progress=True))]
    if args.reviews:
        jobs.append(("Electronics.jsonl.gz", lambda p: write_reviews(p, args.reviews, args.products, args.seed,
                                                                      workers=args.workers or None, progress=True)))
    for name, make in jobs:
        path = folder / name
        if path.exists() and not args.force:
            print(f"cached: {path}", file=sys.stderr)
        else:
            print(json.dumps(make(path)), file=sys.stderr)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
