"""Text cleaning for product and review text, as polars expressions (vectorised, usable in lazy queries).

Scraped Amazon text carries HTML (tags, entities), mojibake (UTF-8 bytes once decoded as cp1252/latin-1:
"cafÃ©" for "café"), stray control characters and runs of whitespace, and some values are megabytes long. The
steps, in the order `clean_text` applies them:

1. `strip_html`: `<script>`/`<style>` elements are dropped with their contents; block tags (`<br>`, `<p>`,
   `<li>`, `<div>`, ...) become a space so words on either side do not glue; every other tag is removed. A `<`
   not followed by a letter, `/` or `!` is text ("5 < 10", "<3") and stays. Then `;`-terminated character
   references (`&amp;`, `&#39;`, `&#x2013;`) are decoded once (so "&amp;lt;" becomes the text "&lt;"); the
   semicolon-less legacy forms are left alone, so "AT&T" and "R&D" never change. Common named entities are
   replaced in Rust (Aho-Corasick); only values holding another reference go through Python's `html.unescape`.
   Tags are stripped before references are decoded: an escaped tag ("&lt;b&gt;") is text that was meant to be
   shown, and stays visible.
2. `repair_mojibake`: `ftfy.fix_encoding` (encoding repair only: no quote uncurling, no normalisation) on values
   that a cheap regex finds suspicious: a character that UTF-8 lead bytes become in cp1252/latin-1 ("Ã", "Â",
   "â", ...) followed by one that continuation bytes become. ftfy costs ~10-50 µs per value, so running it on
   every value would dominate the stage; the pre-filter passes ~0.1-1 % of real values. ftfy itself is
   conservative: a suspicious but legitimate value ("é®") comes back unchanged.
   Runs before whitespace normalisation: mojibake of a no-break space is "Â" + U+00A0, which step 3 would break.
3. `normalize_whitespace`: invisible control and format characters (C0/C1 controls other than whitespace,
   zero-width space, BOM, soft hyphen, word joiner, and every bidirectional control: marks U+200E/U+200F/U+061C,
   embeddings and overrides U+202A-U+202E, isolates U+2066-U+2069, which can make a title display as
   something other than its characters, e.g. U+202E reversing the rest of it) are removed; every run of Unicode
   whitespace (including no-break space and line/paragraph separators) becomes one space; the ends are stripped.
4. `cap_chars`: at most `max_chars` characters, cut at the last whitespace before the limit so no word is split,
   unless that would keep less than half the limit (one huge token): then a hard cut.

Cost: most values need none of steps 1-3, so `clean_series` first finds the values that do with one regex
scan (markup, suspicious mojibake, control characters, whitespace other than single spaces between words) and
runs the steps on those only; the cap looks at byte lengths first (O(1)) and counts characters only for values
that may be too long. `clean_series` also counts what each step changed (`CleaningCounts`).

`clean_string` gives the same result for one Python string (it runs the same code).
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass

import ftfy
import polars as pl

_DROP_ELEMENTS = r"(?is)<script\b[^>]*>.*?</script\s*>|<style\b[^>]*>.*?</style\s*>|<!--.*?-->"
_BLOCK_TAGS = (r"(?i)</?(?:br|p|div|li|ul|ol|dl|dt|dd|tr|td|th|table|tbody|thead|h[1-6]|hr|blockquote|pre|"
               r"section|article|header|footer)\b[^<>]*>")
_ANY_TAG = r"</?[A-Za-z][^<>]*>|<![^<>]*>"
ENTITY = r"&(?:#[0-9]+|#[xX][0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);"
_ENTITY_PY = re.compile(ENTITY)

# The references that make up nearly all of Amazon's; decoded in Rust. Anything else goes through html.unescape.
COMMON_ENTITIES = {
    "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'", "&#39;": "'", "&#039;": "'",
    "&#34;": '"', "&nbsp;": "\u00a0", "&#160;": "\u00a0", "&ndash;": "\u2013", "&mdash;": "\u2014",
    "&lsquo;": "\u2018", "&rsquo;": "\u2019", "&ldquo;": "\u201c", "&rdquo;": "\u201d", "&hellip;": "\u2026",
    "&reg;": "\u00ae", "&trade;": "\u2122", "&copy;": "\u00a9", "&deg;": "\u00b0", "&times;": "\u00d7",
    "&frac12;": "\u00bd", "&bull;": "\u2022", "&middot;": "\u00b7", "&eacute;": "\u00e9", "&#8217;": "\u2019",
    "&#8220;": "\u201c", "&#8221;": "\u201d", "&#8211;": "\u2013", "&#8212;": "\u2014", "&#8482;": "\u2122",
    "&#174;": "\u00ae", "&#176;": "\u00b0",
}

# What UTF-8 lead bytes (0xC2-0xF4) and continuation bytes (0x80-0xBF) look like when decoded as cp1252/latin-1.
_CP1252_CONTINUATION = "\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u017d\u2018" \
                       "\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178"
MOJIBAKE_SUSPECT = f"[\u00c2-\u00f4][\u0080-\u00bf{_CP1252_CONTINUATION}]"

# Bidirectional controls (Unicode UAX #9): marks, embeddings/overrides, isolates. Literal characters in a class.
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_INVISIBLE = r"[\p{Cc}&&[^\t\n\v\f\r\u0085]]|[\u200b\u2060\ufeff\u00ad" + BIDI_CONTROLS + "]"
_WHITESPACE = r"\s+"
# Anything steps 1-3 could change: a tag or reference start, a control/format character, whitespace that is not
# a single space between words, or a mojibake pair.
_NEEDS_WORK = (r"[<&\p{Cc}\u200b\u2060\ufeff\u00ad" + BIDI_CONTROLS + r"]|\s\s|[^\S ]|^\s|\s$|" + MOJIBAKE_SUSPECT)


def _replace_at(series: pl.Series, idx: pl.Series, values: pl.Series) -> pl.Series:
    """A copy of `series` with `values` at `idx` (polars' scatter mutates in place; callers keep their input)."""
    return series.clone().scatter(idx, values)


def _python_on_subset(series: pl.Series, suspect: pl.Series, fix) -> pl.Series:
    """Apply a Python function only where `suspect` is true; everything else is left as it is (no copy of it)."""
    idx = suspect.fill_null(False).arg_true()
    if idx.len() == 0:
        return series
    fixed = pl.Series([fix(v) for v in series.gather(idx).to_list()], dtype=pl.String)
    return _replace_at(series, idx, fixed)


def _decode_references(value: str) -> str:
    return _ENTITY_PY.sub(lambda m: html.unescape(m.group(0)), value)


def _unescape_batch(series: pl.Series) -> pl.Series:
    has_ref = series.str.contains(ENTITY)
    if not has_ref.any():
        return series
    idx = has_ref.arg_true()
    subset = series.gather(idx)
    common, values = list(COMMON_ENTITIES), list(COMMON_ENTITIES.values())
    # Values whose references are all common ones are decoded in Rust; the rest in Python (exact HTML5 table),
    # from the original value so nothing is decoded twice.
    exotic = subset.str.replace_many(common, [""] * len(common), leftmost=True).str.contains(ENTITY)
    decoded = subset.str.replace_many(common, values, leftmost=True)
    if exotic.any():
        decoded = _replace_at(decoded, exotic.arg_true(), _python_on_subset(subset, exotic, _decode_references)
                                  .filter(exotic))
    return _replace_at(series, idx, decoded)


def unescape_entities(expr: pl.Expr) -> pl.Expr:
    """Decode `;`-terminated character references once (named, decimal, hex)."""
    return expr.map_batches(_unescape_batch, return_dtype=pl.String, is_elementwise=True)


def strip_html(expr: pl.Expr) -> pl.Expr:
    """Drop script/style/comments, turn block tags into spaces, remove other tags, then decode references."""
    stripped = (expr.str.replace_all(_DROP_ELEMENTS, " ")
                .str.replace_all(_BLOCK_TAGS, " ")
                .str.replace_all(_ANY_TAG, ""))
    return unescape_entities(stripped)


def _repair_batch(series: pl.Series) -> pl.Series:
    return _python_on_subset(series, series.str.contains(MOJIBAKE_SUSPECT), ftfy.fix_encoding)


def repair_mojibake(expr: pl.Expr) -> pl.Expr:
    """ftfy's encoding repair, on suspicious values only."""
    return expr.map_batches(_repair_batch, return_dtype=pl.String, is_elementwise=True)


def normalize_whitespace(expr: pl.Expr) -> pl.Expr:
    """Remove invisible control/format characters, collapse whitespace runs to one space, strip the ends."""
    return expr.str.replace_all(_INVISIBLE, "").str.replace_all(_WHITESPACE, " ").str.strip_chars(" ")


def _cap_series(series: pl.Series, max_chars: int) -> pl.Series:
    maybe = (series.str.len_bytes() > max_chars).fill_null(False)  # chars <= bytes: most values stop here
    if not maybe.any():
        return series
    candidates = maybe.arg_true()
    long = (series.gather(candidates).str.len_chars() > max_chars)
    if not long.any():
        return series
    idx = candidates.filter(long)
    subset = series.gather(idx)
    # Drop the word the limit cuts into (or the whitespace just past the limit) from the first max_chars + 1.
    at_word = subset.str.slice(0, max_chars + 1).str.replace(r"\s*\S*$", "")
    hard = subset.str.slice(0, max_chars).str.strip_chars_end(" ")
    capped = pl.select(pl.when(at_word.str.len_chars() >= max_chars // 2).then(at_word).otherwise(hard)).to_series()
    return _replace_at(series, idx, capped)


def cap_chars(expr: pl.Expr, max_chars: int) -> pl.Expr:
    """At most `max_chars` characters, cut at a word boundary (hard cut if that keeps < half the limit)."""
    return expr.map_batches(lambda s: _cap_series(s, max_chars), return_dtype=pl.String, is_elementwise=True)


@dataclass
class CleaningCounts:
    """How many values each step changed (values = non-null values seen)."""

    values: int = 0
    html_cleaned: int = 0
    mojibake_repaired: int = 0
    truncated: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def clean_series(series: pl.Series, max_chars: int | None = None, counts: CleaningCounts | None = None) -> pl.Series:
    """All steps on a Series (HTML -> mojibake -> whitespace -> cap), touching only values that need a step."""
    series = series.cast(pl.String)
    if counts is not None:
        counts.values += len(series) - series.null_count()
    work = series.str.contains(_NEEDS_WORK).fill_null(False)
    if work.any():
        idx = work.arg_true()
        raw = series.gather(idx)
        steps = (pl.DataFrame({"raw": raw})
                 .with_columns(strip_html(pl.col("raw")).alias("html"))
                 .with_columns(repair_mojibake(pl.col("html")).alias("moji"))
                 .with_columns(normalize_whitespace(pl.col("moji")).alias("out")))
        if counts is not None:
            counts.html_cleaned += int((steps["html"] != steps["raw"]).sum())
            counts.mojibake_repaired += int((steps["moji"] != steps["html"]).sum())
        series = _replace_at(series, idx, steps["out"])
    if max_chars is None:
        return series
    capped = _cap_series(series, max_chars)
    if counts is not None:
        counts.truncated += int((capped.str.len_bytes() != series.str.len_bytes()).sum())
    return capped


def clean_text(expr: pl.Expr, max_chars: int | None = None) -> pl.Expr:
    """All steps: HTML -> mojibake -> whitespace -> cap. Null stays null."""
    return expr.map_batches(lambda s: clean_series(s, max_chars), return_dtype=pl.String, is_elementwise=True)


def clean_string(value: str | None, max_chars: int | None = None) -> str | None:
    """`clean_text` for one Python string (the same expression, so the same result)."""
    if value is None:
        return None
    return clean_series(pl.Series([value], dtype=pl.String), max_chars)[0]
