"""The product graph in CSR form and the per-step in-batch subgraph.

Each step only looks up the rows of the batch's products (O(sum of their degrees)), never scans all edges.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from trainer.release import read_training_edges

#: weight of the link between two copies of the same product in one batch (the self pair's weight in the losses)
COPY_LINK_WEIGHT = 1.0


@dataclass
class CSRGraph:
    """Symmetric graph: row i's neighbours are indices[indptr[i]:indptr[i+1]], sorted by weight desc, id asc.

    Parallel edges of different kinds between the same pair are merged into one with the summed weight (a pair
    linked by both also_buy and also_view is the stronger link).
    """

    indptr: np.ndarray  # int64 [num_nodes + 1]
    indices: np.ndarray  # int64 [nnz]
    weights: np.ndarray  # float32 [nnz]
    max_neighbors: Optional[int] = None

    @property
    def num_nodes(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_edges(self) -> int:
        """Undirected edges (each stored in both rows)."""
        return len(self.indices) // 2

    @classmethod
    def from_edges(cls, src: np.ndarray, dst: np.ndarray, weight: Optional[np.ndarray] = None,
                   num_nodes: Optional[int] = None, max_neighbors: Optional[int] = None) -> "CSRGraph":
        src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
        weight = np.ones(len(src), np.float32) if weight is None else np.asarray(weight, np.float32)
        if len(src) and min(src.min(), dst.min()) < 0:
            raise ValueError("negative node id in edges")
        keep = src != dst
        src, dst, weight = src[keep], dst[keep], weight[keep]
        n = int(num_nodes) if num_nodes is not None else int(max(src.max(initial=-1), dst.max(initial=-1)) + 1)
        if len(src) and max(src.max(), dst.max()) >= n:
            raise ValueError(f"edge endpoint >= num_nodes {n}")
        rows, cols = np.concatenate([src, dst]), np.concatenate([dst, src])
        vals = np.concatenate([weight, weight])
        # merge parallel edges: unique (row, col) with summed weight
        pair = rows * n + cols
        uniq, inverse = np.unique(pair, return_inverse=True)
        merged = np.zeros(len(uniq), np.float64)
        np.add.at(merged, inverse, vals)
        rows, cols, vals = uniq // n, uniq % n, merged.astype(np.float32)
        order = np.lexsort((cols, -vals, rows))  # by row, then weight desc, then neighbour id
        rows, cols, vals = rows[order], cols[order], vals[order]
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        return cls(indptr=indptr, indices=cols.astype(np.int64), weights=vals, max_neighbors=max_neighbors)

    @classmethod
    def from_table(cls, edges: pa.Table, num_nodes: Optional[int] = None,
                   max_neighbors: Optional[int] = None) -> "CSRGraph":
        """From an edge table with src, dst and weight columns (`Release.edges()`, `read_edges`)."""
        return cls.from_edges(edges.column("src").to_numpy(), edges.column("dst").to_numpy(),
                              edges.column("weight").to_numpy(), num_nodes=num_nodes, max_neighbors=max_neighbors)

    @classmethod
    def from_parquet(cls, edges_path: Path, num_nodes: Optional[int] = None, kinds: Optional[Sequence[str]] = None,
                     max_neighbors: Optional[int] = None) -> "CSRGraph":
        """The training graph of an edges file (a release's edges.parquet or `--graph FILE`), optionally only some
        kinds: the held-out link-prediction pairs of an lp_split.parquet beside it are left out
        (`read_training_edges`), so a run never trains on an edge evaluation scores."""
        return cls.from_table(read_training_edges(edges_path, kinds), num_nodes=num_nodes,
                              max_neighbors=max_neighbors)

    def neighbors(self, node: int) -> np.ndarray:
        return self.indices[self.indptr[node]:self.indptr[node + 1]]

    def batch_edge_index(self, node_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Directed, symmetric in-batch edges (PyG convention, row 0 = source) and their weights.

        Each distinct product picks its in-batch neighbours from its CSR row, highest weight first, at most
        `max_neighbors`; the picks are then symmetrised (a product can end up with more links when others pick
        it). A product appearing several times in the batch: every copy gets the links of the product, to every
        copy of each neighbour, and copies are linked to each other (weight COPY_LINK_WEIGHT), so duplicates act
        as each other's positives rather than as negatives. Ids outside the graph have no neighbours.
        """
        ids = node_ids.detach().cpu().numpy().astype(np.int64)
        uniq, inverse = np.unique(ids, return_inverse=True)
        src_u, dst_u, w_u = self._unique_edges(uniq)
        # copies of one product, as (u, u) pairs expanded below with the diagonal removed
        counts = np.bincount(inverse, minlength=len(uniq))
        dup = np.flatnonzero(counts > 1)
        src_u = np.concatenate([src_u, dup])
        dst_u = np.concatenate([dst_u, dup])
        w_u = np.concatenate([w_u, np.full(len(dup), COPY_LINK_WEIGHT, np.float32)])
        src, dst, w = _expand_to_positions(src_u, dst_u, w_u, inverse, counts)
        keep = src != dst
        edge_index = torch.from_numpy(np.stack([src[keep], dst[keep]]))
        return edge_index.to(node_ids.device), torch.from_numpy(w[keep]).to(node_ids.device)

    def _unique_edges(self, uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Symmetric edges between distinct batch products, as positions into `uniq` (sorted ids)."""
        in_graph = (uniq >= 0) & (uniq < self.num_nodes)
        local = np.flatnonzero(in_graph)
        starts, ends = self.indptr[uniq[local]], self.indptr[uniq[local] + 1]
        degrees = ends - starts
        total = int(degrees.sum())
        if total == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
        owner = np.repeat(local, degrees)
        offsets = np.arange(total) - np.repeat(np.cumsum(degrees) - degrees, degrees)
        flat = np.repeat(starts, degrees) + offsets
        nbr, weight = self.indices[flat], self.weights[flat]
        pos = np.searchsorted(uniq, nbr)
        pos_clipped = np.minimum(pos, len(uniq) - 1)
        hit = uniq[pos_clipped] == nbr
        owner, target, weight = owner[hit], pos_clipped[hit], weight[hit]
        if self.max_neighbors is not None and len(owner):
            # rows are weight-sorted, so each owner's first k hits are its top-k in-batch neighbours
            first = np.concatenate([[0], np.flatnonzero(np.diff(owner)) + 1])
            run_start = np.repeat(first, np.diff(np.concatenate([first, [len(owner)]])))
            rank = np.arange(len(owner)) - run_start
            sel = rank < self.max_neighbors
            owner, target, weight = owner[sel], target[sel], weight[sel]
        # symmetrise by union: (a, b) kept if a picked b or b picked a
        a = np.concatenate([owner, target])
        b = np.concatenate([target, owner])
        wt = np.concatenate([weight, weight])
        _, first_idx = np.unique(a * len(uniq) + b, return_index=True)
        return a[first_idx], b[first_idx], wt[first_idx]


def _expand_to_positions(src_u: np.ndarray, dst_u: np.ndarray, w_u: np.ndarray, inverse: np.ndarray,
                         counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges between distinct products -> edges between every copy of each endpoint (batch positions)."""
    order = np.argsort(inverse, kind="stable")
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_pairs = counts[src_u] * counts[dst_u]
    total = int(n_pairs.sum())
    edge = np.repeat(np.arange(len(src_u)), n_pairs)
    k = np.arange(total) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    cnt_dst = counts[dst_u][edge]
    src = order[first[src_u][edge] + k // cnt_dst]
    dst = order[first[dst_u][edge] + k % cnt_dst]
    return src.astype(np.int64), dst.astype(np.int64), w_u[edge].astype(np.float32)


def batch_graph_stats(node_ids: Tensor, edge_index: Tensor) -> dict[str, float]:
    """Density of the in-batch graph: share of samples with >= 1 in-batch neighbour (a different product), directed
    in-batch edges per sample (copy links excluded), share of rows that duplicate an earlier row's product."""
    n = len(node_ids)
    if n == 0:
        return {"neighbor_frac": 0.0, "edges_per_sample": 0.0, "duplicate_frac": 0.0}
    ids = node_ids.detach().cpu()
    src, dst = edge_index[0].cpu(), edge_index[1].cpu()
    real = ids[src] != ids[dst]
    has = torch.zeros(n, dtype=torch.bool)
    has[dst[real]] = True
    return {"neighbor_frac": has.float().mean().item(), "edges_per_sample": real.sum().item() / n,
            "duplicate_frac": 1.0 - len(torch.unique(ids)) / n}
