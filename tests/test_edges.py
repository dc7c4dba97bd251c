"""Stage `edges`: the 2023 projection against a brute-force reference, 2018 list edges, graph filters against
networkx, accounting and schemas, run through the real stage framework on hand-made Parquet / jsonl.gz inputs."""
from __future__ import annotations

import gzip
import json
import random
from collections import Counter
from itertools import combinations
from pathlib import Path

import networkx as nx
import numpy as np
import polars as pl
import pytest

import schemas
from etl.core.stage import StageError
from etl.graph.filters import graph_stats, k_core_alive, largest_component_alive
from etl.graph.projection import Edges, project_copurchase, top_k_mask
from etl.harness import adopt_stage, load_config, make_opts, run
from helpers.tables import asin, write_nodes, write_quarantine

M64 = (1 << 64) - 1


# ----------------------------------------------------------------------------------------------- references

def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def brute_force(purchases: list[tuple[str, int]], *, min_user: int, max_user: int, min_weight: int, seed: int,
                heavy: str = "sample") -> dict[tuple[int, int], int]:
    """The documented projection, written the obvious way: dicts and itertools over user -> products."""
    baskets: dict[str, set[int]] = {}
    first_row: dict[str, int] = {}
    for row, (user, node) in enumerate(purchases):
        baskets.setdefault(user, set()).add(node)
        first_row.setdefault(user, row)
    pairs: Counter = Counter()
    for user, products in baskets.items():
        if len(products) < min_user:
            continue
        if len(products) > max_user:
            if heavy == "drop":
                continue
            salt = _splitmix(seed)
            ukey = _splitmix((first_row[user] + salt) & M64)
            products = set(sorted(products, key=lambda n: (_splitmix(ukey ^ n), n))[:max_user])
        for a, b in combinations(sorted(products), 2):
            pairs[(a, b)] += 1
    return {p: w for p, w in pairs.items() if w >= min_weight}


def as_dict(edges: Edges) -> dict[tuple[int, int], int]:
    assert (edges.src < edges.dst).all()
    out = {(int(a), int(b)): int(w) for a, b, w in zip(edges.src, edges.dst, edges.weight)}
    assert len(out) == len(edges), "duplicate pairs"
    return out


def random_purchases(rng: random.Random, n_users: int, n_nodes: int, heavy: int = 3) -> list[tuple[str, int]]:
    rows = []
    for u in range(n_users):
        d = rng.choice([1, 1, 2, 2, 3, 4, 6]) if u >= heavy else rng.randint(15, 40)
        rows += [(f"U{u}", rng.randrange(n_nodes)) for _ in range(d)]  # repeats = duplicate purchases
    rng.shuffle(rows)
    return rows


def project(rows, n_nodes, **kw):
    users = pl.Series([u for u, _ in rows], dtype=pl.String).hash(7).to_numpy()
    nodes = np.array([n for _, n in rows], np.int32)
    return project_copurchase(users, nodes, n_nodes, **kw)


# ----------------------------------------------------------------------------------------------- projection

@pytest.mark.parametrize("min_user,max_user,min_weight,seed,block", [
    (2, 1000, 1, 0, 10**9),   # no cap: every pair counted
    (2, 1000, 2, 0, 7),       # many tiny pair blocks
    (3, 1000, 2, 0, 50),
    (2, 10, 1, 0, 10**9),     # heavy users subsampled
    (2, 10, 2, 5, 13),
    (2, 10, 2, 6, 13),
])
def test_projection_equals_brute_force(min_user, max_user, min_weight, seed, block):
    rng = random.Random(min_user * 1000 + max_user + seed)
    rows = random_purchases(rng, n_users=300, n_nodes=60)
    edges, stats = project(rows, 60, min_user_products=min_user, max_user_products=max_user,
                           min_weight=min_weight, seed=seed, pair_block=block)
    expected = brute_force(rows, min_user=min_user, max_user=max_user, min_weight=min_weight, seed=seed)
    assert as_dict(edges) == expected
    assert stats["duplicate_purchases"] == len(rows) - len(set(rows))
    assert stats["pairs_distinct"] >= len(expected)


