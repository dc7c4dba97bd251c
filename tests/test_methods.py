"""Training methods as plug-ins: a method defined here (CLIP + an L2 term on a head of its own, with one config
field) trains through the unchanged loop, its term is logged and weighted, its head gets gradients; the registry
checks names and option clashes; SLIP keeps its state-dict layout."""
import json

import pytest
import torch
from pydantic import BaseModel, Field
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from helpers.training import make_train_assets, train_args
from trainer.config import TrainConfig, TrainSetupError, build_config, config_class
from trainer.loop import Trainer
from trainer.methods import get_method, method_names, register, registry
from trainer.methods.clip import CLIP
from trainer.methods.slip import SLIPOptions
from trainer.model import build_model
from trainer.run_io import read_log


class ToyOptions(BaseModel):
    toy_weight: float = Field(0.5, ge=0, description="Weight of the toy L2 term.")


class ToyL2(CLIP):
    """CLIP plus the mean square of a small head's output on the image embeddings."""

    name = "toy-l2"
    description = "CLIP + an L2 term on a toy head (tests only)"
    Options = ToyOptions

    def build(self, embed_dim):
        return {"toy_head": nn.Linear(embed_dim, 8)}

    def loss_terms(self, model, out, ctx):
        terms = super().loss_terms(model, out, ctx)
        terms["toy"] = model.toy_head(out["image_emb"].float()).pow(2).mean()
        return terms

    def term_weights(self, step=0):
        return {"toy": self.cfg.toy_weight}

    def log_scalars(self, model):
        return {"toy_head_norm": model.toy_head.weight.norm().item()}


@pytest.fixture
def toy(monkeypatch):
    """ToyL2 registered for one test only: the registry is a process-wide dict, and a method left in it would
    change the config class of every later test."""
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    register(ToyL2)
    return ToyL2


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_train_assets(tmp_path_factory.mktemp("methods"), n_nodes=120)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_method_defined_in_a_test_trains_logs_its_term_and_its_head_gets_gradients(assets, toy, tmp_path):
    out = tmp_path / "toy"
    cfg = build_config(**train_args(assets, out, method="toy-l2", toy_weight=0.25, steps=3, workers=0,
                                    ckpt_every=3))
    assert "toy-l2" in method_names() and cfg.toy_weight == 0.25
    trainer = Trainer(cfg)
    summary = trainer.run()

    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3]
    for r in log:  # the loop's total is the method's terms with the method's weight
        assert r["loss_toy"] > 0 and r["loss"] == pytest.approx(r["loss_clip"] + 0.25 * r["loss_toy"], rel=1e-6)
        assert r["toy_head_norm"] > 0 and "loss_struct" not in r
    grad = trainer.model.toy_head.weight.grad
    assert grad is not None and grad.abs().sum().item() > 0
    assert summary["final"] == {k: log[-1][k] for k in ("loss", "loss_clip", "loss_toy")}
    assert json.loads((out / "config.json").read_text())["toy_weight"] == 0.25
    state = torch.load(out / "checkpoints" / "step-00000003.pt", weights_only=True)
    assert {"toy_head.weight", "toy_head.bias"} <= set(state["model"])
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss_toy")] == [1, 2, 3]


def test_the_loop_total_is_the_weighted_sum_of_the_terms_and_reaches_every_part(assets, tmp_path):
    trainer = Trainer(TrainConfig(**train_args(assets, tmp_path / "slip", lambda_struct=0.3, steps=1,
                                               workers=0)))
    part = trainer._micro_step(next(trainer.batches))
    assert set(part["terms"]) == {"clip", "struct"}
    assert part["loss"] == pytest.approx(part["terms"]["clip"] + 0.3 * part["terms"]["struct"], rel=1e-6)
    for name in ("gat_image", "gat_text"):
        grads = [p.grad for p in getattr(trainer.model, name).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name
    assert trainer.model.struct_log_inv_temperature.grad is not None


def test_unknown_method_is_refused_with_the_registered_names():
    with pytest.raises(ValueError, match=rf"unknown method 'nope'; registered: {', '.join(method_names())}$"):
        get_method("nope")
    assert {"clip", "slip"} <= set(method_names())
    with pytest.raises(TrainSetupError, match="method: Input should be 'clip', "):
        build_config(release="r", method="nope")
    assert TrainConfig.model_fields["method"].annotation.__args__ == tuple(method_names())


def test_method_fields_and_checks_come_from_the_method(toy):
    assert set(SLIPOptions.model_fields) <= set(TrainConfig.model_fields)
    assert "toy_weight" in config_class().model_fields and "toy_weight" not in TrainConfig.model_fields
    with pytest.raises(TrainSetupError, match="toy_weight: Input should be greater than or equal to 0"):
        build_config(release="r", method="toy-l2", toy_weight=-1)
    with pytest.raises(TrainSetupError, match="--method slip with --shards needs --graph"):
        build_config(shards="x.tar", method="slip")
    build_config(shards="x.tar", method="toy-l2")  # needs_graph is False: no graph required
    with pytest.raises(TrainSetupError, match="gat_hidden 6 is not divisible by gat_heads 4"):
        build_config(release="r", gat_hidden=6)


def test_registry_refuses_name_and_option_clashes(toy):
    class Renamed(CLIP):
        name = "toy-l2"
        description = "another toy"
    with pytest.raises(ValueError, match="'toy-l2' is already registered"):
        register(Renamed)

    class LrOptions(BaseModel):
        lr: float = 1.0

    @register
    class ClashesWithCommon(CLIP):
        name = "toy-lr"
        description = "declares a common field"
        Options = LrOptions
    with pytest.raises(TypeError, match="option 'lr' clashes with a common TrainConfig field"):
        config_class()
    del registry._METHODS["toy-lr"]

    class OtherGat(BaseModel):
        gat_layers: int = Field(5, ge=1, description="not SLIP's")

    @register
    class RedeclaresSlipField(CLIP):
        name = "toy-gat"
        description = "redeclares gat_layers"
        Options = OtherGat
    with pytest.raises(TypeError, match="option 'gat_layers' is declared differently by methods 'slip' and"):
        config_class()


def test_slip_keeps_its_state_dict_layout_and_clip_adds_nothing(assets):
    slip = build_model(TrainConfig(release="r", model=str(assets["model"]), method="slip"))
    extra = [k for k in slip.state_dict() if not k.startswith("clip.")]
    assert "struct_log_inv_temperature" in extra
    assert {k.split(".")[0] for k in extra} == {"gat_image", "gat_text", "struct_log_inv_temperature"}
    assert slip.has_graph and slip.method_parts == ("gat_image", "gat_text", "struct_log_inv_temperature")
    clip = build_model(TrainConfig(release="r", model=str(assets["model"]), method="clip"))
    assert all(k.startswith("clip.") for k in clip.state_dict()) and not clip.has_graph
