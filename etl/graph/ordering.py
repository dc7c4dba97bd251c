"""Graph-aware sample order for the shards: neighbours together in clusters, clusters interleaved by category.

WHY: SLIP's structural loss needs co-purchase neighbours inside the same batch, and a random order almost never
puts them there (P ~ batch / N). Training reads shards with a shard shuffle plus a modest sample shuffle buffer,
which keeps samples written close together close in time. So a split is written as clusters of about
`cluster_size` connected samples, one after the other, with the clusters interleaved by dominant label so that
every batch still mixes categories.

The partition is a randomised parallel contraction (the "random mate" coarsening used by parallel METIS): every
round each cluster flips a coin; tails clusters propose to their heaviest heads neighbour, heads clusters accept
proposals best first while they stay within the size cap. A round is a few vectorised numpy passes over the live
edges, and edges that became internal or can never merge again (the cap) are dropped for good, so millions of nodes
and tens of millions of edges are ordered quickly (timings: bench/README.md). Leftover small clusters (isolated
nodes, leaves of full clusters) are packed into bins in the order of their anchor (the cluster they are most
connected to), so 2-hop neighbours share a bin, and a bin is written right after its anchor (a hub's full
cluster, then the bin of its remaining leaves).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

MAX_ROUNDS = 48
NO_CLUSTER = -1  # the cluster id written for samples of the random baseline order
# The trainer's default sample shuffle buffer (trainer/config.py `shuffle_buffer`; etl does not import the trainer,
# tests/test_ordering.py checks that the two agree).
TRAINER_SHUFFLE_BUFFER = 256


@dataclass(frozen=True)
class SampleOrder:
    """The write order of one split's samples and the cluster each sample belongs to (same length)."""

    node_ids: np.ndarray
    cluster: np.ndarray


