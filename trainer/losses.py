"""CLIP's symmetric InfoNCE, SLIP's structural (multi-positive) contrastive loss, and the weighted sum of named
terms the loop trains on.

The losses are computed in fp32 on L2-normalised embeddings.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def same_product_mask(node_ids: Tensor) -> Tensor:
    """[B, B] bool: True where two *different* batch rows hold the same product."""
    same = node_ids.view(-1, 1) == node_ids.view(1, -1)
    return same & ~torch.eye(len(node_ids), dtype=torch.bool, device=node_ids.device)


def clip_loss(img: Tensor, txt: Tensor, logit_scale: Tensor, node_ids: Optional[Tensor] = None) -> Tensor:
    """Symmetric InfoNCE: row i's positive is column i.

    A product appearing twice in the batch (rows i and k) would make text k - a copy of text i - a negative for
    image i. With `node_ids` given, copies are masked out of each other's negatives (their logits are removed from
    the softmax); each row keeps exactly its own pair as the positive.
    """
    img, txt = img.float(), txt.float()
    logits = logit_scale.float() * img @ txt.T
    if node_ids is not None:
        logits = logits.masked_fill(same_product_mask(node_ids), float("-inf"))
    target = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def positive_weights(num_rows: int, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
    """[B, B] neighbour weights from a (symmetric) edge_index; 0 where not linked, no diagonal."""
    weights = torch.zeros(num_rows, num_rows, device=edge_index.device)
    if edge_index.numel():
        values = edge_weight.float() if edge_weight is not None else torch.ones(edge_index.shape[1],
                                                                                 device=edge_index.device)
        weights[edge_index[1], edge_index[0]] = values
    weights.fill_diagonal_(0)
    return weights


def _multi_positive_nll(logits: Tensor, pos: Tensor, rows: Tensor) -> Tensor:
    """Per-row  -sum_p w_p log softmax(logits)_p / sum_p w_p  over the selected rows (SupCon 'L_out' form)."""
    log_prob = torch.log_softmax(logits[rows], dim=1)
    pos = pos[rows]
    # masked entries (-inf logits) never carry positive weight; zero them to avoid 0 * -inf
    log_prob = torch.where(pos > 0, log_prob, torch.zeros_like(log_prob))
    return -(pos * log_prob).sum(1) / pos.sum(1)


def structural_loss(img: Tensor, txt: Tensor, edge_index: Tensor, temperature: Tensor, intra_modal: bool = False,
                    edge_weight: Optional[Tensor] = None, no_neighbor: str = "self") -> Tensor:
    """Multi-positive InfoNCE where in-batch graph neighbours are positives.

    Cross-modal (always): image i against all texts, positives = text i (weight 1) and the texts of i's
    neighbours (weight 1, or the edge weight with `edge_weight`); symmetric for text i against all images;
    cross = mean of both directions. Intra-modal (optional): image i against the other images (self excluded from
    the softmax), positives = its neighbours; same for texts; added as the mean of both.

    `no_neighbor`: rows without an in-batch neighbour either keep the self pair as their only cross-modal positive
    ('self': the row's term is plain InfoNCE) or are left out ('exclude'). Intra-modal rows without a neighbour
    have no positive and are always left out. A term with no row left is exactly 0 (still differentiable), so a
    batch without edges is well defined under every setting.

    Duplicated products are linked to each other by the batch graph, so copies are each other's positives.
    """
    if no_neighbor not in ("self", "exclude"):
        raise ValueError(f"no_neighbor must be 'self' or 'exclude', got {no_neighbor!r}")
    img, txt = img.float(), txt.float()
    num_rows = len(img)
    neighbours = positive_weights(num_rows, edge_index, edge_weight)
    has_neighbour = (neighbours > 0).any(1)
    rows = torch.ones_like(has_neighbour) if no_neighbor == "self" else has_neighbour
    inv_t = 1.0 / temperature.float()
    zero = (img.sum() + txt.sum()) * 0.0 * inv_t

    def term(logits: Tensor, pos: Tensor, selected: Tensor) -> Tensor:
        return _multi_positive_nll(logits, pos, selected).mean() if selected.any() else zero

    cross_pos = neighbours + torch.eye(num_rows, device=img.device)
    sim = img @ txt.T * inv_t
    loss = 0.5 * (term(sim, cross_pos, rows) + term(sim.T, cross_pos, rows))
    if intra_modal:
        self_mask = torch.eye(num_rows, dtype=torch.bool, device=img.device)
        sim_ii = (img @ img.T * inv_t).masked_fill(self_mask, float("-inf"))
        sim_tt = (txt @ txt.T * inv_t).masked_fill(self_mask, float("-inf"))
        loss = loss + 0.5 * (term(sim_ii, neighbours, has_neighbour) + term(sim_tt, neighbours, has_neighbour))
    return loss


def weighted_sum(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """Total loss = sum of the named terms, each times its declared weight (1 when not declared).

    Methods return named terms (as open_clip's losses do); the loop sums them here, so no method edits the loop.
    """
    if not terms:
        raise ValueError("a method returned no loss term")
    unknown = set(weights) - set(terms)
    if unknown:
        raise ValueError(f"weights for terms {sorted(unknown)} the method did not return (terms: {sorted(terms)})")
    total: Optional[Tensor] = None
    for name, term in terms.items():
        weighted = weights.get(name, 1.0) * term
        total = weighted if total is None else total + weighted
    return total
