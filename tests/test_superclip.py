"""SuperCLIP: the IDF-weighted token-classification term by hand on a toy vocabulary (and again after the counts
went through a checkpoint), the head on the mean patch token outside the open_clip export, a 2-step
`slip-train --method superclip` run that resumes to identical losses, and the add-on on SLIP."""
import json
import math

import open_clip
import pytest
import torch

from helpers.training import make_train_assets, train_args
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.cli import train_main
from trainer.config import TrainSetupError, build_config
from trainer.loop import Trainer
from trainer.methods import BatchContext
from trainer.methods.registry import make_method
from trainer.methods.superclip import SuperCLIPTerm, superclip_weight
from trainer.model import build_model, resolve_model_name
from trainer.run_io import load_run, read_log

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# a toy vocabulary of 8 ids: 0 padding, 6 start, 7 end of text (all three ignored), 1..5 words
TOY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 5, "vocab_size": 8, "width": 16, "heads": 2, "layers": 1},
}
IGNORED = [0, 6, 7]


def toy_model(tmp_path, **overrides):
    path = tmp_path / "toy-vocab.json"
    path.write_text(json.dumps(TOY_CONFIG))
    cfg = build_config(release="unused", model=str(path), method="superclip", superclip_ignore_ids=IGNORED,
                       **overrides)
    return build_model(cfg)


def superclip_term(model, tokens):
    """The term of one training batch, through the model's forward and the method's loss terms; and the logits."""
    torch.manual_seed(0)
    images = torch.randn(len(tokens), 3, 16, 16)
    tokens = torch.tensor(tokens)
    out = model(images, tokens)
    terms = model.method.loss_terms(model, out, BatchContext(torch.arange(len(tokens)), tokens=tokens))
    return terms["superclip"].item(), out["superclip_logits"].detach().log_softmax(1).tolist()


def expected_term(log_prob, targets):
    """Cross-entropy against each row's {id: weight} target, L1-normalised; mean over rows, by hand."""
    rows = [-sum(w * row_lp[i] for i, w in target.items()) / sum(target.values())
            for row_lp, target in zip(log_prob, targets)]
    return sum(rows) / len(rows)


BATCH1 = [[6, 1, 2, 7, 0], [6, 1, 3, 3, 7]]  # id 3 twice in one caption: one document
BATCH2 = [[6, 2, 4, 7, 0], [6, 1, 2, 5, 7]]


def batch2_targets():
    # after both batches: n = 4, df(1) = 3, df(2) = 3, df(4) = df(5) = 1; s = 1 / batch of 2
    s = 0.5
    w12, w45 = math.log((4 + s) / (3 + s)), math.log((4 + s) / (1 + s))
    return [{2: w12, 4: w45}, {1: w12, 2: w12, 5: w45}]


def test_idf_weights_on_a_toy_vocabulary_by_hand_and_after_a_checkpoint(tmp_path):
    model = toy_model(tmp_path)
    got, log_prob = superclip_term(model, BATCH1)
    # counts take the batch first: n = 2, df(1) = 2 -> weight log(2.5 / 2.5) = 0; df(2) = df(3) = 1
    w = math.log(2.5 / 1.5)
    assert got == pytest.approx(expected_term(log_prob, [{1: 0.0, 2: w}, {1: 0.0, 3: w}]), rel=1e-5)
    assert model.superclip_docs.item() == 2
    assert model.superclip_df.tolist() == [0, 2, 1, 1, 0, 0, 0, 0]  # ignored ids never counted

    path = save_checkpoint(tmp_path / "run", 1, {"model": model.state_dict()}, keep_last=1)
    resumed = toy_model(tmp_path)
    assert resumed.superclip_docs.item() == 0
    resumed.load_state_dict(load_checkpoint(path)["model"])
    assert torch.equal(resumed.superclip_df, model.superclip_df) and resumed.superclip_docs.item() == 2
    for m in (model, resumed):
        got, log_prob = superclip_term(m, BATCH2)
        assert got == pytest.approx(expected_term(log_prob, batch2_targets()), rel=1e-5)
    assert model.superclip_df.tolist() == resumed.superclip_df.tolist() == [0, 3, 3, 1, 1, 1, 0, 0]


