"""CLIP's symmetric InfoNCE, SigLIP's sigmoid loss, SLIP's structural (multi-positive) contrastive loss,
SuperCLIP's IDF-weighted token classification, and the weighted sum of named terms the loop trains on.

The losses are computed in fp32 on L2-normalised embeddings.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def same_product_mask(node_ids: Tensor) -> Tensor:
    """[B, B] bool: True where two *different* batch rows hold the same product."""
    same = node_ids.view(-1, 1) == node_ids.view(1, -1)
    return same & ~torch.eye(len(node_ids), dtype=torch.bool, device=node_ids.device)


def clip_loss(img: Tensor, txt: Tensor, logit_scale: Tensor, node_ids: Optional[Tensor] = None,
              rows: Optional[slice] = None) -> Tensor:
    """Symmetric InfoNCE: row i's positive is column i.

    A product appearing twice in the batch (rows i and k) would make text k - a copy of text i - a negative for
    image i. With `node_ids` given, copies are masked out of each other's negatives (their logits are removed from
    the softmax); each row keeps exactly its own pair as the positive.

    `rows` (DDP --local-loss): only those rows' images and texts are scored, against every column, so the logits
    are [rows, B] instead of [B, B]; the mean over ranks of equal-sized row blocks is the full loss.
    """
    img, txt = img.float(), txt.float()
    if rows is None:
        rows = slice(0, len(img))
    target = torch.arange(len(img), device=img.device)[rows]
    scale = logit_scale.float()
    logits_img, logits_txt = scale * img[rows] @ txt.T, scale * txt[rows] @ img.T
    if node_ids is not None:
        mask = same_product_mask(node_ids)[rows]
        logits_img = logits_img.masked_fill(mask, float("-inf"))
        logits_txt = logits_txt.masked_fill(mask, float("-inf"))
    return 0.5 * (F.cross_entropy(logits_img, target) + F.cross_entropy(logits_txt, target))


def sigmoid_loss(img: Tensor, txt: Tensor, logit_scale: Tensor, logit_bias: Tensor,
                 node_ids: Optional[Tensor] = None, duplicates: str = "mask", rows: Optional[slice] = None) -> Tensor:
    """SigLIP's pairwise sigmoid loss: -sum_ij log sigmoid(z_ij * (t * <img_i, txt_j> + b)) / B, z = +1 on the
    diagonal and -1 elsewhere; the value of open_clip's `SigLipLoss` on one rank. `logit_scale` is t (already
    exponentiated, like clip_loss's), `logit_bias` is b.

    Same-product copies (rows i != k with one node id, given `node_ids`): `duplicates='mask'` drops their pairs from
    the sum (as clip_loss removes them from the softmax: a copy is neither pushed apart nor pulled together);
    'positive' labels them +1 (the sigmoid loss takes any number of positives per row). The sum stays divided by B.

    Under DDP the loop passes the gathered global batch, so this is the global B x B loss on every rank. open_clip
    instead has each rank score its own b images against its texts and, passed around the ring by neighbour
    exchange, every other rank's texts (negatives only), divided by b; DDP's gradient mean over the W ranks then
    gives (1/W) sum_r (1/b) sum_{i in r} sum_j = (1/B) sum_{ij}, the same objective and gradient as here: the
    exchange of negatives is the all-gather. The ring only saves the memory of holding all texts at once.

    `rows` (DDP --local-loss): only those rows' images are scored, against every text, divided by the number of
    rows: exactly open_clip's per-rank value, whose mean over ranks is the full loss.
    """
    if duplicates not in ("mask", "positive"):
        raise ValueError(f"duplicates must be 'mask' or 'positive', got {duplicates!r}")
    img, txt = img.float(), txt.float()
    if rows is None:
        rows = slice(0, len(img))
    logits = logit_scale.float() * img[rows] @ txt.T + logit_bias.float()
    eye = torch.eye(len(img), dtype=torch.bool, device=img.device)[rows]
    labels = eye.float() * 2 - 1
    pair_loss = -F.logsigmoid(labels * logits)
    if node_ids is not None:
        copies = same_product_mask(node_ids)[rows]
        if duplicates == "mask":
            pair_loss = pair_loss.masked_fill(copies, 0.0)
        else:
            pair_loss = torch.where(copies, -F.logsigmoid(logits), pair_loss)
    return pair_loss.sum() / len(logits)


def multi_hot(tokens: Tensor, vocab_size: int, ignore_ids: Sequence[int] = ()) -> Tensor:
    """[b, vocab] bool: which token ids occur in each caption (once, however often), `ignore_ids` never set."""
    hot = torch.zeros(tokens.shape[0], vocab_size, dtype=torch.bool, device=tokens.device)
    hot.scatter_(1, tokens.long(), True)
    if len(ignore_ids):
        hot[:, torch.as_tensor(list(ignore_ids), dtype=torch.long, device=tokens.device)] = False
    return hot


def idf_weights(doc_freq: Tensor, documents: Tensor, smoothing: float) -> Tensor:
    """SuperCLIP's online IDF: w_c = log((n + s) / (df_c + s)); 0 for a token in every caption, largest for the
    rarest. `documents` n and `doc_freq` df are running counts; `smoothing` s (SuperCLIP: 1 / global batch)."""
    n = documents.double()
    return torch.log((n + smoothing) / (doc_freq.double() + smoothing)).float()


def token_classification_loss(logits: Tensor, hot: Tensor, weights: Tensor) -> Tensor:
    """SuperCLIP's term: softmax cross-entropy of the head's vocabulary logits [b, V] against the caption's
    multi-hot ids `hot` [b, V] weighted by `weights` [V] and L1-normalised per row.

    A row whose weighted target is all zero (every id ignored, or weights still 0) has nothing to learn and is left
    out; with no row left the term is exactly 0 (still differentiable)."""
    target = hot.float() * weights.float().clamp(min=0)
    mass = target.sum(1)
    rows = mass > 0
    log_prob = torch.log_softmax(logits.float(), dim=1)
    if not rows.any():
        return log_prob.sum() * 0.0
    target = target[rows] / mass[rows, None]
    return -(target * log_prob[rows]).sum(1).mean()


def positive_weights(num_rows: int, edge_index: Tensor, edge_weight: Optional[Tensor] = None) -> Tensor:
    """[B, B] neighbour weights from a (symmetric) edge_index; 0 where not linked, no diagonal."""
    weights = torch.zeros(num_rows, num_rows, device=edge_index.device)
    if edge_index.numel():
        values = edge_weight.float() if edge_weight is not None else torch.ones(edge_index.shape[1],
                                                                                 device=edge_index.device)
        weights[edge_index[1], edge_index[0]] = values
    weights.fill_diagonal_(0)
    return weights


def with_two_hop(weights: Tensor) -> Tensor:
    """[B, B] neighbour weights plus weight 1 for every 2-hop pair not directly linked (no diagonal)."""
    linked = (weights > 0).float()
    two_hop = ((linked @ linked) > 0) & (linked == 0)
    two_hop.fill_diagonal_(False)
    return weights + two_hop.float()


def _multi_positive_nll(logits: Tensor, pos: Tensor, rows: Tensor) -> Tensor:
    """Per-row  -sum_p w_p log softmax(logits)_p / sum_p w_p  over the selected rows (SupCon 'L_out' form)."""
    log_prob = torch.log_softmax(logits[rows], dim=1)
    pos = pos[rows]
    # masked entries (-inf logits) never carry positive weight; zero them to avoid 0 * -inf
    log_prob = torch.where(pos > 0, log_prob, torch.zeros_like(log_prob))
    return -(pos * log_prob).sum(1) / pos.sum(1)


def structural_loss(img: Tensor, txt: Tensor, edge_index: Tensor, temperature: Tensor, intra_modal: bool = False,
                    edge_weight: Optional[Tensor] = None, no_neighbor: str = "self",
                    rows: Optional[slice] = None, neighbor_weight: float = 1.0, hops: int = 1) -> Tensor:
    """Multi-positive InfoNCE where in-batch graph neighbours are positives.

    `hops=2` adds the in-batch neighbours of neighbours (not already linked) as positives of weight 1.

    `neighbor_weight` scales every cross-modal neighbour positive against the true pair (weight 1): 1 counts a
    neighbour's caption as correct as the product's own, 0 leaves plain InfoNCE on the refined embeddings.

    Cross-modal (always): image i against all texts, positives = text i (weight 1) and the texts of i's
    neighbours (weight 1, or the edge weight with `edge_weight`); symmetric for text i against all images;
    cross = mean of both directions. Intra-modal (optional): image i against the other images (self excluded from
    the softmax), positives = its neighbours; same for texts; added as the mean of both.

    `no_neighbor`: rows without an in-batch neighbour either keep the self pair as their only cross-modal positive
    ('self': the row's term is plain InfoNCE) or are left out ('exclude'). Intra-modal rows without a neighbour
    have no positive and are always left out. A term with no row left is exactly 0 (still differentiable), so a
    batch without edges is well defined under every setting.

    Duplicated products are linked to each other by the batch graph, so copies are each other's positives.

    `rows` (DDP --local-loss): only those rows are scored (against every column); with no_neighbor='self' and no
    intra-modal term the mean over ranks of equal-sized row blocks is the full loss, otherwise close to it (the
    rows a term keeps differ per rank).
    """
    if no_neighbor not in ("self", "exclude"):
        raise ValueError(f"no_neighbor must be 'self' or 'exclude', got {no_neighbor!r}")
    img, txt = img.float(), txt.float()
    num_rows = len(img)
    neighbours = positive_weights(num_rows, edge_index, edge_weight)
    if hops == 2:
        neighbours = with_two_hop(neighbours)
    elif hops != 1:
        raise ValueError(f"hops must be 1 or 2, got {hops}")
    has_neighbour = (neighbours > 0).any(1)
    mine = torch.zeros_like(has_neighbour)
    mine[rows if rows is not None else slice(None)] = True
    has_neighbour = has_neighbour & mine
    rows = mine if no_neighbor == "self" else has_neighbour
    inv_t = 1.0 / temperature.float()
    zero = (img.sum() + txt.sum()) * 0.0 * inv_t

    def term(logits: Tensor, pos: Tensor, selected: Tensor) -> Tensor:
        return _multi_positive_nll(logits, pos, selected).mean() if selected.any() else zero

    cross_pos = neighbor_weight * neighbours + torch.eye(num_rows, device=img.device)
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


def sigmoid_neighbour_loss(img: Tensor, txt: Tensor, logit_scale: Tensor, logit_bias: Tensor, edge_index: Tensor,
                           node_ids: Optional[Tensor] = None, rows: Optional[slice] = None) -> tuple[Tensor, Tensor]:
    """SAIL + structure: SigLIP's sigmoid loss with in-batch graph neighbours as extra positives (label +1 on the
    diagonal and on every pair the symmetric `edge_index` links, -1 elsewhere), split in two sums, each divided by
    B as in sigmoid_loss: (pairs: the diagonal and every unlinked pair, neighbours: the linked pairs). Their sum is
    the relabelled loss; a weight on `neighbours` sets how hard neighbours are pulled together without ever pushing
    them apart. With no edge, `pairs` is sigmoid_loss and `neighbours` 0. Same-product copies are left out of both
    (sigmoid_loss's 'mask'); `rows` as in sigmoid_loss."""
    img, txt = img.float(), txt.float()
    if rows is None:
        rows = slice(0, len(img))
    logits = logit_scale.float() * img[rows] @ txt.T + logit_bias.float()
    n = len(img)
    linked = positive_weights(n, edge_index) > 0
    copies = same_product_mask(node_ids) if node_ids is not None else torch.zeros_like(linked)
    linked, copies = (linked & ~copies)[rows], copies[rows]
    labels = torch.eye(n, device=img.device)[rows] * 2 - 1
    pairs = (-F.logsigmoid(labels * logits)).masked_fill(linked | copies, 0.0).sum() / len(logits)
    neighbours = (-F.logsigmoid(logits)).masked_fill(~linked, 0.0).sum() / len(logits)
    return pairs, neighbours