def test_projection_drop_policy_equals_brute_force():
    rows = random_purchases(random.Random(3), n_users=200, n_nodes=40)
    edges, stats = project(rows, 40, min_user_products=2, max_user_products=10, min_weight=1, seed=0,
                           heavy_users="drop")
    assert as_dict(edges) == brute_force(rows, min_user=2, max_user=10, min_weight=1, seed=0, heavy="drop")
    assert stats["users_capped"] == 3


def test_cap_bounds_each_heavy_user_and_reports_its_cost():
    # one heavy user with 30 products, alone: the cap leaves exactly C(cap, 2) pairs
    rows = [("H", n) for n in range(30)] + [("a", 1), ("a", 2)]
    edges, stats = project(rows, 30, min_user_products=2, max_user_products=8, min_weight=1, seed=1)
    weights = as_dict(edges)
    assert stats["users_capped"] == 1
    assert stats["pairs_generated"] == 8 * 7 // 2 + 1
    assert stats["pairs_removed_by_cap"] == 30 * 29 // 2 - 8 * 7 // 2
    assert stats["purchases_removed_by_cap"] == 22
    assert len({n for pair in weights for n in pair} - {1, 2}) <= 8
    # deterministic for a seed, different for another
    again, _ = project(rows, 30, min_user_products=2, max_user_products=8, min_weight=1, seed=1)
    other, _ = project(rows, 30, min_user_products=2, max_user_products=8, min_weight=1, seed=2)
    assert as_dict(again) == weights and as_dict(other) != weights


def test_projection_of_nothing():
    edges, stats = project([], 5, min_user_products=2, max_user_products=10, min_weight=1, seed=0)
    assert len(edges) == 0 and stats["pairs_generated"] == 0


def test_top_k_keeps_edges_in_either_endpoints_top_k():
    rng = np.random.default_rng(0)
    pairs = {tuple(sorted(rng.choice(30, 2, replace=False))) for _ in range(150)}
    src, dst = map(np.array, zip(*sorted(pairs)))
    weight = rng.integers(1, 5, len(src)).astype(np.float32)
    edges = Edges(src.astype(np.int64), dst.astype(np.int64), weight)
    for k in (1, 2, 5):
        ranked: dict[int, list[tuple[float, int, int]]] = {}
        for i, (a, b, w) in enumerate(zip(src, dst, weight)):
            ranked.setdefault(a, []).append((-w, b, i))
            ranked.setdefault(b, []).append((-w, a, i))
        expected = {i for lst in ranked.values() for _, _, i in sorted(lst)[:k]}
        assert set(np.flatnonzero(top_k_mask(edges, k))) == expected


# ----------------------------------------------------------------------------------------------- filters

def _random_graph(seed: int, n: int = 120, m: int = 160, chain: int = 200) -> tuple[np.ndarray, np.ndarray]:
    g = nx.gnm_random_graph(n, m, seed=seed)
    g.add_edges_from((i, i + 1) for i in range(n, n + chain))  # a long chain peels one node per round and end
    pairs = np.array(sorted((min(a, b), max(a, b)) for a, b in g.edges()), np.int64)
    return pairs[:, 0], pairs[:, 1]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_core_matches_networkx(k):
    src, dst = _random_graph(k)
    n = int(dst.max()) + 1
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(src.tolist(), dst.tolist()))
    alive = k_core_alive(np.ones(n, bool), src, dst, k)
    assert set(np.flatnonzero(alive)) == set(nx.k_core(g, k).nodes)


