"""The defects real dumps have, injected into clean records at small, documented rates.

Each file gets its own list of defect kinds with a rate; the number injected is
``max(MIN_COUNT, round(rate × n))`` (n = products for metadata, reviews for the review file), so every kind is
present even in a small catalog. Per-product kinds hit disjoint products, so each affected line has exactly one
defect and counts add up. Every injected defect is returned as a truth item (1-based line number, ASIN, details).

HTML defects are reversible: ``html.unescape`` → strip tags → collapse whitespace gives back the clean text,
which the truth item carries (``clean``). Mojibake defects are the clean text's UTF-8 bytes decoded as cp1252;
``clean`` carries the original.
"""

from __future__ import annotations

import html
import json
import random
from dataclasses import dataclass, field

from etl.sample.catalog import new_asin

MIN_COUNT = 2
RATES: dict[str, dict[str, float]] = {
    "meta_2023": {
        "truncated_json": 0.004,  # line cut short: not valid JSON
        "not_an_object": 0.001,  # extra line that is valid JSON but no object (null, a list, a number, ...)
        "duplicate_id": 0.01,  # extra line repeating an earlier product's parent_asin (other price/ratings)
        "invalid_id": 0.006,  # parent_asin lowercase, of the wrong length, or empty
        "empty_title": 0.005,  # "" or whitespace only
        "empty_categories": 0.03,  # categories == []
        "no_images": 0.008,  # images == []
        "html": 0.04,  # entities and tags in title, a feature and the description
        "mojibake": 0.02,  # UTF-8 decoded as cp1252 in title and non-ASCII features ("Ã©", "â€“", "Â°")
        "placeholder_price": 0.04,  # price == "None"
        "odd_price": 0.01,  # price is a string such as "$1,299.99" or "12.99 - 24.99"
        "long_field": 0.003,  # title or description of tens of KB
        "non_http_image_url": 0.005,  # MAIN image URLs are ftp://, data:, file:// or relative
    },
    "images": {
        "missing_image": 0.01,  # the MAIN image's preferred file (hi_res, else large) is absent: 404
        "corrupt_image": 0.01,  # that file holds bytes that are not a JPEG
    },
    "reviews_2023": {
        "truncated_json": 0.001,
        "empty_user_id": 0.005,
        "duplicate_line": 0.01,  # extra line, byte-identical to an earlier one
        "unknown_product": 0.005,  # extra review whose parent_asin is no product of the catalog
    },
    "meta_2018": {
        "truncated_json": 0.004,
        "duplicate_id": 0.01,
        "empty_title": 0.005,
        "html": 0.04,
        "placeholder_price": 0.1,  # price == ""
        "odd_price": 0.01,  # CSS junk or a range instead of "$12.99"
        "dangling_also_buy": 0.1,  # also_buy names 1-3 ASINs that are not in the file
    },
}
PRODUCT_KINDS_2023 = [kind for kind in RATES["meta_2023"] if kind != "not_an_object"] + list(RATES["images"])
ODD_PRICES_2023 = ("$1,299.99", "12.99 - 24.99", "from $9.99", "N/A", "Currently unavailable.", "USD 45")
ODD_PRICES_2018 = (".a-box-inner{background-color:#fff;}.a-box-inner{padding:8px}$19.99",
                   "$12.99 - $24.99", "$", "Click to see price")
NOT_OBJECTS = ("null", "[]", '["B00000000X"]', "42", '"B01ABCDEFG"', "true")
MOJIBAKE_SUFFIXES = (" – Édition Spéciale", " – Über Slim", " (Crème)", " 360° View", "™ Series")
NON_HTTP_URLS = {
    "ftp": "ftp://m.media-amazon.com/images/I/{id}._AC_.jpg",
    "data": "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAA==",
    "file": "file:///etc/passwd",
    "relative": "/images/I/{id}._AC_.jpg",
}
LONG_FIELD_CHARS = (20_000, 60_000)


@dataclass
class Line:
    """One output line and, if it carries an injected defect, which one."""

    text: str
    asin: str | None = None
    kind: str | None = None
    info: dict = field(default_factory=dict)


def count_for(rate: float, n: int) -> int:
    return max(MIN_COUNT, round(rate * n))


def plan_product_defects(n_products: int, rng: random.Random) -> dict[int, str]:
    """Position in the 2023 file → its one per-product defect (metadata or image), for disjoint sets."""
    rates = {**RATES["meta_2023"], **RATES["images"]}
    order = list(range(n_products))
    rng.shuffle(order)
    plan: dict[int, str] = {}
    for kind in PRODUCT_KINDS_2023:
        for _ in range(count_for(rates[kind], n_products)):
            if not order:
                raise ValueError(f"n_products={n_products} is too small to hold every defect kind")
            plan[order.pop()] = kind
    return plan


