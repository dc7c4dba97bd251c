"""Stage `reviews` through the real framework on hand-made node tables: the top-K rule, every filter and rejection
reason, the accounting invariant, spill partitions, the generated sample's review defects, and 2018 (empty)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

import schemas
from etl.harness import adopt_stage, load_config, make_opts, run
from etl.sample import generate_catalog
from etl.stages import reviews
from helpers.tables import write_nodes, write_quarantine

A, B, C, D = "B00000000A", "B00000000B", "B00000000C", "B00000000D"  # C: filtered by the graph; D: no node


def review(asin: str, user: str, text: str = "A perfectly fine review text here.", *, verified: bool = True,
           helpful: int = 0, ts: int | None = 1_600_000_000_000, title: str = "Title", rating: float = 5.0) -> str:
    return json.dumps({"rating": rating, "title": title, "text": text, "images": [], "asin": asin,
                       "parent_asin": asin, "user_id": user, "timestamp": ts, "helpful_vote": helpful,
                       "verified_purchase": verified})


def setup_stage(tmp_path: Path, review_lines: list[str], asins: list[str], kept: list[bool], cfg=None,
                source: str = "amazon-2023"):
    cfg = cfg or load_config()
    opts = make_opts(tmp_path, source=source)
    files = tmp_path / "files"
    files.mkdir(parents=True)
    meta = files / "meta.jsonl.gz"
    meta.write_bytes(gzip.compress(b"{}\n"))
    fetch = {"metadata": meta}
    if review_lines is not None:
        path = files / "reviews.jsonl.gz"
        path.write_bytes(gzip.compress(("\n".join(review_lines) + "\n").encode()))
        fetch["reviews"] = path
    adopt_stage(cfg, opts, "fetch", fetch)
    n = len(asins)
    nodes_path = write_nodes(files / "nodes.parquet", n, asins=asins)
    quarantine = write_quarantine(files / "quarantine.parquet")
    adopt_stage(cfg, opts, "nodes", {"nodes": nodes_path, "quarantine": quarantine})
    node_filter = files / "node_filter.parquet"
    pl.DataFrame({"node_id": list(range(n)), "kept": kept,
                  "reason": [None if k else "k_core" for k in kept]},
                 schema={"node_id": pl.Int64, "kept": pl.Boolean, "reason": pl.String}).write_parquet(node_filter)
    adopt_stage(cfg, opts, "edges", {"node_filter": node_filter})
    return cfg, opts


def run_reviews(cfg, opts) -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    rec = run(cfg, opts, "reviews")["reviews"]
    root = opts.dataset_root
    return (rec, pl.read_parquet(root / rec["outputs"]["reviews"]["path"]),
            pl.read_parquet(root / rec["outputs"]["quarantine"]["path"]))


def test_top_k_rule_filters_and_accounting(tmp_path: Path) -> None:
    long40 = "forty characters of review text, exactly"
    assert len(long40) == 40
    lines = [
        review(A, "U1", "x" * 60, verified=False, helpful=100),              # 1 unverified: last
        review(A, "U2", "y" * 30, helpful=0),                                # 2 verified, no votes
        review(A, "U3", "z" * 25, helpful=5),                                # 3
        review(A, "U4", long40, helpful=5, ts=1_500_000_000_000),            # 4 older
        review(A, "UB", long40, helpful=5, ts=1_700_000_000_000),            # 5 newer, user UB
        review(A, "UA", long40, helpful=5, ts=1_700_000_000_000),            # 6 same, user UA sorts first
        review(A, "U2", "y" * 30, helpful=7),                                # 7 duplicate of 2 (votes differ)
        review(A, "U9", "Good"),                                             # 8 short_text
        review(A, "U8", "<p>Works&nbsp;great,</p><br>would &amp; buy   again"),  # 9 cleaned, kept rank? no: over_k
        review(C, "U1", "filtered node review text"),                        # 10 filtered_node
        review(D, "U1", "review of a product we do not have"),               # 11 unknown_product
        review("b00000000a", "U1", "lowercase parent asin is no node"),      # 12 unknown_product
        '{"rating": 5.0, "title": ',                                         # 13 bad_json
        "null",                                                              # 14 not_an_object
        review(B, "", "no user id on this review text"),                     # 15 no_user_id
        "",                                                                  # 16 blank
        review(B, "U5", "<p>Works&nbsp;great,</p><br>would &amp; buy   again", ts=None, title="<b>T</b>"),  # 17
        review(B, "U6", "a review with a null timestamp is oldest", ts=None),  # 18
        review(B, "U7", "a review with a null timestamp is oldest", ts=1),   # 19 newer than 18
    ]
    cfg, opts = setup_stage(tmp_path, lines, [A, B, C], [True, True, False],
                            load_config(overrides=["reviews.per_product=3"]))
    rec, df, q = run_reviews(cfg, opts)
    assert schemas.validate_table(df.to_arrow(), "reviews") == []
    assert schemas.validate_table(q.to_arrow(), "quarantine") == []
    got = df.select("asin", "user_id", "rank").rows()
    assert got == [(A, "UA", 0), (A, "UB", 1), (A, "U4", 2),
                   (B, "U7", 0), (B, "U6", 1), (B, "U5", 2)]  # longer text first; null timestamp = oldest
    row = df.filter(pl.col("user_id") == "U5").row(0, named=True)
    assert (row["text"], row["title"], row["timestamp"], row["node_id"]) == ("Works great, would & buy again",
                                                                             "T", None, 1)
    assert q.select("line_no", "reason").rows() == [(13, "bad_json"), (14, "not_an_object"), (15, "no_user_id")]
    assert rec["counts"] == {
        "input": 18, "kept": 6,
        "rejected": {"bad_json": 1, "not_an_object": 1, "no_user_id": 1},
        "filtered": {"unknown_product": 2, "filtered_node": 1, "short_text": 1, "duplicate": 1, "over_k": 4},
    }


def test_partitions_do_not_change_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asins = [f"B{i:09d}" for i in range(40)]
    lines = [review(asins[(i * 7) % 40], f"U{i % 13}", f"review number {i} with enough text", helpful=i % 4,
                     verified=i % 5 > 0, ts=1_600_000_000_000 + (i % 9)) for i in range(600)]
    cfg, opts = setup_stage(tmp_path / "one", lines, asins, [i % 10 != 3 for i in range(40)])
    one = run_reviews(cfg, opts)
    monkeypatch.setattr(reviews, "PARTITION_INPUT_BYTES", 512)
    cfg, opts = setup_stage(tmp_path / "many", lines, asins, [i % 10 != 3 for i in range(40)])
    many = run_reviews(cfg, opts)
    assert many[0]["stats"]["spill_partitions"] > 5
    assert one[0]["counts"] == many[0]["counts"]
    assert one[1].equals(many[1])
    assert not (opts.work_dir / "reviews" / "spill").exists()


def test_sample_review_defects(tmp_path: Path) -> None:
    root = tmp_path / "sample"
    truth = generate_catalog(root, n_products=120, seed=5)
    cfg = load_config()
    opts = make_opts(tmp_path)
    adopt_stage(cfg, opts, "fetch", {
        "metadata": root / "amazon_2023/raw/meta_categories/meta_Electronics.jsonl.gz",
        "reviews": root / "amazon_2023/raw/review_categories/Electronics.jsonl.gz"})
    nodes_rec = run(cfg, opts, "nodes")["nodes"]
    node_table = pl.read_parquet(opts.dataset_root / nodes_rec["outputs"]["nodes"]["path"])
    node_filter = tmp_path / "node_filter.parquet"
    node_table.select("node_id", pl.lit(True).alias("kept"), pl.lit(None, pl.String).alias("reason")) \
        .write_parquet(node_filter)
    adopt_stage(cfg, opts, "edges", {"node_filter": node_filter})
    rec, df, q = run_reviews(cfg, opts)
    defects = truth["defects"]["reviews_2023"]

    def lines(kind: str) -> list[int]:
        return sorted(item["line"] for item in defects[kind]["items"])

    assert sorted(q.filter(pl.col("reason") == "bad_json")["line_no"].to_list()) == lines("truncated_json")
    assert sorted(q.filter(pl.col("reason") == "no_user_id")["line_no"].to_list()) == lines("empty_user_id")
    # Expected filters, recomputed from the raw lines the obvious way.
    raw = gzip.decompress((root / "amazon_2023/raw/review_categories/Electronics.jsonl.gz").read_bytes())
    known = set(node_table["asin"])
    seen, unknown, duplicates = set(), 0, 0
    for line in raw.decode().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if not r["user_id"].strip():
            continue
        if r["parent_asin"] not in known:
            unknown += 1
            continue
        key = (r["user_id"], r["parent_asin"], r["text"], r["timestamp"])
        duplicates += key in seen
        seen.add(key)
    filtered = rec["counts"]["filtered"]
    assert filtered["unknown_product"] == unknown >= defects["unknown_product"]["count"]
    assert filtered["duplicate"] == duplicates >= 1
    assert rec["counts"]["input"] == truth["files"]["reviews_2023"]["lines"]
    assert df.group_by("node_id").len()["len"].max() <= cfg.reviews.per_product
    ranks = df.group_by("node_id").agg(pl.col("rank").sort())
    assert all(r == list(range(len(r))) for r in ranks["rank"].to_list())


def test_2018_source_gives_an_empty_table(tmp_path: Path) -> None:
    cfg, opts = setup_stage(tmp_path, None, [A], [True], source="amazon-2018")
    rec, df, q = run_reviews(cfg, opts)
    assert df.height == 0 and q.height == 0
    assert schemas.validate_table(df.to_arrow(), "reviews") == []
    assert rec["counts"] == {"input": 0, "kept": 0, "rejected": {}, "filtered": {}}
