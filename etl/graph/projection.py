"""The co-purchase projection on node-id arrays: purchases grouped per user, heavy users bounded (seeded
subsample), shared purchasers counted per product pair, top-k per endpoint.

Everything here works on plain numpy arrays (edges as `src < dst` pairs of int64 node ids) so it scales to
millions of nodes and hundreds of millions of candidate pairs without Python loops; the `edges` stage wires it to
files. The projection is memory-bounded by construction: pairs are generated and counted one block of source
nodes at a time (see `count_pairs`). The graph filters and statistics are in etl/graph/filters.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from etl.graph.filters import log2_histogram

# Candidate pairs generated and counted at once (about 35 bytes of transient memory per pair).
PAIR_BLOCK = 16_000_000

_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (uint64 in, uint64 out, wrapping): a fixed, library-independent mix."""
    x = np.asarray(x, dtype=np.uint64) + _MIX[0]
    x = (x ^ (x >> np.uint64(30))) * _MIX[1]
    x = (x ^ (x >> np.uint64(27))) * _MIX[2]
    return x ^ (x >> np.uint64(31))


def subsample_keys(seed: int, first_row: np.ndarray, node: np.ndarray) -> np.ndarray:
    """Keys that decide which products a capped user keeps (the smallest keys win, ties by node id):
    `splitmix64(splitmix64(first_row + splitmix64(seed)) ^ node)`.

    `first_row` is the position of the user's first purchase in the purchase stream, so the choice depends only
    on the data and the seed, never on how user ids were hashed.
    """
    salt = splitmix64(np.array([seed], dtype=np.uint64))
    user = splitmix64(np.asarray(first_row, dtype=np.uint64) + salt)
    return splitmix64(user ^ np.asarray(node, dtype=np.uint64))


@dataclass
class Edges:
    """An undirected edge list stored once per pair (`src < dst`)."""

    src: np.ndarray  # int64
    dst: np.ndarray  # int64
    weight: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.src)

    def take(self, selector: np.ndarray) -> Edges:
        return Edges(self.src[selector], self.dst[selector], self.weight[selector])


@dataclass
class UserBaskets:
    """Each user's distinct products (CSR): `nodes[indptr[u]:indptr[u + 1]]`, sorted ascending."""

    indptr: np.ndarray  # int64, users + 1
    nodes: np.ndarray  # int32
    first_row: np.ndarray  # int64 per user: position of its first purchase in the purchase stream

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)


def project_copurchase(users: np.ndarray, nodes: np.ndarray, n_nodes: int, *, min_user_products: int,
                       max_user_products: int, min_weight: int, seed: int,
                       heavy_users: Literal["sample", "drop"] = "sample", pair_block: int = PAIR_BLOCK,
                       ) -> tuple[Edges, dict[str, Any]]:
    """Project purchases (`users[i]` bought `nodes[i]`) onto products; weight = shared purchasers.

    `users` are uint64 keys (any injective encoding of user ids), `nodes` int32 ids in [0, n_nodes).
    """
    baskets, duplicates = group_purchases(users, nodes)
    baskets, user_stats = bound_baskets(baskets, min_user_products, max_user_products, seed, heavy_users)
    edges, pair_stats = count_pairs(baskets, n_nodes, min_weight, pair_block)
    return edges, {"duplicate_purchases": duplicates, **user_stats, **pair_stats}


def group_purchases(users: np.ndarray, nodes: np.ndarray) -> tuple[UserBaskets, int]:
    """Group purchases by user, one per (user, product); returns the baskets and how many duplicates it dropped.

    A stable argsort groups users (their first purchase first), then one sort of `group << 32 | node` orders and
    deduplicates each user's products.
    """
    n = len(users)
    if n == 0:
        return UserBaskets(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)), 0
    order = np.argsort(users, kind="stable")
    starts = _run_starts(users[order])
    first_row = order[starts]
    group = np.cumsum(starts, dtype=np.int64) - 1
    key = (group << np.int64(32)) | nodes[order].astype(np.int64)
    del order, group, starts
    key.sort()
    distinct = _run_starts(key)
    key = key[distinct]
    indptr = np.zeros(len(first_row) + 1, np.int64)
    np.cumsum(np.bincount(key >> np.int64(32), minlength=len(first_row)), out=indptr[1:])
    return UserBaskets(indptr, (key & np.int64(0xFFFFFFFF)).astype(np.int32), first_row), n - len(key)