def test_the_head_reads_the_mean_of_the_vit_patch_tokens_without_the_class_token(tmp_path):
    model = toy_model(tmp_path)
    visual = model.clip.visual
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model(images, torch.tensor(BATCH1))
        x = visual.ln_post(visual.transformer(visual._embeds(images)))  # [b, 1 + 2x2 patches, width]
        expected = model.superclip_head(x[:, 1:].mean(1))
    assert out["image_tokens"].shape == (2, 4, 16)
    assert torch.allclose(out["superclip_logits"], expected, atol=1e-5)
    assert not torch.allclose(out["superclip_logits"], model.superclip_head(x.mean(1)), atol=1e-3)


def test_counting_after_the_loss_weighs_a_batch_by_earlier_batches_only(tmp_path):
    model = toy_model(tmp_path, superclip_count_update="after")
    assert superclip_term(model, BATCH1)[0] == 0.0  # no earlier batch: every weight is log(s / s) = 0
    got, log_prob = superclip_term(model, BATCH2)
    s, n = 0.5, 2  # counts of batch 1 only: df(1) = 2, df(2) = 1, df(4) = df(5) = 0
    w = {i: math.log((n + s) / (df + s)) for i, df in ((1, 2), (2, 1), (4, 0), (5, 0))}
    assert got == pytest.approx(expected_term(log_prob, [{2: w[2], 4: w[4]}, {1: w[1], 2: w[2], 5: w[5]}]),
                                rel=1e-5)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_train_assets(tmp_path_factory.mktemp("superclip"), n_nodes=60)


def flags(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key.replace('_', '-')}", str(value))]


def test_superclip_run_through_slip_train_resumes_exactly_and_exports_without_the_head(assets, tmp_path):
    out = tmp_path / "run"
    args = train_args(assets, out, method="superclip", batch_size=8, workers=0, steps=2, warmup=1, ckpt_every=1)
    assert train_main(flags(args)) == 0
    log = read_log(out)
    assert [r["superclip_docs"] for r in log] == [8, 16]
    assert all(r["loss"] == pytest.approx(r["loss_clip"] + r["loss_superclip"], rel=1e-6) for r in log)

    resumed = tmp_path / "resumed"
    assert train_main(flags({**args, "out": resumed, "resume": out / "checkpoints" / "step-00000001.pt"})) == 0
    last = read_log(resumed)[-1]
    for key in ("step", "loss", "loss_clip", "loss_superclip", "superclip_docs", "data_digest"):
        assert last[key] == log[-1][key], key

    state = torch.load(out / "checkpoints" / "step-00000002.pt", weights_only=True)["model"]
    assert {"superclip_head.0.weight", "superclip_head.1.weight", "superclip_docs", "superclip_df"} <= set(state)
    assert state["superclip_head.1.weight"].shape == (49408, 64)  # vocab x ViT width, on the mean patch token
    exported = torch.load(out / "open_clip_state_dict.pt", weights_only=True)
    assert not any("superclip" in k for k in exported)
    clip = open_clip.create_model(resolve_model_name(str(assets["model"])))
    clip.load_state_dict(exported)  # strict
    run = load_run(out)  # evaluation rebuilds the method with its head: the checkpoint loads strictly
    assert run.method == "superclip" and run.model.superclip_docs.item() == 16


def test_superclip_as_an_add_on_to_slip_logs_both_terms(assets, tmp_path):
    cfg = build_config(**train_args(assets, tmp_path / "slip", method="slip", superclip_weight=0.5, batch_size=8,
                                    workers=0, steps=2, warmup=1, ckpt_every=2))
    trainer = Trainer(cfg)
    assert isinstance(trainer.method, SuperCLIPTerm) and trainer.method.name == "slip"
    trainer.run()
    for r in read_log(tmp_path / "slip"):
        assert r["loss_struct"] > 0 and r["loss_superclip"] > 0
        total = r["loss_clip"] + cfg.lambda_struct * r["loss_struct"] + 0.5 * r["loss_superclip"]
        assert r["loss"] == pytest.approx(total, rel=1e-6)
    assert trainer.model.superclip_head[1].weight.grad is not None
    # the named combination is the same add-on at weight 1; other methods default to 0 (no head)
    named = build_config(release="r", method="slip-superclip")
    assert superclip_weight(named) == 1.0 and superclip_weight(build_config(release="r", method="slip")) == 0.0
    assert not isinstance(make_method(build_config(release="r", method="clip"), trainer.model.clip), SuperCLIPTerm)
    with pytest.raises(TrainSetupError, match="superclip-weight 0 is CLIP"):
        build_config(release="r", method="superclip", superclip_weight=0)