def random_order(node_ids: np.ndarray, *, seed: int = 0) -> SampleOrder:
    """The baseline: a seeded shuffle; no clusters."""
    ids = np.asarray(node_ids, dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(len(ids))
    return SampleOrder(ids[perm], np.full(len(ids), NO_CLUSTER, dtype=np.int64))


def graph_order(node_ids: np.ndarray, src: np.ndarray, dst: np.ndarray, *, weight: np.ndarray | None = None,
                labels: np.ndarray | None = None, cluster_size: int = 32, seed: int = 0) -> SampleOrder:
    """Order `node_ids` (labels aligned with them) by clusters of the graph they induce in (src, dst, weight).

    Edges with an endpoint outside `node_ids` are ignored; nodes without edges are packed into clusters too.
    """
    ids = np.asarray(node_ids, dtype=np.int64)
    n = len(ids)
    if n == 0:
        return SampleOrder(ids, np.zeros(0, dtype=np.int64))
    if cluster_size < 2:
        raise ValueError(f"graph_order: cluster_size must be >= 2, got {cluster_size}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"graph_order: {len(labels)} labels for {n} nodes")
    rng = np.random.default_rng(seed)
    u, v, w = _local_edges(ids, src, dst, weight)
    cluster, follows = partition(n, u, v, w, cluster_size=cluster_size, rng=rng,
                                 tie_key=None if labels is None else np.asarray(labels))
    rank = _interleave_clusters(cluster, follows, None if labels is None else np.asarray(labels), rng)
    pos = rank[cluster]
    order = np.lexsort((ids, pos))
    return SampleOrder(ids[order], pos[order].astype(np.int64))


def partition(n: int, u: np.ndarray, v: np.ndarray, w: np.ndarray, *, cluster_size: int,
              rng: np.random.Generator, tie_key: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cluster id (0..C-1) per local node 0..n-1 for the undirected edges (u, v, w), and per cluster the cluster
    it should be written right after (-1: none). Clusters hold about `cluster_size` nodes (contracted ones at most
    that many; packed leftovers fewer than 1.5x)."""
    rep = _contract(n, u, v, w, cluster_size, rng)
    return _pack_leftovers(rep, u, v, w, cluster_size, rng, tie_key)


def _local_edges(ids: np.ndarray, src: np.ndarray, dst: np.ndarray,
                 weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges between members of `ids`, as positions into `ids` (int32) with float32 weights; self loops dropped."""
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    w = np.ones(len(src), dtype=np.float32) if weight is None else np.asarray(weight, dtype=np.float32)
    if len(src) != len(dst) or len(w) != len(src):
        raise ValueError("graph_order: src, dst and weight must have the same length")
    if ids.min() < 0 or (len(src) and min(src.min(), dst.min()) < 0):
        raise ValueError("graph_order: node ids must be >= 0")
    top = int(max(ids.max(), src.max() if len(src) else 0, dst.max() if len(dst) else 0))
    local = np.full(top + 1, -1, dtype=np.int32)
    local[ids] = np.arange(len(ids), dtype=np.int32)
    if (local[ids] != np.arange(len(ids))).any():
        raise ValueError("graph_order: node_ids contain duplicates")
    lu, lv = local[src], local[dst]
    keep = (lu >= 0) & (lv >= 0) & (lu != lv)
    return lu[keep], lv[keep], np.where(w[keep] > 0, w[keep], np.float32(1.0))


def _contract(n: int, u: np.ndarray, v: np.ndarray, w: np.ndarray, cap: int,
              rng: np.random.Generator) -> np.ndarray:
    """Random-mate contraction under a size cap; returns the representative (a node index) of each node's cluster."""
    rep = np.arange(n, dtype=u.dtype)
    size = np.ones(n, dtype=np.int32)
    enough = len(u) // 2000  # the last few live edges are not worth O(n) rounds: packing handles their ends
    for _ in range(MAX_ROUNDS):
        cu, cv = rep[u], rep[v]
        live = (cu != cv) & (size[cu] + size[cv] <= cap)  # sizes only grow: a dead edge stays dead
        if not live.all():
            u, v, w, cu, cv = u[live], v[live], w[live], cu[live], cv[live]
        if len(u) <= enough:
            break
        heads = rng.random(n) < 0.5
        hu = heads[cu]
        proposing = hu != heads[cv]  # exactly one end is tails: it proposes to the heads end
        a = np.where(hu, cv, cu)[proposing]
        b = np.where(hu, cu, cv)[proposing]
        if len(a) == 0:
            continue
        score = w[proposing] * (1.0 + 0.25 * rng.random(len(a), dtype=np.float32))  # random tie-break
        best = np.full(n, -np.inf, dtype=np.float32)
        np.maximum.at(best, a, score)
        win = score == best[a]
        target = np.full(n, -1, dtype=np.int64)
        target[a[win]] = b[win]
        proposers = np.flatnonzero(target >= 0)
        accepted, receivers = _accept(proposers, target[proposers], best[proposers], size, cap)
        size += np.bincount(receivers, weights=size[accepted], minlength=n).astype(np.int32)
        remap = np.arange(n, dtype=rep.dtype)
        remap[accepted] = receivers
        rep = remap[rep]
    return rep


def _accept(proposers: np.ndarray, targets: np.ndarray, scores: np.ndarray, size: np.ndarray,
            cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Each receiver takes its proposers best score first while its size stays <= cap."""
    order = np.lexsort((-scores, targets))
    proposers, targets = proposers[order], targets[order]
    psize = size[proposers]
    cum = np.cumsum(psize)
    starts = np.flatnonzero(np.r_[True, targets[1:] != targets[:-1]])
    group_base = np.repeat(cum[starts] - psize[starts], np.diff(np.r_[starts, len(targets)]))
    ok = (cum - group_base) <= cap - size[targets]
    return proposers[ok], targets[ok]


def _pack_leftovers(rep: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray, cap: int,
                    rng: np.random.Generator, tie_key: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Dense cluster ids + the cluster each should follow. Clusters under half the target are packed into bins,
    ordered by their anchor (most connected neighbour cluster) so that small clusters hanging off the same big
    cluster (e.g. the leaves of a hub whose cluster is full) share a bin, which then follows that big cluster in
    the write order; isolated ones are ordered by `tie_key`."""
    n = len(rep)
    cid = _dense(rep)
    sizes = np.bincount(cid)
    n_clusters = len(sizes)
    small = sizes < max(cap // 2, 2)
    if small.sum() <= 1:
        return cid, np.full(n_clusters, -1, dtype=np.int64)
    cu, cv = cid[u], cid[v]
    between = cu != cv
    a = np.concatenate([cu[between], cv[between]])
    b = np.concatenate([cv[between], cu[between]])
    s = np.concatenate([w[between], w[between]])
    best = np.full(n_clusters, -np.inf, dtype=s.dtype)
    np.maximum.at(best, a, s)
    anchor = np.full(n_clusters, n_clusters, dtype=np.int64)  # no neighbour: sorts after every anchored one
    win = s == best[a]
    anchor[a[win]] = b[win]
    secondary = rng.random(n_clusters)
    if tie_key is not None:
        first_member = np.full(n_clusters, n, dtype=np.int64)
        np.minimum.at(first_member, cid, np.arange(n, dtype=np.int64))
        secondary = np.asarray(tie_key)[first_member].astype(np.float64) + 0.5 * secondary
    small_ids = np.flatnonzero(small)
    small_ids = small_ids[np.lexsort((secondary[small_ids], anchor[small_ids]))]
    offset = np.cumsum(sizes[small_ids]) - sizes[small_ids]
    new_id = np.arange(n_clusters)
    new_id[small_ids] = n_clusters + offset // cap  # bins after the big clusters; renumbered densely below
    dense = _dense(new_id)
    follows = np.full(int(dense.max()) + 1, -1, dtype=np.int64)
    first_in_bin = np.flatnonzero(np.r_[True, np.diff(new_id[small_ids]) != 0])
    bin_anchor = anchor[small_ids[first_in_bin]]
    to_big = bin_anchor < n_clusters
    to_big[to_big] = ~small[bin_anchor[to_big]]
    follows[dense[small_ids[first_in_bin]][to_big]] = dense[bin_anchor[to_big]]
    return dense[cid], follows


def _dense(values: np.ndarray) -> np.ndarray:
    """Renumber non-negative ints to 0..K-1 keeping their order (O(n), unlike a sort)."""
    present = np.bincount(values) > 0
    return (np.cumsum(present) - 1)[values]


def _interleave_clusters(cluster: np.ndarray, follows: np.ndarray, labels: np.ndarray | None,
                         rng: np.random.Generator) -> np.ndarray:
    """Rank (write position) of every cluster: each dominant label's clusters spread evenly over the whole order
    (stratified positions with a random offset), so consecutive clusters come from different categories; a
    cluster that follows another is written right after it."""
    n_clusters = int(cluster.max()) + 1
    if labels is None:
        key = rng.random(n_clusters)
    else:
        _, lab = np.unique(labels, return_inverse=True)
        n_labels = int(lab.max()) + 1
        pair_counts = np.bincount(cluster * n_labels + lab,
                                  minlength=n_clusters * n_labels).reshape(n_clusters, n_labels)
        dominant = pair_counts.argmax(axis=1)
        perm = rng.permutation(n_clusters)
        grouped = perm[np.argsort(dominant[perm], kind="stable")]  # clusters by dominant label, random inside
        counts = np.bincount(dominant, minlength=n_labels)
        starts = np.cumsum(counts) - counts
        rank_in_group = np.arange(n_clusters) - np.repeat(starts, counts)
        key = np.empty(n_clusters)
        key[grouped] = (rank_in_group + rng.random(n_clusters)) / np.repeat(counts, counts)
    leader = np.flatnonzero(follows >= 0)
    key[leader] = key[follows[leader]]  # same key as the followed cluster, sorted after it (tie-break below)
    after = np.zeros(n_clusters)
    after[leader] = 1 + rng.random(len(leader))
    rank = np.empty(n_clusters, dtype=np.int64)
    rank[np.lexsort((after, key))] = np.arange(n_clusters)
    return rank


def reservoir_shuffle_permutation(n: int, size: int, *, seed: int | str = 0) -> np.ndarray:
    """The order in which the trainer's sample shuffle emits a stream of n samples, drawing from
    `random.Random(seed)`: the same algorithm as trainer/data.py `shuffle_buffer` (fill `size` samples, then emit a
    random buffered one per incoming sample, which takes its place; shuffle and drain the rest at the end), so
    statistics computed through it describe the batches training sees (tests/test_ordering.py checks both agree)."""
    if size <= 1:
        return np.arange(n, dtype=np.int64)
    rng = random.Random(seed)
    buffer: list[int] = []
    out: list[int] = []
    for item in range(n):
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(len(buffer))
        buffer[i], item = item, buffer[i]
        out.append(item)
    rng.shuffle(buffer)
    out.extend(buffer)
    return np.asarray(out, dtype=np.int64)


def in_batch_stats(order: np.ndarray, edges: tuple[np.ndarray, np.ndarray], batch_size: int,
                   shuffle_buffer: int = 0, *, labels: np.ndarray | None = None,
                   seed: int = 0) -> dict[str, float | None]:
    """What batches cut from `order` (after an optional shuffle buffer, the trainer's algorithm) contain.

    frac_with_neighbor: share of samples with >= 1 graph neighbour in their batch; edges_per_batch: edges with both
    ends in the same batch, per batch; labels_per_batch: distinct labels >= 0 per batch (`labels` aligned with
    `order`; None without labels). Pass each undirected edge once.
    """
    order = np.asarray(order, dtype=np.int64)
    n = len(order)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if n == 0:
        return {"frac_with_neighbor": 0.0, "edges_per_batch": 0.0, "labels_per_batch": None}
    if shuffle_buffer > 1:
        perm = reservoir_shuffle_permutation(n, shuffle_buffer, seed=seed)
        order = order[perm]
        labels = None if labels is None else np.asarray(labels)[perm]
    src = np.asarray(edges[0], dtype=np.int64)
    dst = np.asarray(edges[1], dtype=np.int64)
    top = int(max(order.max(), src.max() if len(src) else 0, dst.max() if len(dst) else 0))
    batch = np.full(top + 1, -1, dtype=np.int64)
    batch[order] = np.arange(n) // batch_size
    bs, bd = batch[src], batch[dst]
    same = (bs >= 0) & (bs == bd) & (src != dst)
    n_batches = -(-n // batch_size)
    has_neighbor = np.zeros(top + 1, dtype=bool)
    has_neighbor[src[same]] = True
    has_neighbor[dst[same]] = True
    labels_per_batch = None
    if labels is not None:
        lab = np.asarray(labels, dtype=np.int64)
        pos = np.arange(n)[lab >= 0]
        pairs = np.unique((pos // batch_size) * (int(lab.max()) + 1) + lab[pos]) if len(pos) else []
        labels_per_batch = round(len(pairs) / n_batches, 3)
    return {"frac_with_neighbor": round(float(has_neighbor[order].mean()), 4),
            "edges_per_batch": round(float(same.sum()) / n_batches, 3),
            "labels_per_batch": labels_per_batch}
