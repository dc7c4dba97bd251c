"""The release's fixed link-prediction split (`lp_split.parquet`): held-out edges and fixed negatives per query.

A fixed split (as OGB and MM-GRAPH ship one) makes link-prediction figures comparable across runs, methods and
libraries: every scorer ranks the same positives against the same negatives, and the trainer leaves the same
edges out of its graph. The rule, seeded by `release.lp_seed`:

- Linkable nodes are those with image_status `ok` (they have a shard sample, so any method can embed them).
- The graph is the set of distinct node pairs over all edge kinds; a held-out pair is held out in every kind.
- For split S in (val, test), for each linkable node u of S in ascending node_id order: among u's linkable
  neighbours v whose pair is not held out yet, keep those where u and v both still have >= 2 neighbours (so
  holding the pair out leaves each endpoint at least one edge in the training graph); pick one uniformly. The
  row is (S, src=u, dst=v). At most one held-out edge per query node, each pair at most once.
- Negatives of a row: `lp_negatives` distinct linkable nodes that are neither u nor a neighbour of u in the
  full graph (held-out pairs included, so v is never one). The first round(lp_negatives * lp_hard_fraction)
  are drawn among u's class (same label >= 0; fewer when the class has too few), the rest uniformly among all
  linkable nodes; a graph too small for the full count gives every candidate there is.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

import schemas
from etl.graph.filters import distinct_pairs

SPLITS = ("val", "test")
LINKABLE_STATUS = "ok"


def build_lp_split(node_ids: np.ndarray, splits: np.ndarray, labels: np.ndarray, image_status: np.ndarray,
                   src: np.ndarray, dst: np.ndarray, negatives: int, hard_fraction: float, seed: int) -> pa.Table:
    """lp_split rows (schema `lp_split`) for the release's nodes and edges, following the module's rule."""
    node_ids = np.asarray(node_ids, np.int64)
    size = int(max(node_ids.max(initial=-1), np.max(src, initial=-1), np.max(dst, initial=-1))) + 1
    a, b = distinct_pairs(np.asarray(src, np.int64), np.asarray(dst, np.int64))
    indptr, nbrs = _csr(a, b, size)
    degree = np.diff(indptr).astype(np.int64)
    linkable = np.zeros(size, bool)
    linkable[node_ids[np.asarray(image_status, dtype=object) == LINKABLE_STATUS]] = True
    label_of = np.full(size, -1, np.int64)
    label_of[node_ids] = np.asarray(labels, np.int64)
    pool = np.flatnonzero(linkable)
    by_class = {int(c): pool[label_of[pool] == c] for c in np.unique(label_of[pool]) if c >= 0}
    n_hard_wanted = int(round(negatives * hard_fraction))

    rng = np.random.default_rng(seed)
    held: set[tuple[int, int]] = set()
    rows: dict[str, list] = {"split": [], "src": [], "dst": [], "negatives": [], "n_hard": []}
    split_of = np.asarray(splits, dtype=object)
    for split in SPLITS:
        for u in np.sort(node_ids[(split_of == split) & linkable[node_ids]]):
            u = int(u)
            if degree[u] < 2:
                continue
            around = nbrs[indptr[u]:indptr[u + 1]]
            options = [int(v) for v in around if linkable[v] and degree[v] >= 2
                       and (min(u, int(v)), max(u, int(v))) not in held]
            if not options:
                continue
            v = options[int(rng.integers(len(options)))]
            held.add((min(u, v), max(u, v)))
            degree[u] -= 1
            degree[v] -= 1
            excluded = np.append(around, u)
            hard = (_sample(rng, by_class.get(int(label_of[u]), pool[:0]), n_hard_wanted, excluded)
                    if n_hard_wanted else pool[:0])
            easy = _sample(rng, pool, negatives - len(hard), np.concatenate([excluded, hard]))
            rows["split"].append(split)
            rows["src"].append(u)
            rows["dst"].append(v)
            rows["negatives"].append(np.concatenate([hard, easy]).tolist())
            rows["n_hard"].append(len(hard))
    table = pa.table({"split": pa.array(rows["split"], pa.string()), "src": pa.array(rows["src"], pa.int64()),
                      "dst": pa.array(rows["dst"], pa.int64()),
                      "negatives": pa.array(rows["negatives"], pa.list_(pa.int64())),
                      "n_hard": pa.array(rows["n_hard"], pa.int32())})
    return schemas.conform(table, "lp_split")


def _csr(a: np.ndarray, b: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric adjacency of distinct pairs: row u's neighbours are nbrs[indptr[u]:indptr[u+1]], ascending."""
    rows, cols = np.concatenate([a, b]), np.concatenate([b, a])
    order = np.lexsort((cols, rows))
    indptr = np.zeros(size + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=size), out=indptr[1:])
    return indptr, cols[order]


def _sample(rng: np.random.Generator, candidates: np.ndarray, k: int, excluded: np.ndarray) -> np.ndarray:
    """Up to k distinct candidates not in `excluded`, seeded: rejection draws (degrees are far below the pool size,
    so this costs O(k), not O(nodes)); a pool too small to draw from quickly is taken whole, shuffled."""
    if k <= 0 or len(candidates) == 0:
        return candidates[:0]
    chosen: list[int] = []
    seen = set(excluded.tolist())
    for _ in range(8):  # a few rounds of 2k draws; then fall back to the exact pool
        for c in candidates[rng.integers(len(candidates), size=2 * k)].tolist():
            if c not in seen:
                seen.add(c)
                chosen.append(c)
                if len(chosen) == k:
                    return np.asarray(chosen, np.int64)
    rest = np.setdiff1d(candidates, np.asarray(sorted(seen), np.int64))
    extra = rng.permutation(rest)[:k - len(chosen)]
    return np.concatenate([np.asarray(chosen, np.int64), extra.astype(np.int64)])
