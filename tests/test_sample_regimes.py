"""The sample generator's regime knobs: each moves the statistic it claims to, measured on the generated catalog,
the defaults write the historical sample, and a bad knob stops `slip-etl build` with one line naming it."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from etl.sample import generate_catalog
from etl.sample.generator import plan_catalog
from etl.sample.knobs import SampleKnobs, parse_knobs
from etl.sample.stats import graph_stats, shared_image_share

N = 500  # products: enough edges for stable shares, about a second per plan
SEEDS = (0, 1)


def _stat(name: str, **knobs: float) -> float:
    """The statistic averaged over two seeds, so a knob's effect is not one seed's luck."""
    values = []
    for seed in SEEDS:
        products, _, purchases, _ = plan_catalog(seed, N, SampleKnobs(**knobs))
        values.append(graph_stats(products, purchases)[name])
    return sum(values) / len(values)


@pytest.mark.parametrize("knob, low, high, statistic, direction", [
    ("brand_loyalty", 0.0, 1.0, "within_brand_share", +1),
    ("category_focus", 0.0, 1.0, "within_group_share", +1),
    ("substitute_share", 0.0, 0.9, "cross_leaf_share", -1),
    ("users_per_product", 1.5, 8.0, "edges_per_node", +1),
    ("noise_share", 0.0, 0.6, "within_group_share", -1),
])
def test_each_knob_moves_its_statistic(knob: str, low: float, high: float, statistic: str, direction: int) -> None:
    at_low, at_high = _stat(statistic, **{knob: low}), _stat(statistic, **{knob: high})
    # a clear effect, not noise: at least 5 % of the lower value (observed effects are 10 %-90 %)
    assert direction * (at_high - at_low) > 0.05 * min(at_low, at_high), (knob, at_low, at_high)


def test_near_duplicates_share_image_bytes_and_differ_in_a_title_word(tmp_path: Path) -> None:
    plain = generate_catalog(tmp_path / "plain", n_products=120, seed=3)
    dup_truth = generate_catalog(tmp_path / "dups", n_products=120, seed=3, knobs={"near_duplicate_share": 0.3})
    assert "knobs" not in plain and dup_truth["knobs"] == {"near_duplicate_share": 0.3}
    assert shared_image_share(tmp_path / "plain") < 0.02
    assert shared_image_share(tmp_path / "dups") > 0.4  # 36 copies and their originals (a few lost to defects)

    titles = {}
    with gzip.open(tmp_path / "dups" / dup_truth["files"]["meta_2023"]["path"], "rt", encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("title"):
                titles.setdefault(record["parent_asin"], record["title"])
    pairs = [(titles[p["asin"]], titles[p["of"]]) for p in dup_truth["near_duplicates"]
             if p["asin"] in titles and p["of"] in titles]
    assert len(pairs) >= 30
    close = [a != b and len(set(a.split()) ^ set(b.split())) <= 3 for a, b in pairs]
    assert sum(close) >= 0.8 * len(pairs)  # the rest carry a planted text defect (html, mojibake, empty title)


def test_default_knobs_write_the_same_bytes_as_no_knobs(tmp_path: Path) -> None:
    a = generate_catalog(tmp_path / "a", n_products=60, seed=5)
    b = generate_catalog(tmp_path / "b", n_products=60, seed=5, knobs=SampleKnobs(noise_share=0.08))
    assert a["files"] == b["files"] and "knobs" not in b
    c = generate_catalog(tmp_path / "c", n_products=60, seed=5, knobs={"noise_share": 0.3})
    assert c["files"]["reviews_2023"] != a["files"]["reviews_2023"] and c["knobs"] == {"noise_share": 0.3}


def test_bad_knob_values_are_refused_naming_the_knob() -> None:
    with pytest.raises(ValueError, match="unknown knob 'loyalty'"):
        parse_knobs({"loyalty": 0.5})
    with pytest.raises(ValueError, match="brand_loyalty"):
        parse_knobs({"brand_loyalty": 1.5})


def test_build_with_an_unknown_knob_exits_2_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "etl.cli", "build", "--source", "sample", "--out", str(tmp_path),
                           "--set", "sources.sample.sample_products=50",
                           "--set", "sources.sample.sample_knobs.loyalty=0.5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "sources.sample.sample_knobs" in lines[0] and "loyalty" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
