"""Graph filters and statistics on node-id arrays: distinct pairs, isolated nodes, k-core, largest component,
degree and component statistics, power-of-two histograms.

The graph is the simple undirected graph of the given edges (a pair linked by several edge kinds counts once);
`alive` masks are indexed by node id. Everything is vectorised numpy / scipy, so it scales to millions of nodes.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# Vectorised k-core peeling rounds before the rest is peeled with a queue (a long chain peels one node a round).
KCORE_VECTOR_ROUNDS = 64


def filter_steps(node_ids: np.ndarray, src: np.ndarray, dst: np.ndarray, *, drop_isolated: bool, k_core: int,
                 largest_component: bool) -> list[tuple[str, np.ndarray]]:
    """Apply the enabled filters in order; return (filter name, alive mask indexed by node id) after each.

    The graph is the simple undirected graph of all edge kinds together (a pair linked by several kinds counts
    once toward degrees and connectivity).
    """
    size = int(node_ids.max()) + 1 if len(node_ids) else 0
    alive = np.zeros(size, bool)
    alive[node_ids] = True
    src, dst = distinct_pairs(src, dst)
    steps = []
    if drop_isolated:
        alive = alive & (_degrees(alive, src, dst) > 0)
        steps.append(("drop_isolated", alive.copy()))
    if k_core > 0:
        alive = k_core_alive(alive, src, dst, k_core)
        steps.append(("k_core", alive.copy()))
    if largest_component:
        alive = largest_component_alive(alive, src, dst)
        steps.append(("largest_component", alive.copy()))
    return steps


def distinct_pairs(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each undirected pair once as (smaller id, larger id), sorted; whatever the edge kinds or orientation."""
    if len(src) == 0:
        return np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    a = np.minimum(src, dst).astype(np.int64)
    b = np.maximum(src, dst).astype(np.int64)
    top = int(b.max()) + 1
    keys = np.unique(a * top + b)
    return keys // top, keys % top


def k_core_alive(alive: np.ndarray, src: np.ndarray, dst: np.ndarray, k: int) -> np.ndarray:
    """Nodes of the k-core: repeatedly remove nodes with degree < k (vectorised rounds, then a queue)."""
    alive = alive.copy()
    for _ in range(KCORE_VECTOR_ROUNDS):
        live = alive[src] & alive[dst]
        src, dst = src[live], dst[live]
        low = alive & (_degrees(alive, src, dst) < k)
        if not low.any():
            return alive
        alive &= ~low
    live = alive[src] & alive[dst]
    src, dst = src[live], dst[live]
    degree = _degrees(alive, src, dst)
    indptr, neighbours = _adjacency(len(alive), src, dst)
    queue = deque(np.flatnonzero(alive & (degree < k)).tolist())
    alive[list(queue)] = False
    while queue:
        v = queue.popleft()
        for u in neighbours[indptr[v]:indptr[v + 1]].tolist():
            if alive[u]:
                degree[u] -= 1
                if degree[u] < k:
                    alive[u] = False
                    queue.append(u)
    return alive


def largest_component_alive(alive: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Nodes of the largest connected component among alive nodes (ties: the one holding the smallest id)."""
    if not alive.any():
        return alive.copy()
    labels = component_labels(alive, src, dst)
    sizes = np.bincount(labels[alive])
    return alive & (labels == int(np.argmax(sizes)))


def component_labels(alive: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected-component label per node id (over edges between alive nodes; labels ordered by smallest id)."""
    live = alive[src] & alive[dst]
    n = len(alive)
    graph = coo_matrix((np.ones(int(live.sum()), np.int8), (src[live], dst[live])), shape=(n, n)).tocsr()
    return connected_components(graph, directed=False)[1]


def graph_stats(alive: np.ndarray, src: np.ndarray, dst: np.ndarray) -> dict[str, Any]:
    """Degree distribution, isolated nodes and components of the simple graph on the alive nodes."""
    src, dst = distinct_pairs(src, dst)
    live = alive[src] & alive[dst]
    src, dst = src[live], dst[live]
    degree = _degrees(alive, src, dst)[alive]
    out: dict[str, Any] = {"nodes": int(alive.sum()), "edges": int(len(src)),
                           "isolated_nodes": int((degree == 0).sum())}
    if len(degree) == 0:
        return {**out, "components": 0, "largest_component_nodes": 0, "degree": {}}
    labels = component_labels(alive, src, dst)[alive]
    component_sizes = np.bincount(labels)
    component_sizes = component_sizes[component_sizes > 0]
    quantiles = np.quantile(degree, [0.5, 0.9, 0.99])
    out.update({
        "components": int(len(component_sizes)),
        "largest_component_nodes": int(component_sizes.max()),
        "components_of_2_or_more": int((component_sizes >= 2).sum()),
        "degree": {"mean": float(degree.mean()), "p50": float(quantiles[0]), "p90": float(quantiles[1]),
                   "p99": float(quantiles[2]), "max": int(degree.max()),
                   "histogram": log2_histogram(np.bincount(degree))},
    })
    return out


def log2_histogram(value_counts: np.ndarray) -> dict[str, list[int]]:
    """Power-of-two bins from `value_counts[v]` = how many items have value v.

    `edges` are the bin starts plus the end: bin i holds values in [edges[i], edges[i+1]) (bin 0 = value 0).
    """
    top = len(value_counts)
    edges = [0, 1]
    while edges[-1] < top:
        edges.append(edges[-1] * 2)
    counts = [int(value_counts[a:b].sum()) for a, b in zip(edges[:-1], edges[1:])]
    return {"edges": edges, "counts": counts}


def _degrees(alive: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    live = alive[src] & alive[dst]
    n = len(alive)
    return np.bincount(src[live], minlength=n) + np.bincount(dst[live], minlength=n)


def _adjacency(n: int, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    both_src = np.concatenate([src, dst])
    both_dst = np.concatenate([dst, src])
    order = np.argsort(both_src, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(both_src, minlength=n), out=indptr[1:])
    return indptr, both_dst[order]