def bound_baskets(baskets: UserBaskets, min_products: int, max_products: int, seed: int,
                  heavy_users: Literal["sample", "drop"] = "sample") -> tuple[UserBaskets, dict[str, Any]]:
    """Drop users with fewer than `min_products` products and bound users with more than `max_products`.

    A user with d products adds d(d-1)/2 pairs, so a few very active accounts would dominate time, memory and
    weights. `sample` keeps `max_products` of such a user's products (those with the smallest `subsample_keys`:
    seeded, deterministic); `drop` removes the user (what a `HAVING count(*) BETWEEN` query does).
    """
    if heavy_users not in ("sample", "drop"):
        raise ValueError(f"heavy_users must be 'sample' or 'drop', got {heavy_users!r}")
    sizes = baskets.sizes
    few = sizes < min_products
    heavy = sizes > max_products
    kept_per_heavy = max_products if heavy_users == "sample" else 0
    stats = {
        "users": int(len(sizes)),
        "users_too_few": int(few.sum()),
        "purchases_too_few": int(sizes[few].sum()),
        "heavy_users": heavy_users,
        "users_capped": int(heavy.sum()),
        "purchases_removed_by_cap": int(sizes[heavy].sum()) - kept_per_heavy * int(heavy.sum()),
        "pairs_removed_by_cap": int(_pairs(sizes[heavy]).sum()) - int(_pairs(kept_per_heavy)) * int(heavy.sum()),
    }
    row_user = np.repeat(np.arange(len(sizes)), sizes)
    kept_user = ~few & ~heavy if heavy_users == "drop" else ~few
    keep_row = kept_user[row_user]
    if heavy_users == "sample" and heavy.any():
        heavy_rows = np.flatnonzero(heavy[row_user])
        owner = row_user[heavy_rows]
        keys = subsample_keys(seed, baskets.first_row[owner], baskets.nodes[heavy_rows])
        order = np.lexsort((keys, owner))  # stable: equal keys stay in node order
        ranked_owner = owner[order]
        rank = np.arange(len(order)) - np.searchsorted(ranked_owner, ranked_owner)
        keep_row[heavy_rows[order[rank >= max_products]]] = False
    new_sizes = np.bincount(row_user[keep_row], minlength=len(sizes))[kept_user]
    indptr = np.zeros(len(new_sizes) + 1, np.int64)
    np.cumsum(new_sizes, out=indptr[1:])
    stats["users_kept"] = int(kept_user.sum())
    stats["purchases_kept"] = int(indptr[-1])
    return UserBaskets(indptr, baskets.nodes[keep_row], baskets.first_row[kept_user]), stats


def count_pairs(baskets: UserBaskets, n_nodes: int, min_weight: int, pair_block: int = PAIR_BLOCK,
                ) -> tuple[Edges, dict[str, Any]]:
    """Weight = number of users whose basket holds both products, for every pair with weight >= `min_weight`.

    Pairs `(a, b)`, a < b, are generated per block of source nodes `a` (blocks sized from the exact number of
    pairs each source contributes, so transient memory stays near `pair_block` pairs), keyed `a * n_nodes + b`
    as one int64, sorted and run-length counted. Each pair falls in exactly one block: no merge across blocks.
    """
    nodes = baskets.nodes
    later = np.repeat(baskets.indptr[1:], baskets.sizes) - np.arange(len(nodes), dtype=np.int64) - 1
    per_source = np.bincount(nodes, weights=later, minlength=n_nodes)
    cumulative = np.cumsum(per_source)
    total = int(cumulative[-1]) if n_nodes else 0
    cuts = np.searchsorted(cumulative, np.arange(pair_block, total, pair_block), side="left")
    bounds = np.unique(np.concatenate([[0], cuts, [n_nodes]]))
    weight_counts = np.zeros(1, np.int64)  # weight_counts[w] = distinct pairs with weight w
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        rows = np.flatnonzero((nodes >= lo) & (nodes < hi) & (later > 0))
        if len(rows) == 0:
            continue
        keys = _pair_keys(nodes, rows, later[rows], n_nodes)
        keys.sort()
        starts = np.flatnonzero(_run_starts(keys))
        counts = np.diff(np.append(starts, len(keys)))
        weight_counts = _add_counts(weight_counts, np.bincount(counts))
        strong = counts >= min_weight
        parts.append((keys[starts[strong]], counts[strong]))
    keys = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    weights = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    edges = Edges(keys // n_nodes if n_nodes else keys, keys % n_nodes if n_nodes else keys,
                  weights.astype(np.float32))
    stats = {
        "pairs_generated": total,
        "pairs_distinct": int(weight_counts.sum()),
        "pairs_below_min_weight": int(weight_counts[:min_weight].sum()),
        "pair_weight_histogram": log2_histogram(weight_counts),
        "pair_blocks": int(len(bounds) - 1),
    }
    return edges, stats


def top_k_mask(edges: Edges, k: int) -> np.ndarray:
    """Edges among the k heaviest of either endpoint (ties: the neighbour with the smaller id wins).

    "Either endpoint" keeps the graph undirected without letting hubs strip the only edges of small nodes.
    """
    m = len(edges)
    if m == 0:
        return np.zeros(0, bool)
    node = np.concatenate([edges.src, edges.dst])
    other = np.concatenate([edges.dst, edges.src])
    weight = np.concatenate([edges.weight, edges.weight])
    order = np.lexsort((other, -weight, node))
    ranked = node[order]
    rank = np.arange(2 * m) - np.searchsorted(ranked, ranked)
    keep = np.zeros(m, bool)
    keep[order[rank < k] % m] = True
    return keep


def _pair_keys(nodes: np.ndarray, rows: np.ndarray, later: np.ndarray, n_nodes: int) -> np.ndarray:
    """`a * n_nodes + b` for each row's product a and each later product b of the same basket."""
    total = int(later.sum())
    partner = np.repeat(rows + 1 - (np.cumsum(later) - later), later)
    partner += np.arange(total, dtype=np.int64)
    keys = np.repeat(nodes[rows].astype(np.int64) * n_nodes, later)
    keys += nodes[partner]
    return keys


def _run_starts(sorted_values: np.ndarray) -> np.ndarray:
    """True where a run of equal values starts."""
    starts = np.empty(len(sorted_values), bool)
    if len(sorted_values):
        starts[0] = True
        np.not_equal(sorted_values[1:], sorted_values[:-1], out=starts[1:])
    return starts


def _pairs(d: np.ndarray | int) -> np.ndarray:
    d = np.asarray(d, dtype=np.int64)
    return d * (d - 1) // 2


def _add_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(b) > len(a):
        a, b = b, a
    a = a.copy()
    a[:len(b)] += b
    return a
