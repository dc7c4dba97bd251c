"""SAIL (`--method sail`) and SAIL + structure (`sail-struct`): alignment layers trained on an embedding bank.

The bank is made in the test: `trainer.encode.encode_bank` runs a seeded micro open_clip tower pair over the
synthetic release, then the image side is replaced, through the bank API (`write_bank`), by a fixed random
projection of each node's text embedding plus noise. That is a bank whose two sides are aligned by an unknown map,
so alignment is learnable and retrieval has a known ceiling; with the random-init image tower's own rows the signal
is weak (measured on a 400-node release, 80 steps: test R@1 0.25 / 0.15 against 0.88 / 0.80 with the projection).
The text side, and so zero-shot prompts, stay the micro tower's: its random init is seeded, so slip-eval rebuilds
it offline.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.training import MICRO_CONFIG
from schemas import bank as contract
from trainer.bank import load_bank, write_bank
from trainer.bank_data import BankBatches, train_rows
from trainer.checkpoint import ALIGNMENT_EXPORT_NAME, EXPORT_NAME
from trainer.cli import train_main
from trainer.config import build_config
from trainer.encode import EncodeConfig, encode_bank
from trainer.eval_config import build_eval_config
from trainer.evaluate import caption_positives, evaluate
from trainer.loop import train
from trainer.release import Release
from trainer.run_io import read_log
from trainer.synthetic import make_synthetic_release

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N_NODES = 240
PROJ_DIM = 48


def derived_bank(source: Path, out: Path, release: Path, **manifest_changes) -> Path:
    """A copy of `source` whose image rows are normalize(normalize(text @ R) + noise), R fixed and random."""
    bank = load_bank(source, release)
    text = bank.text.astype(np.float32)
    rng = np.random.default_rng(0)
    image = text @ (rng.standard_normal((text.shape[1], PROJ_DIM)) / np.sqrt(text.shape[1]))
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    image += 0.3 * rng.standard_normal(image.shape) / np.sqrt(PROJ_DIM)
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    fields = {k: v for k, v in bank.manifest.items() if k not in ("schema", "schema_version", "files")}
    fields.update(image_encoder="synthetic:projection-of-text", image_dim=PROJ_DIM, **manifest_changes)
    out.mkdir(parents=True)
    write_bank(out, {"node_id.npy": np.asarray(bank.node_id), "text.npy": np.asarray(bank.text),
                     "image.npy": image.astype(np.float16), "image_mask.npy": np.asarray(bank.image_mask)}, fields)
    return out


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sail")
    micro = root / "micro.json"
    micro.write_text(json.dumps(MICRO_CONFIG))
    release = make_synthetic_release(root / "release", n_nodes=N_NODES, shard_size=64, image_size=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encode_bank(EncodeConfig(release=str(release), image_encoder=f"open_clip:{micro}",
                                 text_encoder=f"open_clip:{micro}", out=str(root / "raw"), batch_size=64,
                                 chunk_size=256, progress=False))
    finally:
        torch.set_num_threads(threads)
    derived_bank(root / "raw", release / contract.EMBEDDINGS / "proj", release)  # attached: --bank proj
    return {"root": root, "release": release, "raw": root / "raw"}


def sail_args(assets: dict[str, Path], out: Path, **overrides) -> dict:
    args = dict(release=str(assets["release"]), method="sail", bank="proj", sail_dim=32, batch_size=64, steps=60,
                lr=3e-3, warmup=5, seed=1, out=str(out), ckpt_every=30, log_every=1)
    args.update(overrides)
    return args


@pytest.fixture(scope="module")
def sail_run(assets) -> Path:
    out = assets["root"] / "run-sail"
    torch.set_num_threads(1)
    train(build_config(**sail_args(assets, out)))
    return out


def test_sigmoid_neighbour_loss_against_hand_computed_values():
    from trainer.losses import sigmoid_loss, sigmoid_neighbour_loss

    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [-1.0, 0.5]]), dim=1)
    txt = torch.nn.functional.normalize(torch.tensor([[0.9, 0.1], [0.2, 1.0], [-0.5, -1.0]]), dim=1)
    t, b = torch.tensor(5.0), torch.tensor(-2.0)
    edges = torch.tensor([[0, 1], [1, 0]])  # products 0 and 1 are linked
    labels = torch.tensor([[1.0, 1, -1], [1, 1, -1], [-1, -1, 1]])
    logits = t * img @ txt.T + b
    loss = -torch.nn.functional.logsigmoid(labels * logits)
    pairs, neighbours = sigmoid_neighbour_loss(img, txt, t, b, edges)
    assert torch.allclose(neighbours, (loss[0, 1] + loss[1, 0]) / 3)
    assert torch.allclose(pairs + neighbours, loss.sum() / 3), "the sum is the loss with neighbours labelled +1"
    no_edge = torch.zeros(2, 0, dtype=torch.long)
    pairs, neighbours = sigmoid_neighbour_loss(img, txt, t, b, no_edge)
    assert neighbours == 0 and torch.allclose(pairs, sigmoid_loss(img, txt, t, b))
    ids = torch.tensor([7, 8, 7])  # rows 0 and 2 hold one product: left out of both sums
    pairs, _ = sigmoid_neighbour_loss(img, txt, t, b, no_edge, node_ids=ids)
    assert torch.allclose(pairs, sigmoid_loss(img, txt, t, b, ids))


def test_glu_alignment_layer_is_sails():
    from trainer.methods._align import GLUAligner, make_aligner

    layer = GLUAligner(6, 4, mult=8)
    assert layer.w1.out_features == layer.w2.out_features == 48 and layer.wg.out_features == 4
    x = torch.randn(5, 6) * 3
    h = torch.nn.functional.layer_norm(x, (6,), layer.norm.weight, layer.norm.bias)
    expected = layer.wg(torch.clamp(layer.w1(h), 0, 6) * layer.w2(h))
    assert torch.allclose(layer(x), expected)
    assert isinstance(make_aligner("linear", 6, 4, 8), torch.nn.Linear)


def test_bank_batches_are_seeded_epochs_and_split_over_ranks(assets):
    release = Release(assets["release"])
    bank = load_bank(release.path / contract.EMBEDDINGS / "proj", release)
    rows = train_rows(bank, release, "train")
    assert set(bank.node_id[rows]) == set(release.nodes()["node_id"][release.nodes()["split"] == "train"])
    one = BankBatches(bank, rows, batch_size=len(rows) // 3, seed=4)
    epoch = np.concatenate([one.indices(k) for k in range(3)])
    assert sorted(epoch) == list(range(len(rows))), "an epoch is one permutation of the rows"
    assert not np.array_equal(one.indices(0), BankBatches(bank, rows, len(rows) // 3, seed=5).indices(0))
    ranks = [BankBatches(bank, rows, batch_size=16, seed=4, rank=r, world_size=2) for r in range(2)]
    whole = BankBatches(bank, rows, batch_size=32, seed=4)
    for k in (0, 7):  # k = 7 crosses an epoch boundary
        assert np.array_equal(np.concatenate([r.indices(k) for r in ranks]), whole.indices(k))
    batch = next(iter(BankBatches(bank, rows, batch_size=8, seed=4, consumed_batches=5)))
    expected = bank.node_id[rows][BankBatches(bank, rows, batch_size=8, seed=4).indices(5)]
    assert torch.equal(batch["node_ids"], torch.from_numpy(expected))
    assert batch["images"].dtype == torch.float32 and batch["images"].shape == (8, PROJ_DIM)


def test_sail_lowers_the_loss_and_retrieves_far_above_chance(assets, sail_run):
    log = read_log(sail_run)
    first, last = log[0]["loss"], np.mean([r["loss"] for r in log[-5:]])
    assert last < 0.5 * first, (first, last)
    assert {"loss_sail", "sail_scale", "sail_bias"} <= set(log[-1])
    assert log[0]["sail_bias"] == pytest.approx(-10, abs=0.1) and log[0]["sail_scale"] == pytest.approx(20, rel=0.05)
    assert (sail_run / ALIGNMENT_EXPORT_NAME).is_file() and not (sail_run / EXPORT_NAME).exists()
    exported = torch.load(sail_run / ALIGNMENT_EXPORT_NAME, weights_only=True)
    assert {k.split(".")[0] for k in exported} == {"sail_image", "sail_text", "sail_log_scale", "sail_logit_bias"}
    assert exported["sail_image.w1.weight"].shape == (8 * PROJ_DIM, PROJ_DIM)

    result = evaluate(build_eval_config(run=sail_run, release=assets["release"]))
    assert result["method"] == "sail" and result["n_samples"] == 24 and "zeroshot_skipped" not in result
    # chance R@1: a query's share of products with its very caption (all of them count as hits)
    release = Release(assets["release"])
    titles = release.table("nodes.parquet", ["title", "split"]).to_pydict()
    test_titles = [t for t, s in zip(titles["title"], titles["split"]) if s == "test"]
    chance = np.mean([len(g) / len(test_titles) for g in caption_positives(test_titles)])
    assert chance < 0.1
    assert result["i2t_R@1"] > 0.5 and result["t2i_R@1"] > 0.5, (result["i2t_R@1"], result["t2i_R@1"], chance)
    assert result["zeroshot_acc1"] > 1 / 8 and "fewshot_1_acc1" in result


def test_resume_gives_identical_losses(assets, sail_run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(sail_run, resumed)
    (resumed / "checkpoints" / "step-00000060.pt").unlink()  # as if killed after the step-30 checkpoint
    summary = train(build_config(**sail_args(assets, resumed, resume="latest")))
    assert summary["resumed_from"].endswith("step-00000030.pt")
    first = {r["step"]: (r["loss"], r["data_digest"]) for r in read_log(sail_run)}
    again = {r["step"]: (r["loss"], r["data_digest"]) for r in read_log(resumed)}
    assert again == first


def test_accum_freq_equals_one_batch_of_the_same_samples(assets, tmp_path):
    """The bank stream is contiguous, so 2 cached micro-batches of 32 are the samples of one batch of 64: with the
    GAT's dropout off the two runs must train alike (--accum-freq's gradient is the full batch's)."""
    finals = []
    for name, extra in (("cached", dict(accum_freq=2, batch_size=32)), ("full", dict(batch_size=64))):
        summary = train(build_config(**sail_args(assets, tmp_path / name, method="sail-struct", sail_gat=True,
                                                 gat_heads=2, gat_dropout=0.0, steps=3, ckpt_every=3, **extra)))
        finals.append(summary["final"])
    assert finals[0].keys() == finals[1].keys()
    for key in finals[0]:
        assert finals[0][key] == pytest.approx(finals[1][key], rel=1e-5), key