def test_largest_component_and_stats_match_networkx():
    src, dst = _random_graph(7, n=200, m=150, chain=20)
    n = int(dst.max()) + 1
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(src.tolist(), dst.tolist()))
    alive = largest_component_alive(np.ones(n, bool), src, dst)
    assert set(np.flatnonzero(alive)) == max(nx.connected_components(g), key=len)
    stats = graph_stats(np.ones(n, bool), src, dst)
    assert stats["components"] == nx.number_connected_components(g)
    assert stats["largest_component_nodes"] == len(max(nx.connected_components(g), key=len))
    assert stats["isolated_nodes"] == nx.number_of_isolates(g)
    assert stats["degree"]["max"] == max(d for _, d in g.degree())
    assert sum(stats["degree"]["histogram"]["counts"]) == n


# ----------------------------------------------------------------------------------------------- stage fixtures

def write_reviews(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def review(user: str, product: str, verified: bool = True) -> str:
    return json.dumps({"rating": 5.0, "title": "t", "text": "x", "images": [], "asin": product,
                       "parent_asin": product, "user_id": user, "timestamp": 1, "helpful_vote": 0,
                       "verified_purchase": verified})


def stage_2023(tmp_path: Path, n_nodes: int, lines: list[str], *overrides: str):
    cfg = load_config(overrides=list(overrides))
    opts = make_opts(tmp_path / "out")
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir(parents=True, exist_ok=True)
    adopt_stage(cfg, opts, "fetch", {"metadata": write_reviews(fixtures / "meta.jsonl.gz", ["{}"]),
                                     "reviews": write_reviews(fixtures / "reviews.jsonl.gz", lines)})
    adopt_stage(cfg, opts, "nodes", {"nodes": write_nodes(fixtures / "nodes.parquet", n_nodes),
                                     "quarantine": write_quarantine(fixtures / "quarantine.parquet")})
    record = run(cfg, opts, "edges")["edges"]
    edges = pl.read_parquet(opts.dataset_root / record["outputs"]["edges"]["path"])
    node_filter = pl.read_parquet(opts.dataset_root / record["outputs"]["node_filter"]["path"])
    return record, edges, node_filter


def check_outputs(record, edges: pl.DataFrame, node_filter: pl.DataFrame, n_nodes: int) -> None:
    assert schemas.validate_table(edges.to_arrow(), "edges") == []
    assert schemas.validate_table(node_filter.to_arrow(), "node_filter") == []
    assert (edges["src"] < edges["dst"]).all()
    assert node_filter["node_id"].sort().to_list() == list(range(n_nodes))
    kept = set(node_filter.filter(pl.col("kept"))["node_id"].to_list())
    assert set(edges["src"]) <= kept and set(edges["dst"]) <= kept
    assert node_filter.filter(pl.col("kept"))["reason"].null_count() == len(kept)
    c = record["counts"]
    assert c["input"] == n_nodes and c["kept"] == len(kept)
    assert c["input"] == c["kept"] + sum(c["rejected"].values()) + sum(c["filtered"].values())
    by_reason = node_filter.filter(~pl.col("kept"))["reason"].value_counts()
    assert dict(by_reason.iter_rows()) == {k: v for k, v in c["filtered"].items() if v}


# ----------------------------------------------------------------------------------------------- stage 2023

def test_stage_2023_projection_counts_and_bad_lines(tmp_path):
    rng = random.Random(11)
    n_nodes = 40
    rows, lines = [], []
    for u in range(150):
        for _ in range(rng.choice([1, 2, 3, 5])):
            node, verified = rng.randrange(n_nodes), rng.random() < 0.85
            lines.append(review(f"U{u}", asin(node), verified))
            if verified:
                rows.append((f"U{u}", node))
    rng.shuffle(lines)
    extra = ['{"user_id": "X", "parent_asin": "B0000', "not json at all", "[1, 2]", "",
             review("", asin(1)), json.dumps({"user_id": "Y"}), review("U1", "B999999999"),
             review("U2", "lowercase1")]
    for i, line in enumerate(extra):
        lines.insert(7 * i + 3, line)
    record, edges, node_filter = stage_2023(tmp_path, n_nodes, lines)

    scan = record["stats"]["reviews"]
    assert scan["bad_lines"] == 3 and scan["missing_fields"] == 2 and scan["unknown_product"] == 2
    assert scan["lines"] == len(lines) - 1  # the blank line is not a review
    assert scan["lines"] == (scan["bad_lines"] + scan["missing_fields"] + scan["unknown_product"]
                             + scan["unverified"] + scan["purchases"])
    assert scan["purchases"] == len(rows)
    assert [e["line"] for e in scan["bad_line_examples"]] == [lines.index(x) + 1 for x in extra[:3]]

    expected = brute_force(rows, min_user=2, max_user=100, min_weight=2, seed=0)
    got = {(s, d): w for s, d, w in edges.select("src", "dst", "weight").iter_rows()}
    assert got == expected and set(edges["kind"]) <= {"copurchase"}
    check_outputs(record, edges, node_filter, n_nodes)
    assert record["counts"]["kept"] == n_nodes  # no filter enabled: every node kept
    assert record["stats"]["projection"]["edges_min_weight"] == len(expected)


def test_stage_2023_all_reviews_verified_or_not(tmp_path):
    lines = [review("A", asin(0), False), review("A", asin(1), False), review("B", asin(0)),
             review("B", asin(1)), review("C", asin(1)), review("C", asin(2))]
    _, strict, _ = stage_2023(tmp_path / "v", 3, lines, "edges.min_weight=1")
    _, loose, _ = stage_2023(tmp_path / "all", 3, lines, "edges.min_weight=1", "edges.verified_only=false")
    assert strict.select("src", "dst", "weight").rows() == [(0, 1, 1.0), (1, 2, 1.0)]
    assert loose.select("src", "dst", "weight").rows() == [(0, 1, 2.0), (1, 2, 1.0)]


def test_stage_2023_top_k_and_filters(tmp_path):
    rng = random.Random(5)
    lines = [review(f"U{u}", asin(rng.randrange(30))) for u in range(120) for _ in range(rng.choice([2, 3, 4]))]
    lines += [review("lonely", asin(40)), review("lonely", asin(41)), review("lonely", asin(42))]  # a triangle
    record, edges, node_filter = stage_2023(tmp_path, 50, lines, "edges.top_k=2", "edges.drop_isolated=true",
                                            "edges.k_core=2", "edges.largest_component=true", "edges.min_weight=1")
    check_outputs(record, edges, node_filter, 50)
    filtered = record["counts"]["filtered"]
    assert set(filtered) == {"drop_isolated", "k_core", "largest_component"}
    assert filtered["drop_isolated"] >= 17  # nodes 30..39 and 43..49 have no purchase at all
    assert filtered["largest_component"] >= 3  # the triangle {40, 41, 42}
    g = nx.Graph(list(zip(edges["src"].to_list(), edges["dst"].to_list())))
    assert nx.is_connected(g) and min(d for _, d in g.degree()) >= 2
    steps = record["stats"]["steps"]
    assert [s["step"] for s in steps] == ["built", "drop_isolated", "k_core", "largest_component"]
    assert steps[-1]["edges"]["copurchase"] == edges.height
    graph = record["stats"]["graph"]
    assert graph["components"] == 1 and graph["nodes"] == record["counts"]["kept"]


def test_stage_2023_truncated_gzip_is_a_clear_error(tmp_path):
    cfg = load_config()
    opts = make_opts(tmp_path / "out")
    good = write_reviews(tmp_path / "r.jsonl.gz", [review(f"U{i}", asin(i % 3)) for i in range(5000)])
    broken = tmp_path / "reviews.jsonl.gz"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    adopt_stage(cfg, opts, "fetch", {"metadata": good, "reviews": broken})
    adopt_stage(cfg, opts, "nodes", {"nodes": write_nodes(tmp_path / "nodes.parquet", 3),
                                     "quarantine": write_quarantine(tmp_path / "quarantine.parquet")})
    with pytest.raises(StageError, match="fetch"):
        run(cfg, opts, "edges")


# ----------------------------------------------------------------------------------------------- stage 2018

def stage_2018(tmp_path: Path, n_nodes: int, also_buy, also_view, *overrides: str):
    cfg = load_config(overrides=list(overrides))
    opts = make_opts(tmp_path / "out", source="amazon-2018")
    fixtures = tmp_path / "fixtures"
    fixtures.mkdir(parents=True, exist_ok=True)
    adopt_stage(cfg, opts, "fetch", {"metadata": write_reviews(fixtures / "meta.json.gz", ["{}"])})
    adopt_stage(cfg, opts, "nodes", {"nodes": write_nodes(fixtures / "nodes.parquet", n_nodes, also_buy, also_view),
                                     "quarantine": write_quarantine(fixtures / "quarantine.parquet")})
    record = run(cfg, opts, "edges")["edges"]
    edges = pl.read_parquet(opts.dataset_root / record["outputs"]["edges"]["path"])
    node_filter = pl.read_parquet(opts.dataset_root / record["outputs"]["node_filter"]["path"])
    return record, edges, node_filter


def test_stage_2018_also_buy_and_also_view(tmp_path):
    also_buy = {0: [asin(1), asin(2), "B0MISSING0", asin(0)], 1: [asin(0)], 2: [asin(3), asin(3)], 4: ["X"]}
    also_view = {0: [asin(1)], 3: [asin(4), "B0GONE0000"]}
    record, edges, node_filter = stage_2018(tmp_path / "a", 6, also_buy, also_view)
    assert edges.select("src", "dst", "kind").rows() == [(0, 1, "also_buy"), (0, 2, "also_buy"),
                                                          (2, 3, "also_buy")]
    assert (edges["weight"] == 1.0).all()
    lists = record["stats"]["lists"]
    assert lists["also_buy"] == {"references": 8, "absent": 2, "self_loops": 1, "duplicates": 2, "edges": 3}
    assert "also_view" not in lists
    check_outputs(record, edges, node_filter, 6)

    record, edges, node_filter = stage_2018(tmp_path / "b", 6, also_buy, also_view, "edges.include_also_view=true",
                                            "edges.drop_isolated=true")
    assert edges.select("src", "dst", "kind").rows() == [(0, 1, "also_buy"), (0, 1, "also_view"),
                                                          (0, 2, "also_buy"), (2, 3, "also_buy"),
                                                          (3, 4, "also_view")]
    assert record["stats"]["lists"]["also_view"]["absent"] == 1
    assert record["counts"]["filtered"] == {"drop_isolated": 1}  # node 5
    assert node_filter.filter(pl.col("node_id") == 5).row(0) == (5, False, "drop_isolated")
    check_outputs(record, edges, node_filter, 6)


def test_stage_2018_filters_match_networkx(tmp_path):
    src, dst = _random_graph(3, n=80, m=110, chain=20)
    n = int(dst.max()) + 3  # two nodes without any edge
    also_buy: dict[int, list[str]] = {}
    for a, b in zip(src.tolist(), dst.tolist()):
        also_buy.setdefault(b if a % 2 else a, []).append(asin(a if a % 2 else b))
    record, edges, node_filter = stage_2018(tmp_path, n, also_buy, None, "edges.k_core=2",
                                            "edges.largest_component=true")
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(src.tolist(), dst.tolist()))
    core = nx.k_core(g, 2)
    expected = max(nx.connected_components(core), key=len)
    kept = set(node_filter.filter(pl.col("kept"))["node_id"].to_list())
    assert kept == expected
    assert record["counts"]["filtered"] == {"k_core": n - core.number_of_nodes(),
                                            "largest_component": core.number_of_nodes() - len(expected)}
    check_outputs(record, edges, node_filter, n)
    assert edges.height == core.subgraph(expected).number_of_edges()


