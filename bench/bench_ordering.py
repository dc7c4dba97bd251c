"""Benchmark the graph-aware shard order: in-batch neighbours vs a random order, and partition time at scale.

For each graph: the train split's nodes are ordered by `etl.graph.ordering.graph_order` and by a seeded
shuffle; batches of 64 / 256 / 1024 are cut from each order as written (no shuffle) and after the trainer's sample
shuffle (its algorithm, `--buffer` samples, default the trainer's 256), and the table reports the share of samples
with >= 1 in-batch neighbour, in-batch edges per batch and distinct labels per batch.

Graphs: every `--graph PATH` (a release folder, or a dataset root after the edges and labels stages: e.g. the
embedded sample's `OUT/sample-electronics`), a sample-sized synthetic graph, and a large synthetic graph
(`--large-nodes`, default 1.6M, about `--large-degree` edges per node) with the heavy-tailed degrees and
category-coherent communities of a co-purchase graph.

    python bench/bench_ordering.py --graph out/sample-electronics
    python bench/bench_ordering.py --large-nodes 1600000 --large-degree 12
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import polars as pl

from etl.graph.filters import distinct_pairs
from etl.graph.ordering import (
    TRAINER_SHUFFLE_BUFFER,
    graph_order,
    in_batch_stats,
    random_order,
    reservoir_shuffle_permutation,
)

BATCH_SIZES = (64, 256, 1024)


def load_graph(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train node ids, their labels, src, dst, weight) from a release folder or a dataset root."""
    if (path / "nodes.parquet").is_file():
        nodes = pl.read_parquet(path / "nodes.parquet", columns=["node_id", "label", "split"])
        edges = pl.read_parquet(path / "edges.parquet", columns=["src", "dst", "weight"])
    else:
        nodes = pl.read_parquet(path / "work" / "labels" / "node_labels.parquet",
                                columns=["node_id", "label", "split"])
        edges = pl.read_parquet(path / "work" / "edges" / "edges.parquet", columns=["src", "dst", "weight"])
    train = nodes.filter(pl.col("split") == "train").sort("node_id")
    return (train["node_id"].to_numpy(), train["label"].to_numpy(), edges["src"].to_numpy(),
            edges["dst"].to_numpy(), edges["weight"].to_numpy())


def synthetic_graph(n: int, degree: float, seed: int = 0, community: int = 40, n_labels: int = 40,
                    p_community: float = 0.6, p_label: float = 0.25,
                    isolated: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Co-purchase-like: Pareto degrees, a share of isolated products, edges mostly inside a product's community
    (one label each), then inside its label, then anywhere; weights >= 2 like shared-purchaser counts."""
    rng = np.random.default_rng(seed)
    comm = rng.integers(0, max(1, n // community), n)
    labels = (comm * 7919 % n_labels).astype(np.int64)
    stubs = np.minimum((rng.pareto(1.4, n) + 1) * degree * 0.3, 2000).astype(np.int64)
    stubs[rng.random(n) < isolated] = 0
    src = np.repeat(np.arange(n), stubs)
    r = rng.random(len(src))
    partner = rng.integers(0, n, len(src))
    for group, lo, hi in ((comm, 0.0, p_community), (labels, p_community, p_community + p_label)):
        pick = (r >= lo) & (r < hi)
        order = np.argsort(group, kind="stable")
        counts = np.bincount(group)
        start = np.cumsum(counts) - counts
        g = group[src[pick]]
        partner[pick] = order[start[g] + (rng.random(pick.sum()) * counts[g]).astype(np.int64)]
    keep = src != partner
    a, b = np.minimum(src, partner)[keep], np.maximum(src, partner)[keep]
    key = np.unique(a * n + b)
    src, dst = key // n, key % n
    weight = (2 + rng.geometric(0.6, len(src)) - 1).astype(np.float32)
    train = np.sort(rng.choice(n, int(0.8 * n), replace=False))
    return train, labels[train], src, dst, weight


def bench(name: str, graph: tuple[np.ndarray, ...], cluster_size: int, buffer: int, seed: int) -> None:
    ids, labels, src, dst, weight = graph
    print(f"\n== {name}: {len(ids):,} train nodes, {len(src):,} edges (all splits)")
    t0 = time.perf_counter()
    ordered = graph_order(ids, src, dst, weight=weight, labels=labels, cluster_size=cluster_size, seed=seed)
    t_order = time.perf_counter() - t0
    sizes = np.bincount(ordered.cluster)
    print(f"graph_order: {t_order:.2f} s; {len(sizes):,} clusters, size p10/p50/p90/max "
          f"{np.percentile(sizes, 10):.0f}/{np.percentile(sizes, 50):.0f}/{np.percentile(sizes, 90):.0f}/"
          f"{sizes.max()}")
    baseline = random_order(ids, seed=seed)
    label_of = dict(zip(ids.tolist(), labels.tolist()))
    pairs = distinct_pairs(src, dst)
    t0 = time.perf_counter()
    buffered = reservoir_shuffle_permutation(len(ids), buffer, seed=seed)
    rows = []
    for order_name, order in (("graph", ordered.node_ids), ("random", baseline.node_ids)):
        lab = np.array([label_of[i] for i in order.tolist()])
        for shuffle, perm in (("none", None), (f"buffer {buffer}", buffered)):
            o, lb = (order, lab) if perm is None else (order[perm], lab[perm])
            for batch in BATCH_SIZES:
                s = in_batch_stats(o, pairs, batch, labels=lb)
                rows.append((batch, order_name, shuffle, s["frac_with_neighbor"], s["edges_per_batch"],
                             s["labels_per_batch"]))
    t_stats = time.perf_counter() - t0
    print(f"{'batch':>5}  {'order':<6}  {'shuffle':<11}  {'with neighbour':>14}  {'edges/batch':>11}  "
          f"{'labels/batch':>12}")
    for batch, order_name, shuffle, frac, edges, labs in sorted(rows, key=lambda r: (r[0], r[2], r[1])):
        print(f"{batch:>5}  {order_name:<6}  {shuffle:<11}  {100 * frac:>13.1f}%  {edges:>11.1f}  {labs:>12.1f}")
    print(f"(statistics: {t_stats:.1f} s; peak RSS so far {_peak_rss_gib():.2f} GiB)")


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", type=Path, action="append", default=[],
                        help="a release folder or a dataset root (repeatable)")
    parser.add_argument("--sample-nodes", type=int, default=3000, help="sample-sized synthetic graph (0 = skip)")
    parser.add_argument("--large-nodes", type=int, default=1_600_000, help="large synthetic graph (0 = skip)")
    parser.add_argument("--large-degree", type=float, default=8.0, help="about this many edges per node")
    parser.add_argument("--cluster-size", type=int, default=32)
    parser.add_argument("--buffer", type=int, default=TRAINER_SHUFFLE_BUFFER,
                        help="the trainer's sample shuffle buffer (slip-train --shuffle-buffer)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in args.graph:
        bench(str(path), load_graph(path), args.cluster_size, args.buffer, args.seed)
    if args.sample_nodes:
        bench(f"synthetic, {args.sample_nodes:,} nodes", synthetic_graph(args.sample_nodes, 12.0, args.seed),
              args.cluster_size, args.buffer, args.seed)
    if args.large_nodes:
        t0 = time.perf_counter()
        graph = synthetic_graph(args.large_nodes, args.large_degree, args.seed)
        print(f"\n(large graph generated in {time.perf_counter() - t0:.1f} s)")
        bench(f"synthetic, {args.large_nodes:,} nodes", graph, args.cluster_size, args.buffer, args.seed)


if __name__ == "__main__":
    main()
