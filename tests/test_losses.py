"""Losses against values computed by hand (math.exp/log on explicit logits), on tiny tensors."""
import math

import pytest
import torch

from trainer.losses import clip_loss, structural_loss, weighted_sum


def nll(logits: list[float], positive: int) -> float:
    """-log softmax(logits)[positive], by hand."""
    return -(logits[positive] - math.log(sum(math.exp(v) for v in logits)))


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


IMG = t([[1.0, 0.0], [0.0, 1.0]])
TXT = t([[1.0, 0.0], [0.6, 0.8]])
# img @ txt.T = [[1, 0.6], [0, 0.8]]


def test_clip_loss_matches_hand_computation():
    scale = 2.0
    logits = [[2.0, 1.2], [0.0, 1.6]]
    rows = (nll(logits[0], 0) + nll(logits[1], 1)) / 2
    cols = (nll([logits[0][0], logits[1][0]], 0) + nll([logits[0][1], logits[1][1]], 1)) / 2
    got = clip_loss(IMG, TXT, torch.tensor(scale))
    assert got.item() == pytest.approx(0.5 * (rows + cols), rel=1e-6)


def test_clip_loss_masks_copies_of_one_product_from_each_others_negatives():
    img = t([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    txt = img.clone()
    node_ids = torch.tensor([5, 5, 7])
    # logits = [[1,1,0],[1,1,0],[0,0,1]]; rows 0/1 lose each other's column
    expected_row01 = nll([1.0, 0.0], 0)  # own pair vs the other product
    expected_row2 = nll([0.0, 0.0, 1.0], 2)
    expected = (2 * expected_row01 + expected_row2) / 3  # symmetric matrix: both directions equal
    got = clip_loss(img, txt, torch.tensor(1.0), node_ids=node_ids)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    unmasked = clip_loss(img, txt, torch.tensor(1.0))
    assert unmasked.item() > got.item()


def test_structural_without_edges_self_policy_is_infonce_at_its_temperature():
    temperature = torch.tensor(0.5)
    edges = torch.empty(2, 0, dtype=torch.long)
    got = structural_loss(IMG, TXT, edges, temperature, no_neighbor="self")
    logits = [[2.0, 1.2], [0.0, 1.6]]  # (img @ txt.T) / 0.5
    rows = (nll(logits[0], 0) + nll(logits[1], 1)) / 2
    cols = (nll([2.0, 0.0], 0) + nll([1.2, 1.6], 1)) / 2
    assert got.item() == pytest.approx(0.5 * (rows + cols), rel=1e-6)


def test_structural_without_edges_exclude_policy_is_zero_and_differentiable():
    img = IMG.clone().requires_grad_()
    temperature = torch.tensor(0.07, requires_grad=True)
    got = structural_loss(img, TXT, torch.empty(2, 0, dtype=torch.long), temperature, intra_modal=True,
                          no_neighbor="exclude")
    assert got.item() == 0.0
    got.backward()
    assert torch.equal(img.grad, torch.zeros_like(img)) and temperature.grad.item() == 0.0


def test_structural_neighbours_are_positives():
    img = t([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    txt = t([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    edges = torch.tensor([[0, 1], [1, 0]])  # 0 <-> 1, row 2 isolated
    s = (img @ txt.T).tolist()  # temperature 1
    # image -> text rows: row 0 positives {0, 1}, row 1 {1, 0}, row 2 {2} (self policy)
    i2t = [(nll(s[0], 0) + nll(s[0], 1)) / 2, (nll(s[1], 1) + nll(s[1], 0)) / 2, nll(s[2], 2)]
    cols = [[s[r][c] for r in range(3)] for c in range(3)]
    t2i = [(nll(cols[0], 0) + nll(cols[0], 1)) / 2, (nll(cols[1], 1) + nll(cols[1], 0)) / 2, nll(cols[2], 2)]
    expected_self = 0.5 * (sum(i2t) / 3 + sum(t2i) / 3)
    got = structural_loss(img, txt, edges, torch.tensor(1.0))
    assert got.item() == pytest.approx(expected_self, rel=1e-6)
    expected_excl = 0.5 * (sum(i2t[:2]) / 2 + sum(t2i[:2]) / 2)
    got_excl = structural_loss(img, txt, edges, torch.tensor(1.0), no_neighbor="exclude")
    assert got_excl.item() == pytest.approx(expected_excl, rel=1e-6)


def test_structural_edge_weights_weigh_positives():
    img = t([[1.0, 0.0], [0.0, 1.0]])
    txt = t([[0.8, 0.6], [0.0, 1.0]])
    edges = torch.tensor([[0, 1], [1, 0]])
    weights = torch.tensor([3.0, 3.0])
    s = (img @ txt.T).tolist()
    cols = [[s[0][0], s[1][0]], [s[0][1], s[1][1]]]
    i2t = [(nll(s[0], 0) + 3 * nll(s[0], 1)) / 4, (nll(s[1], 1) + 3 * nll(s[1], 0)) / 4]
    t2i = [(nll(cols[0], 0) + 3 * nll(cols[0], 1)) / 4, (nll(cols[1], 1) + 3 * nll(cols[1], 0)) / 4]
    got = structural_loss(img, txt, edges, torch.tensor(1.0), edge_weight=weights)
    assert got.item() == pytest.approx(0.5 * (sum(i2t) / 2 + sum(t2i) / 2), rel=1e-6)


def test_structural_neighbor_weight_scales_neighbours_against_the_true_pair():
    img = t([[1.0, 0.0], [0.0, 1.0]])
    txt = t([[0.8, 0.6], [0.0, 1.0]])
    edges = torch.tensor([[0, 1], [1, 0]])
    s = (img @ txt.T).tolist()
    cols = [[s[0][0], s[1][0]], [s[0][1], s[1][1]]]
    w = 0.25
    i2t = [(nll(s[0], 0) + w * nll(s[0], 1)) / (1 + w), (nll(s[1], 1) + w * nll(s[1], 0)) / (1 + w)]
    t2i = [(nll(cols[0], 0) + w * nll(cols[0], 1)) / (1 + w), (nll(cols[1], 1) + w * nll(cols[1], 0)) / (1 + w)]
    got = structural_loss(img, txt, edges, torch.tensor(1.0), neighbor_weight=w)
    assert got.item() == pytest.approx(0.5 * (sum(i2t) / 2 + sum(t2i) / 2), rel=1e-6)
    # weight 0: the true pair alone, i.e. plain InfoNCE at the structural temperature
    no_edges = structural_loss(img, txt, torch.empty(2, 0, dtype=torch.long), torch.tensor(1.0))
    assert structural_loss(img, txt, edges, torch.tensor(1.0), neighbor_weight=0.0).item() == \
        pytest.approx(no_edges.item(), rel=1e-6)


def test_structural_intra_modal_term_excludes_self_and_isolated_rows():
    img = t([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    txt = img.clone()
    edges = torch.tensor([[0, 1], [1, 0]])
    cross = structural_loss(img, txt, edges, torch.tensor(1.0))
    both = structural_loss(img, txt, edges, torch.tensor(1.0), intra_modal=True)
    s = (img @ img.T).tolist()
    # row 0: softmax over {1, 2}, positive 1; row 1: over {0, 2}, positive 0; row 2 has no neighbour: left out
    intra_rows = [nll([s[0][1], s[0][2]], 0), nll([s[1][0], s[1][2]], 0)]
    intra = sum(intra_rows) / 2  # image-image and text-text are equal here, their mean is the same
    assert (both - cross).item() == pytest.approx(intra, rel=1e-5)


def test_structural_temperature_gets_a_gradient():
    log_inv_t = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    edges = torch.tensor([[0, 1], [1, 0]])
    struct = structural_loss(IMG, TXT, edges, torch.exp(-log_inv_t))
    struct.backward()
    assert log_inv_t.grad is not None and torch.isfinite(log_inv_t.grad) and log_inv_t.grad.item() != 0.0


def test_weighted_sum_applies_declared_weights_and_passes_gradients_to_every_term():
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    c = torch.tensor(-1.5, requires_grad=True)
    total = weighted_sum({"a": a, "b": b, "c": c}, {"b": 0.25, "c": 0.0})
    assert total.item() == 2.0 + 0.75  # a undeclared: weight 1; c declared 0
    total.backward()
    assert (a.grad.item(), b.grad.item(), c.grad.item()) == (1.0, 0.25, 0.0)
    assert weighted_sum({"clip": a}, {}).item() == 2.0


def test_weighted_sum_rejects_a_weight_without_its_term_and_an_empty_dict():
    with pytest.raises(ValueError, match=r"weights for terms \['struct'\] the method did not return"):
        weighted_sum({"clip": torch.tensor(1.0)}, {"struct": 1.0})
    with pytest.raises(ValueError, match="no loss term"):
        weighted_sum({}, {})


def test_structural_rejects_unknown_policy():
    with pytest.raises(ValueError, match="no_neighbor"):
        structural_loss(IMG, TXT, torch.empty(2, 0, dtype=torch.long), torch.tensor(1.0), no_neighbor="drop")
