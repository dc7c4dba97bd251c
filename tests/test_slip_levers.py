"""SLIP's levers of the regime study: 2-hop positives, lambda warm-up, where the structural loss acts (GAT off,
a separate head), stop-gradient into the towers; each checked on a real micro model's forward/backward or by hand,
and a short run per lever through the real loop."""
import pytest
import torch

from helpers.training import make_train_assets, train_args
from trainer.config import TrainConfig
from trainer.loop import train
from trainer.losses import positive_weights, structural_loss, with_two_hop
from trainer.methods.base import BatchContext
from trainer.model import build_model
from trainer.run_io import read_log

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PATH = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])  # 0 - 1 - 2, symmetric; 3 is isolated


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_train_assets(tmp_path_factory.mktemp("levers"), n_nodes=96)


def test_two_hop_positives_are_the_neighbours_of_neighbours_not_already_linked() -> None:
    weights = with_two_hop(positive_weights(4, PATH))
    assert weights.tolist() == [[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]


def test_two_hop_structural_loss_equals_the_loss_with_the_two_hop_edge_given() -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    t = torch.tensor(0.1)
    closed = torch.cat([PATH, torch.tensor([[0, 2], [2, 0]])], dim=1)
    assert torch.allclose(structural_loss(img, txt, PATH, t, hops=2), structural_loss(img, txt, closed, t))
    assert not torch.allclose(structural_loss(img, txt, PATH, t, hops=2), structural_loss(img, txt, PATH, t))
    with pytest.raises(ValueError, match="hops"):
        structural_loss(img, txt, PATH, t, hops=3)


def _cfg(assets, tmp_path, **levers) -> TrainConfig:
    return TrainConfig(**train_args(assets, tmp_path / "run", workers=0, augment=False, gat_dropout=0.0, **levers))


def test_lambda_warmup_ramps_the_structural_weight_linearly(assets, tmp_path) -> None:
    method = build_model(_cfg(assets, tmp_path, lambda_struct=0.5, lambda_struct_warmup=4)).method
    assert [method.term_weights(step)["struct"] for step in range(6)] == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    assert build_model(_cfg(assets, tmp_path, lambda_struct=0.5)).method.term_weights(0)["struct"] == 0.5


def _struct_grads(cfg: TrainConfig) -> dict[str, float]:
    """Gradient norm per parameter group of the structural term alone, on one random batch."""
    torch.manual_seed(0)
    model = build_model(cfg)
    images, tokens = torch.randn(4, 3, 32, 32), torch.randint(1, 400, (4, 16))
    out = model(images, tokens, PATH)
    terms = model.method.loss_terms(model, out, BatchContext(torch.arange(4), PATH))
    terms["struct"].backward()
    norms: dict[str, float] = {}
    for name, param in model.named_parameters():
        group = name.split(".")[0] if not name.startswith("clip.") else name.split(".")[1]
        grad = 0.0 if param.grad is None else param.grad.norm().item()
        norms[group] = norms.get(group, 0.0) + grad
    return norms


def test_stop_grad_keeps_the_structural_loss_out_of_the_towers(assets, tmp_path) -> None:
    plain = _struct_grads(_cfg(assets, tmp_path))
    stopped = _struct_grads(_cfg(assets, tmp_path, struct_stop_grad=True))
    assert plain["visual"] > 0 and plain["transformer"] > 0  # the structural term trains the towers by default
    assert stopped["visual"] == 0 and stopped["transformer"] == 0
    assert stopped["gat_image"] > 0 and stopped["gat_text"] > 0 and stopped["struct_log_inv_temperature"] > 0


def test_no_gat_refiner_scores_the_encoder_embeddings_and_has_no_graph_rows(assets, tmp_path) -> None:
    cfg = _cfg(assets, tmp_path, gat_refiner=False)
    model = build_model(cfg)
    assert not model.method.refines_embeddings and not hasattr(model, "gat_image")
    out = model(torch.randn(4, 3, 32, 32), torch.randint(1, 400, (4, 16)), PATH)
    assert torch.equal(out["image_struct"], out["image_emb"]) and torch.equal(out["text_struct"], out["text_emb"])
    assert _struct_grads(cfg)["visual"] > 0
    with pytest.raises(ValueError, match="nothing to train"):
        _cfg(assets, tmp_path, gat_refiner=False, struct_stop_grad=True)


def test_struct_head_is_trained_and_is_not_exported(assets, tmp_path) -> None:
    cfg = _cfg(assets, tmp_path, struct_head=True)
    grads = _struct_grads(cfg)
    assert grads["struct_head_image"] > 0 and grads["struct_head_text"] > 0
    model = build_model(cfg)
    assert not any(key.startswith("struct_head") for key in model.clip.state_dict())


@pytest.mark.parametrize("levers", [
    {"lambda_struct_warmup": 3, "struct_hops": 2},
    {"gat_refiner": False},
    {"struct_head": True, "struct_stop_grad": True},
])
def test_a_short_run_with_each_lever_trains_and_logs(assets, tmp_path, levers) -> None:
    summary = train(TrainConfig(**train_args(assets, tmp_path / "run", workers=0, steps=4, warmup=1,
                                             ckpt_every=4, **levers)))
    log = read_log(tmp_path / "run")
    assert summary["steps"] == 4 and len(log) == 4
    assert all(row["loss_struct"] > 0 for row in log)
    if levers.get("lambda_struct_warmup"):  # the total is CLIP + ramped lambda * structural, step by step
        lambda_struct = TrainConfig.model_fields["lambda_struct"].default
        for step, row in enumerate(log):
            weight = lambda_struct * min(1.0, (step + 1) / 3)
            assert row["loss"] == pytest.approx(row["loss_clip"] + weight * row["loss_struct"], rel=1e-5)
