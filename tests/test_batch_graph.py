"""CSR batch graph vs a brute-force scan of all edges, on random graphs and batches with duplicates."""
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from trainer.batch_graph import COPY_LINK_WEIGHT, CSRGraph, batch_graph_stats


def random_edges(rng, n_nodes, n_edges, kinds=("copurchase",)):
    src = rng.integers(0, n_nodes, n_edges)
    dst = rng.integers(0, n_nodes, n_edges)
    weight = rng.integers(1, 4, n_edges).astype(np.float32)
    kind = rng.choice(kinds, n_edges)
    return src, dst, weight, kind


def merged_pairs(src, dst, weight):
    """Brute force: undirected weight per unordered pair, summed over parallel edges, no self loops."""
    pairs = defaultdict(float)
    for a, b, w in zip(src.tolist(), dst.tolist(), weight.tolist()):
        if a != b:
            pairs[(min(a, b), max(a, b))] += w
    return pairs


def brute_force_batch(ids, pairs, max_neighbors=None):
    """Every edge scanned: {(src_pos, dst_pos): weight} for the batch, with the documented rules."""
    ids = list(ids)
    distinct = sorted(set(ids))
    adjacency = defaultdict(list)
    for (a, b), w in pairs.items():  # full O(E) scan
        if a in distinct and b in distinct:
            adjacency[a].append((b, w))
            adjacency[b].append((a, w))
    picked = set()
    for a, nbrs in adjacency.items():
        nbrs = sorted(nbrs, key=lambda nw: (-nw[1], nw[0]))
        if max_neighbors is not None:
            nbrs = nbrs[:max_neighbors]
        for b, _ in nbrs:
            picked.add((a, b))
            picked.add((b, a))
    weight_of = {**{(a, b): w for (a, b), w in pairs.items()}, **{(b, a): w for (a, b), w in pairs.items()}}
    out = {}
    for p, a in enumerate(ids):
        for q, b in enumerate(ids):
            if p == q:
                continue
            if a == b:
                out[(q, p)] = COPY_LINK_WEIGHT
            elif (a, b) in picked:
                out[(q, p)] = weight_of[(a, b)]
    return out


def as_dict(edge_index, edge_weight):
    pairs = list(zip(edge_index[0].tolist(), edge_index[1].tolist()))
    assert len(pairs) == len(set(pairs)), "duplicate edges in the batch graph"
    return dict(zip(pairs, edge_weight.tolist()))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_neighbors", [None, 2])
def test_batch_edges_match_brute_force(seed, max_neighbors):
    rng = np.random.default_rng(seed)
    n_nodes = int(rng.integers(5, 60))
    src, dst, weight, _ = random_edges(rng, n_nodes, int(rng.integers(0, 4 * n_nodes)))
    graph = CSRGraph.from_edges(src, dst, weight, num_nodes=n_nodes, max_neighbors=max_neighbors)
    ids = rng.integers(0, n_nodes + 3, int(rng.integers(1, 40)))  # duplicates and ids outside the graph
    edge_index, edge_weight = graph.batch_edge_index(torch.from_numpy(ids))
    expected = brute_force_batch(ids, merged_pairs(src, dst, weight), max_neighbors)
    assert as_dict(edge_index, edge_weight) == expected
    assert edge_index.dtype == torch.long and edge_weight.dtype == torch.float32


def test_csr_is_symmetric_sorted_and_merges_kinds(tmp_path):
    path = tmp_path / "edges.parquet"
    pq.write_table(pa.table({
        "src": pa.array([0, 0, 1, 2, 0], pa.int64()), "dst": pa.array([1, 1, 2, 3, 3], pa.int64()),
        "weight": pa.array([1.0, 2.0, 5.0, 1.0, 4.0], pa.float32()),
        "kind": ["also_buy", "also_view", "also_buy", "also_view", "also_buy"]}), path)
    graph = CSRGraph.from_parquet(path)
    assert graph.num_nodes == 4 and graph.num_edges == 4
    assert graph.neighbors(0).tolist() == [3, 1]  # weights 4 and 1+2=3: sorted by weight desc
    assert graph.weights[graph.indptr[0]:graph.indptr[1]].tolist() == [4.0, 3.0]
    for a in range(4):
        for b in graph.neighbors(a):
            assert a in graph.neighbors(b)
    only_buy = CSRGraph.from_parquet(path, kinds=["also_buy"], num_nodes=10)
    assert only_buy.num_nodes == 10 and only_buy.num_edges == 3 and 3 not in only_buy.neighbors(2)
    with pytest.raises(ValueError, match="copurchase"):
        CSRGraph.from_parquet(path, kinds=["copurchase"])
    with pytest.raises(FileNotFoundError):
        CSRGraph.from_parquet(tmp_path / "missing.parquet")


def test_product_twice_in_batch_links_copies_and_shares_neighbours():
    graph = CSRGraph.from_edges(np.array([0]), np.array([1]), np.array([2.0]))
    edge_index, edge_weight = graph.batch_edge_index(torch.tensor([0, 1, 0]))
    got = as_dict(edge_index, edge_weight)
    assert got == {(1, 0): 2.0, (0, 1): 2.0, (1, 2): 2.0, (2, 1): 2.0, (0, 2): 1.0, (2, 0): 1.0}
    stats = batch_graph_stats(torch.tensor([0, 1, 0]), edge_index)
    assert stats == pytest.approx({"neighbor_frac": 1.0, "edges_per_sample": 4 / 3, "duplicate_frac": 1 / 3})


def test_density_stats_count_only_real_neighbours():
    graph = CSRGraph.from_edges(np.array([0, 2]), np.array([1, 3]))
    ids = torch.tensor([0, 1, 4, 4])
    edge_index, _ = graph.batch_edge_index(ids)
    stats = batch_graph_stats(ids, edge_index)
    assert stats == pytest.approx({"neighbor_frac": 0.5, "edges_per_sample": 0.5, "duplicate_frac": 0.25})
    empty = graph.batch_edge_index(torch.tensor([0, 2]))[0]
    assert empty.shape == (2, 0)