def inject_meta_2023(records: list[dict], plan: dict[int, str], rng: random.Random) -> tuple[list[str], dict]:
    """Apply the planned defects to 2023 metadata records; returns the file's lines and the truth per kind."""
    lines = []
    for position, record in enumerate(records):
        asin = record["parent_asin"]
        kind = plan.get(position)
        info = _MUTATE_2023[kind](record, rng) if kind in _MUTATE_2023 else {}
        text = _dumps(record)
        if kind == "truncated_json":
            text = _truncate(text, rng)
        lines.append(Line(text, asin, kind if kind in RATES["meta_2023"] else None, info))
    copies = []
    for original in [lines[p] for p, kind in sorted(plan.items()) if kind == "duplicate_id"]:
        original.kind = None  # the first occurrence is fine; the later copy carries the defect
        copy = json.loads(original.text)
        copy["price"] = round((copy["price"] or 20.0) * rng.uniform(0.8, 1.2), 2)
        copy["rating_number"] += rng.randint(1, 50)
        copies.append((original, Line(_dumps(copy), original.asin, "duplicate_id")))
    lines = _insert_copies(lines, copies, rng)
    for _ in range(count_for(RATES["meta_2023"]["not_an_object"], len(records))):
        lines.insert(rng.randint(0, len(lines)), Line(rng.choice(NOT_OBJECTS), None, "not_an_object"))
    return [line.text for line in lines], _truth(lines, RATES["meta_2023"])


def inject_reviews(reviews: list[dict], product_asins: set[str], rng: random.Random) -> tuple[list[str], dict]:
    """Apply review-file defects; returns the file's lines and the truth per kind."""
    rates = RATES["reviews_2023"]
    order = list(range(len(reviews)))
    rng.shuffle(order)
    kind_at = {}
    for kind in ("truncated_json", "empty_user_id", "duplicate_line"):
        for _ in range(count_for(rates[kind], len(reviews))):
            kind_at[order.pop()] = kind
    lines = []
    for position, review in enumerate(reviews):
        kind = kind_at.get(position)
        if kind == "empty_user_id":
            review = {**review, "user_id": ""}
        text = _dumps(review)
        if kind == "truncated_json":
            text = _truncate(text, rng)
        lines.append(Line(text, review["parent_asin"], kind if kind != "duplicate_line" else None))
    originals = [lines[p] for p, kind in sorted(kind_at.items()) if kind == "duplicate_line"]
    lines = _insert_copies(lines, [(o, Line(o.text, o.asin, "duplicate_line")) for o in originals], rng)
    taken = set(product_asins) | {review["asin"] for review in reviews}
    for _ in range(count_for(rates["unknown_product"], len(reviews))):
        stranger = new_asin(rng, taken)
        review = {**rng.choice(reviews), "asin": stranger, "parent_asin": stranger}
        lines.insert(rng.randint(0, len(lines)), Line(_dumps(review), stranger, "unknown_product"))
    return [line.text for line in lines], _truth(lines, rates)


def inject_meta_2018(records: list[dict], known_asins: set[str], rng: random.Random) -> tuple[list[str], dict]:
    """Apply 2018-file defects; returns the file's lines and the truth per kind."""
    rates = RATES["meta_2018"]
    order = list(range(len(records)))
    rng.shuffle(order)
    kind_at = {}
    for kind in rates:
        for _ in range(count_for(rates[kind], len(records))):
            kind_at[order.pop()] = kind
    taken = set(known_asins)
    lines = []
    for position, record in enumerate(records):
        kind = kind_at.get(position)
        info: dict = {}
        if kind == "empty_title":
            record["title"] = rng.choice(("", " "))
        elif kind == "html":
            info = _html_fields(record, ("title", "feature", "description"), rng)
        elif kind == "placeholder_price":
            record["price"] = ""
        elif kind == "odd_price":
            record["price"] = info["value"] = rng.choice(ODD_PRICES_2018)
        elif kind == "dangling_also_buy":
            strangers = [new_asin(rng, taken) for _ in range(rng.randint(1, 3))]
            for stranger in strangers:
                record["also_buy"].insert(rng.randint(0, len(record["also_buy"])), stranger)
            info["missing"] = strangers
        text = _dumps(record)
        if kind == "truncated_json":
            text = _truncate(text, rng)
        lines.append(Line(text, record["asin"], kind if kind != "duplicate_id" else None, info))
    copies = []
    for original in [lines[p] for p, kind in sorted(kind_at.items()) if kind == "duplicate_id"]:
        copy = json.loads(original.text)
        copy["rank"] = copy["rank"].replace(">#", ">#1")
        copies.append((original, Line(_dumps(copy), original.asin, "duplicate_id")))
    lines = _insert_copies(lines, copies, rng)
    return [line.text for line in lines], _truth(lines, rates)


def to_mojibake(text: str) -> str:
    """``text`` as a UTF-8 → cp1252 mix-up shows it ("é" → "Ã©")."""
    return text.encode("utf-8").decode("cp1252")


# --- per-kind mutations of a 2023 record (in place); each returns the truth item's details -------------------


def _invalid_id(record: dict, rng: random.Random) -> dict:
    subtype = rng.choice(("lowercase", "wrong_length", "empty"))
    asin = record["parent_asin"]
    record["parent_asin"] = {"lowercase": asin.lower(), "wrong_length": asin[: rng.choice((7, 9))],
                             "empty": ""}[subtype]
    return {"subtype": subtype, "value": record["parent_asin"]}