# ----------------------------------------------------------------------------------------------- sample

def verified_baskets(reviews: Path, asins: set[str]) -> dict[str, set[str]]:
    """user -> distinct products, read the obvious way: every JSON-object line with a user, a known product and a
    verified purchase (the stage's reading rules, independently of its streaming parser)."""
    baskets: dict[str, set[str]] = {}
    with gzip.open(reviews, "rt", encoding="utf-8") as fh:
        for line in fh:
            try:
                review = json.loads(line)
            except ValueError:
                continue
            if (isinstance(review, dict) and review.get("user_id") and review.get("parent_asin") in asins
                    and review.get("verified_purchase") is True):
                baskets.setdefault(review["user_id"], set()).add(review["parent_asin"])
    return baskets


def test_sample_end_to_end_nodes_edges_labels(tmp_path):
    from etl.sample import generate_catalog

    truth = generate_catalog(tmp_path / "src", n_products=200, seed=1)
    cap = 20  # the sample's power users and a few busy ones buy more distinct products than this
    cfg = load_config(overrides=["labels.min_class_size=5", f"edges.max_user_products={cap}"])
    opts = make_opts(tmp_path / "out", source="sample")
    raw = tmp_path / "src" / "amazon_2023" / "raw"
    adopt_stage(cfg, opts, "fetch", {"metadata": raw / "meta_categories" / "meta_Electronics.jsonl.gz",
                                     "reviews": raw / "review_categories" / "Electronics.jsonl.gz"})
    records = run(cfg, opts, "labels")
    scan = records["edges"]["stats"]["reviews"]
    defects = truth["defects"]["reviews_2023"]
    assert scan["bad_lines"] == defects["truncated_json"]["count"]
    assert scan["missing_fields"] == defects["empty_user_id"]["count"]
    assert scan["unknown_product"] >= defects["unknown_product"]["count"]
    assert scan["lines"] == truth["counts"]["reviews"] + defects["duplicate_line"]["count"] \
        + defects["unknown_product"]["count"]
    projection = records["edges"]["stats"]["projection"]
    assert projection["duplicate_purchases"] > 0 and projection["edges_min_weight"] > 0
    nodes = pl.read_parquet(opts.dataset_root / records["nodes"]["outputs"]["nodes"]["path"])
    sizes = [len(b) for b in verified_baskets(raw / "review_categories" / "Electronics.jsonl.gz",
                                              set(nodes["asin"].to_list())).values()]
    heavy = [d for d in sizes if d > cap]
    assert len(heavy) >= 3, "the input must make the cap act"
    assert projection["users_capped"] == len(heavy)
    assert projection["purchases_removed_by_cap"] == sum(heavy) - cap * len(heavy)
    assert projection["pairs_removed_by_cap"] == sum(d * (d - 1) // 2 - cap * (cap - 1) // 2 for d in heavy)
    assert projection["pairs_generated"] == sum(min(d, cap) * (min(d, cap) - 1) // 2 for d in sizes if d >= 2)
    edges = pl.read_parquet(opts.dataset_root / records["edges"]["outputs"]["edges"]["path"])
    assert schemas.validate_table(edges.to_arrow(), "edges") == []
    labels = json.loads((opts.dataset_root / records["labels"]["outputs"]["labels"]["path"]).read_text())
    assert labels["level"] in (1, 2, 3, 4) and len(labels["classes"]) >= 4
    for record in records.values():
        c = record["counts"]
        assert c["input"] == c["kept"] + sum(c["rejected"].values()) + sum(c["filtered"].values())

    # the cap lifted: nothing is capped, every pair the cap removed is generated, and the graph changes
    uncapped = run(load_config(overrides=["labels.min_class_size=5", "edges.max_user_products=100000"]), opts,
                   "edges")["edges"]["stats"]["projection"]
    assert uncapped["users_capped"] == uncapped["pairs_removed_by_cap"] == 0
    assert uncapped["pairs_generated"] == projection["pairs_generated"] + projection["pairs_removed_by_cap"]
    assert not pl.read_parquet(opts.dataset_root / records["edges"]["outputs"]["edges"]["path"]).equals(edges)