def test_sail_struct_logs_its_terms_and_eval_scores_the_gat(assets, tmp_path):
    out = tmp_path / "struct"
    train(build_config(**sail_args(assets, out, method="sail-struct", sail_gat=True, gat_heads=2, steps=6,
                                   ckpt_every=6, sail_struct_weight=0.5)))
    log = read_log(out)
    assert {"loss_sail", "loss_sail_struct", "alpha_image", "alpha_text", "neighbor_frac"} <= set(log[-1])
    assert all(r["loss"] == pytest.approx(r["loss_sail"] + 0.5 * r["loss_sail_struct"], rel=1e-5) for r in log)
    assert any(r["loss_sail_struct"] > 0 for r in log), "in-batch neighbours were found and pulled together"
    result = evaluate(build_eval_config(run=out, release=assets["release"]))
    assert "graph_i2t_R@1" in result and "i2t_R@1" in result


def test_linear_probe_and_a_bank_whose_text_encoder_is_not_here(assets, tmp_path):
    release = assets["release"]
    derived_bank(assets["raw"], release / contract.EMBEDDINGS / "elsewhere", release,
                 text_encoder="st:/nowhere/minilm")
    out = tmp_path / "linear"
    train(build_config(**sail_args(assets, out, bank="elsewhere", sail_head="linear", steps=4, ckpt_every=4)))
    state = torch.load(out / ALIGNMENT_EXPORT_NAME, weights_only=True)
    assert sorted(k for k in state if k.startswith("sail_image")) == ["sail_image.bias", "sail_image.weight"]
    result = evaluate(build_eval_config(run=out, release=release))
    assert "zero-shot and few-shot skipped" in result["zeroshot_skipped"] and "/nowhere/minilm" in \
        result["zeroshot_skipped"]
    assert "zeroshot_acc1" not in result and "i2t_R@1" in result


def test_a_bank_of_another_release_is_refused_with_exit_2(assets, tmp_path, capsys):
    other = make_synthetic_release(tmp_path / "other", n_nodes=N_NODES - 40, shard_size=64, image_size=32)
    argv = ["--release", str(other), "--method", "sail", "--bank", str(assets["release"] / "embeddings" / "proj"),
            "--steps", "2", "--out", str(tmp_path / "run")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("slip-train: error:") and "node ids do not match" in err[0], err
    assert train_main(["--release", str(other), "--method", "sail", "--out", str(tmp_path / "run")]) == 2
    assert "give --bank BANK" in capsys.readouterr().err