def _empty_title(record: dict, rng: random.Random) -> dict:
    record["title"] = rng.choice(("", "   "))
    return {}


def _empty_categories(record: dict, rng: random.Random) -> dict:
    record["categories"] = []
    return {}


def _no_images(record: dict, rng: random.Random) -> dict:
    record["images"] = []
    return {}


def _html(record: dict, rng: random.Random) -> dict:
    return _html_fields(record, ("title", "features", "description"), rng)


def _mojibake(record: dict, rng: random.Random) -> dict:
    clean = {"title": record["title"] + rng.choice(MOJIBAKE_SUFFIXES)}
    record["title"] = to_mojibake(clean["title"])
    for index, feature in enumerate(record["features"]):
        if not feature.isascii():
            clean[f"features[{index}]"] = feature
            record["features"][index] = to_mojibake(feature)
    return {"clean": clean}


def _placeholder_price(record: dict, rng: random.Random) -> dict:
    record["price"] = "None"
    return {}


def _odd_price(record: dict, rng: random.Random) -> dict:
    record["price"] = rng.choice(ODD_PRICES_2023)
    return {"value": record["price"]}


def _long_field(record: dict, rng: random.Random) -> dict:
    target = rng.randint(*LONG_FIELD_CHARS)
    if rng.random() < 0.5:
        record["title"] = _pad(record["title"], target)
        return {"field": "title", "chars": len(record["title"])}
    record["description"] = [_pad(" ".join(record["description"]) or record["title"], target)]
    return {"field": "description", "chars": len(record["description"][0])}


def _non_http_image_url(record: dict, rng: random.Random) -> dict:
    scheme = rng.choice(sorted(NON_HTTP_URLS))
    image_id = record["images"][0]["large"].rsplit("/", 1)[1].split(".", 1)[0]
    url = NON_HTTP_URLS[scheme].format(id=image_id)
    record["images"][0] = {"thumb": url, "large": url, "variant": "MAIN", "hi_res": None}
    return {"scheme": scheme, "url": url}


_MUTATE_2023 = {
    "invalid_id": _invalid_id, "empty_title": _empty_title, "empty_categories": _empty_categories,
    "no_images": _no_images, "html": _html, "mojibake": _mojibake, "placeholder_price": _placeholder_price,
    "odd_price": _odd_price, "long_field": _long_field, "non_http_image_url": _non_http_image_url,
}


# --- helpers --------------------------------------------------------------------------------------------------


def _html_fields(record: dict, names: tuple[str, str, str], rng: random.Random) -> dict:
    """HTML-ify the title, the first feature and the first description paragraph (those present)."""
    title, features, description = names
    clean = {title: record[title]}
    record[title] = _html_text(record[title], rng)
    for name in (features, description):
        if record[name]:
            clean[f"{name}[0]"] = record[name][0]
            record[name][0] = _html_text(record[name][0], rng)
    return {"clean": clean}


def _html_text(text: str, rng: random.Random) -> str:
    """Escape, bold one word, turn one space into ``&nbsp;`` and wrap in a tag: reversible by cleaning."""
    words = html.escape(text, quote=True).split(" ")
    bold = rng.randrange(len(words))
    words[bold] = f"<b>{words[bold]}</b>"
    joint = rng.randrange(len(words) - 1) if len(words) > 1 else None
    out = "".join(w + ("" if i == len(words) - 1 else "&nbsp;" if i == joint else " ") for i, w in enumerate(words))
    return rng.choice(("<p>{}</p>", '<span class="a-list-item">{}</span>', "{}<br/>", "<li>{}</li>")).format(out)


def _pad(text: str, target: int) -> str:
    """``text`` repeated (keyword stuffing, as sellers do) to at least ``target`` characters."""
    return " ".join([text] * (target // (len(text) + 1) + 1))


def _insert_copies(lines: list[Line], copies: list[tuple[Line, Line]], rng: random.Random) -> list[Line]:
    """``lines`` with each (original, copy) copy placed at a random point after its original (one pass)."""
    index = {id(line): i for i, line in enumerate(lines)}
    after: dict[int, list[Line]] = {}
    for original, copy in copies:
        after.setdefault(rng.randint(index[id(original)], len(lines) - 1), []).append(copy)
    merged = []
    for i, line in enumerate(lines):
        merged.append(line)
        merged.extend(after.get(i, ()))
    return merged


def _truncate(text: str, rng: random.Random) -> str:
    """A strict prefix of a JSON object is never valid JSON: cut somewhere in its middle."""
    return text[: rng.randint(len(text) // 5, len(text) * 4 // 5)]


def _dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


def _truth(lines: list[Line], rates: dict[str, float]) -> dict:
    """Per kind: rate, count and the items (1-based line number, ASIN when known, details)."""
    truth: dict = {kind: {"rate": rate, "count": 0, "items": []} for kind, rate in rates.items()}
    for number, line in enumerate(lines, start=1):
        if line.kind is not None:
            truth[line.kind]["items"].append({"line": number, "asin": line.asin, **line.info})
    for entry in truth.values():
        entry["count"] = len(entry["items"])
    return truth
