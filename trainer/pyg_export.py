"""`Release.to_pyg()`: a release as one `torch_geometric.data.Data`, for graph-ML code that starts from PyG.

One homogeneous `Data`, not a `HeteroData`: every node is a product (one node type), and edge kinds are relations
between products, so the kinds go in `edge_type` (an index into `edge_kinds`), which RGCNConv/FastRGCNConv read
as is, while `data.edge_index[:, data.edge_type == k]` gives one kind to any other layer. Rows are the release's
nodes in nodes.parquet order (node ids may have gaps after graph filtering; PyG needs 0..N-1), so `node_id[i]`
and `asin[i]` name row i and every index below is a row, not a node id.

Attributes:
- `edge_index` [2, 2E] (both directions of each undirected edge, PyG's convention), `edge_type` [2E] long,
  `edge_weight` [2E] float, `edge_kinds` (list of kind names);
  the held-out link-prediction pairs are left out unless `include_held_out` (as the trainer's graph leaves them out);
- `y` [N] long (class id, -1 = no class), `train_mask` / `val_mask` / `test_mask` [N] bool, `has_image` [N] bool,
  `node_id` [N] long, `asin` (list of N strings), `class_names`;
- link prediction (releases with lp_split.parquet): `lp_val_edge_index` / `lp_test_edge_index` [2, H] (query row,
  held-out partner row) and `lp_val_negatives` / `lp_test_negatives` [H, K] rows (-1 pads a row with fewer);
- with `bank="NAME"` (an embedding bank attached as `embeddings/NAME/`): `x` float32 = the bank's text and image
  rows side by side (`x="both"`), or one of them (`x="text"` / `x="image"`), plus `x_text`, `x_image` and
  `image_mask` (false where the node has no image: its image row is zeros).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from trainer.release import Release

X_CHOICES = ("both", "text", "image")


def release_to_pyg(release: "Release", bank: Optional[str] = None, kinds: Optional[Sequence[str]] = None,
                   include_held_out: bool = False, x: str = "both") -> Any:
    """The Data described in the module docstring."""
    import torch
    from torch_geometric.data import Data

    from trainer.release import NODES, ReleaseError, drop_pairs

    if x not in X_CHOICES:
        raise ReleaseError(f"to_pyg(x={x!r}): choose one of {', '.join(X_CHOICES)}")
    nodes = release.nodes()
    ids = np.array(nodes["node_id"], np.int64)  # a copy: torch tensors need writable arrays
    order = np.argsort(ids, kind="stable")
    edges = release.edges(kinds)
    if not include_held_out:
        edges = drop_pairs(edges, release.held_out_pairs())
    src = _rows(ids, order, edges.column("src").to_numpy(zero_copy_only=False))
    dst = _rows(ids, order, edges.column("dst").to_numpy(zero_copy_only=False))
    kind = np.asarray(edges.column("kind").to_pylist(), dtype=object)
    edge_kinds = sorted(set(kind.tolist()))
    code = np.searchsorted(np.asarray(edge_kinds, dtype=object), kind) if len(kind) else np.empty(0, np.int64)
    weight = np.array(edges.column("weight").to_numpy(zero_copy_only=False), np.float32)
    split = nodes["split"]
    data = Data(edge_index=torch.from_numpy(np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])])),
                edge_type=torch.from_numpy(np.concatenate([code, code]).astype(np.int64)),
                edge_weight=torch.from_numpy(np.concatenate([weight, weight])),
                y=torch.from_numpy(np.array(nodes["label"], np.int64)),
                train_mask=torch.from_numpy(split == "train"), val_mask=torch.from_numpy(split == "val"),
                test_mask=torch.from_numpy(split == "test"),
                has_image=torch.from_numpy(np.array(nodes["has_image"], bool)),
                node_id=torch.from_numpy(ids), num_nodes=len(ids))
    data.edge_kinds = edge_kinds
    data.asin = release.table(NODES, ["asin"]).column("asin").to_pylist()
    data.class_names = release.class_names()
    for lp_split in ("val", "test"):
        table = release.lp_split(lp_split)
        if table is None:
            break
        queries = _rows(ids, order, table.column("src").to_numpy(zero_copy_only=False))
        partners = _rows(ids, order, table.column("dst").to_numpy(zero_copy_only=False))
        negatives = table.column("negatives").to_pylist()
        width = max((len(n) for n in negatives), default=0)
        padded = np.full((len(negatives), width), -1, np.int64)
        for i, row in enumerate(negatives):
            padded[i, :len(row)] = _rows(ids, order, np.asarray(row, np.int64))
        data[f"lp_{lp_split}_edge_index"] = torch.from_numpy(np.stack([queries, partners]))
        data[f"lp_{lp_split}_negatives"] = torch.from_numpy(padded)
    if bank is not None:
        _attach_bank(data, release, bank, ids, x)
    return data


def _rows(ids: np.ndarray, order: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Row positions of node ids (each must be a node of the release)."""
    from trainer.release import ReleaseError

    values = np.asarray(values, np.int64)
    pos = order[np.minimum(np.searchsorted(ids, values, sorter=order), len(ids) - 1)] if len(ids) else values
    if len(values) and (len(ids) == 0 or not np.array_equal(ids[pos], values)):
        raise ReleaseError(f"node id(s) {values[ids[pos] != values][:5].tolist()} are not nodes of the release")
    return pos.astype(np.int64)


def _attach_bank(data: Any, release: "Release", name: str, ids: np.ndarray, x: str) -> None:
    """x (and x_text, x_image, image_mask) from the embedding bank `embeddings/NAME/` attached to the release."""
    import torch

    from trainer.bank import load_bank

    bank = load_bank(release.path / "embeddings" / name, release)
    rows = bank.rows(ids)
    text = torch.from_numpy(np.asarray(bank.text[rows], np.float32))
    image = torch.from_numpy(np.asarray(bank.image[rows], np.float32))
    data.x_text, data.x_image = text, image
    data.image_mask = torch.from_numpy(np.asarray(bank.image_mask[rows], bool))
    data.x = {"both": lambda: torch.cat([text, image], dim=1), "text": lambda: text, "image": lambda: image}[x]()
