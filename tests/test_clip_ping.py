"""CLIP-PING: exact top-1 neighbours on hand-built vectors (self excluded, ties to the lower row, only the
candidates given), the per-run neighbour tables of a real bank against a brute-force loop (train-split candidates
only, paired and direct XNN), the neighbour and graph terms against hand-computed values, a 2-step
`slip-train --method clip-ping --bank` run on the synthetic release that resumes to identical losses and exports
an open_clip state dict, clip-ping-graph's structure term, and a bank of another release refused with exit 2."""
from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch

from helpers.training import make_train_assets, train_args
from trainer.bank import load_bank
from trainer.cli import train_main
from trainer.config import build_config
from trainer.encode import EncodeConfig, encode_bank
from trainer.loop import Trainer
from trainer.methods.clip_ping import compute_tables, graph_neighbour_loss, neighbour_loss
from trainer.model import resolve_model_name
from trainer.neighbours import NO_NEIGHBOUR, top1_neighbours
from trainer.release import Release
from trainer.run_io import load_run, read_log
from trainer.synthetic import make_synthetic_release

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N_NODES = 60


def unit(*xs: float) -> list[float]:
    v = np.array(xs, dtype=np.float64)
    return (v / np.linalg.norm(v)).tolist()


def test_top1_neighbours_on_hand_built_vectors():
    queries = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.8, 0.6, 0]], dtype=np.float32)
    query_ids = np.array([10, 12, 98, 11])
    cands = np.array([[1, 0, 0],           # id 10: query 0 itself: never its own neighbour
                      [0.8, 0.6, 0],       # id 11: query 3 itself; query 0's nearest other (cos 0.8) ...
                      [0.8, 0.6, 0],       # id 12: ... tied with this copy, listed later; query 1 itself
                      [0, 1, 0.2],         # id 13: query 1's nearest other (cos 0.98)
                      [0, 3, 3]], np.float32)  # id 14: larger dot product with query 1, smaller cosine (0.71)
    got = top1_neighbours(queries, cands, query_ids, np.arange(10, 15))
    # query 0: the tie goes to the lower row; query 3: its copy under another id is a neighbour (cos 1)
    assert got.tolist() == [1, 3, 4, 2]
    assert top1_neighbours(queries, cands, query_ids, np.arange(10, 15), chunk=1).tolist() == got.tolist()
    # only the candidates given: without ids 11-13, query 0's nearest is 14 (cos 0, the only one left)
    assert top1_neighbours(queries[:1], cands[[0, 4]], query_ids[:1], np.array([10, 14])).tolist() == [1]
    assert top1_neighbours(queries[:1], cands[:1], query_ids[:1], np.array([10])).tolist() == [NO_NEIGHBOUR]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    assets = make_train_assets(tmp_path_factory.mktemp("clip-ping"), n_nodes=N_NODES)
    bank = assets["root"] / "bank"
    encode_bank(EncodeConfig(release=str(assets["release"]), image_encoder=f"open_clip:{assets['model']}",
                             text_encoder=str(assets["model"]), out=str(bank), batch_size=16, chunk_size=32,
                             progress=False))
    assets["bank"] = bank
    return assets


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def brute_force(queries: np.ndarray, cands: np.ndarray, q_rows: np.ndarray, c_rows: np.ndarray) -> dict[int, float]:
    """Row -> the highest cosine of a candidate other than itself, one pair at a time in float64."""
    return {int(q): max(cosine(queries[q], cands[c]) for c in c_rows if c != q) for q in q_rows}


@pytest.mark.parametrize("xnn", ["paired", "direct"])
def test_neighbour_tables_of_a_real_bank_against_a_brute_force_loop(assets, xnn):
    bank = load_bank(assets["bank"], assets["release"])
    cfg = build_config(release=str(assets["release"]), method="clip-ping", bank=str(assets["bank"]),
                       clip_ping_xnn=xnn)
    tables = compute_tables(bank, cfg)
    nodes = Release(assets["release"]).nodes()
    split = dict(zip(nodes["node_id"].tolist(), nodes["split"].tolist()))
    rows = np.arange(len(bank.node_id))
    train = np.array([split[int(n)] == "train" for n in bank.node_id])
    assert 0 < train.sum() < len(rows)
    image, text = bank.image.astype(np.float32), bank.text.astype(np.float32)
    cross = {"paired": {"image_xnn": (image, image), "text_xnn": (text, text)},  # the own-modality neighbour
             "direct": {"image_xnn": (image, text), "text_xnn": (text, image)}}[xnn]
    spaces = {"image_nn": (image, image), "text_nn": (text, text), **cross}
    expected = {name: brute_force(queries, cands, rows[train], rows[train]) for name, (queries, cands) in
                spaces.items()}
    if xnn == "paired":  # image i -> the text of its nearest image; text i -> the image of its nearest text
        assert (tables["image_xnn"] == tables["image_nn"]).all()
        assert (tables["text_xnn"] == tables["text_nn"]).all()  # every synthetic node has an image
    for name, best in expected.items():
        got = tables[name]
        assert (got[~train] == NO_NEIGHBOUR).all(), f"{name}: val/test nodes are not queries"
        assert train[got[train]].all(), f"{name}: only train nodes are candidates"
        assert (got[train] != rows[train]).all(), f"{name}: never the sample itself"
        queries, cands = spaces[name]
        for q in rows[train]:  # the chosen one is a most similar candidate (equal ones: hand test above)
            assert cosine(queries[q], cands[got[q]]) == pytest.approx(best[int(q)], abs=1e-5), (name, q)
    everything = compute_tables(bank, build_config(**{**cfg.model_dump(), "clip_ping_candidates": ["train", "val",
                                                                                                 "test"]}))
    assert not train[everything["text_nn"][train]].all(), "a wider candidate subset reaches val/test nodes"


def test_nodes_without_an_image_are_never_image_targets(assets):
    import dataclasses

    bank = load_bank(assets["bank"], assets["release"])
    mask = np.asarray(bank.image_mask).copy()
    mask[::3] = False  # every third node without an image (zero row), as a bank of a release with failed images
    image = np.asarray(bank.image).copy()
    image[~mask] = 0
    holey = dataclasses.replace(bank, image=image, image_mask=mask)
    tables = compute_tables(holey, build_config(release=str(assets["release"]), method="clip-ping",
                                                bank=str(assets["bank"])))
    image_nn, text_nn, text_xnn = tables["image_nn"], tables["text_nn"], tables["text_xnn"]
    assert (image_nn[~mask] == NO_NEIGHBOUR).all() and mask[image_nn[image_nn >= 0]].all()
    assert not mask[text_nn[text_nn >= 0]].all(), "a text neighbour may lack an image"
    assert mask[text_xnn[text_xnn >= 0]].all(), "but the XNN of a text is an image: only nodes with one"
    assert (text_xnn >= 0).sum() == (text_nn >= 0).sum()


def test_neighbour_loss_by_hand():
    s2 = math.sqrt(0.5)
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0], [s2, s2], [1.0, 1.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [s2, s2], [0.0, 1.0], [1.0, 0.0]])
    ids = torch.tensor([5, 7, 5, -1])  # rows 0 and 2 share their neighbour; row 3 has none
    t = torch.tensor(0.5)
    got = neighbour_loss(pred, targets, ids, t)
    # row 0: columns 0, 1 (column 2 = same target 5, column 3 = no target): sims 1, s2
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(2 * s2)))
    # row 1 (pred (0, 1)): columns 0, 1, 2: sims 0, s2, 1
    row1 = -math.log(math.exp(2 * s2) / (1 + math.exp(2 * s2) + math.exp(2)))
    # row 2 (pred (s2, s2)): columns 1, 2: sims 1, s2
    row2 = -math.log(math.exp(2 * s2) / (math.exp(2) + math.exp(2 * s2)))
    assert got.item() == pytest.approx((row0 + row1 + row2) / 3, rel=1e-6)
    got.backward()
    assert pred.grad[:3].abs().sum() > 0 and pred.grad[3].abs().sum() == 0  # no target, no gradient
    assert neighbour_loss(pred, targets, ids, t, rows=slice(1, 2)).item() == pytest.approx(row1, rel=1e-6)
    empty = neighbour_loss(pred, targets, torch.full((4,), -1), t)
    assert empty.item() == 0.0 and empty.requires_grad


def test_graph_neighbour_loss_by_hand():
    s2 = math.sqrt(0.5)
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s2, s2]])
    own = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    edges = torch.tensor([[0, 1], [1, 0]])  # 0 <-> 1; row 2 has no neighbour
    t = torch.tensor(1.0)
    # row 0: own column left out; columns 1, 2: sims 0, 1; positive column 1
    row0 = -math.log(1 / (1 + math.e))
    # row 1: columns 0, 2: sims 0, 0; positive column 0
    row1 = -math.log(0.5)
    assert graph_neighbour_loss(pred, own, edges, t).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # column 1 without a feature: row 0 loses its positive (left out), row 1 scores columns 0, 2 as before
    no_feature = torch.tensor([True, False, True])
    assert graph_neighbour_loss(pred, own, edges, t, valid=no_feature).item() == pytest.approx(row1, rel=1e-6)
    assert graph_neighbour_loss(pred, own, torch.zeros(2, 0, dtype=torch.long), t).item() == 0.0


def flags(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key.replace('_', '-')}", str(value))]


@pytest.mark.parametrize("targets", ["frozen", "student"])
def test_clip_ping_run_resumes_exactly_and_exports_an_open_clip_state_dict(assets, tmp_path, targets):
    out = tmp_path / "run"
    steps = 2 if targets == "frozen" else 3  # the student memory needs a step or two before neighbours are in it
    args = train_args(assets, out, method="clip-ping", bank=assets["bank"], clip_ping_targets=targets,
                      batch_size=8 if targets == "frozen" else 16, workers=0, steps=steps, warmup=1, ckpt_every=1)
    assert train_main(flags(args)) == 0
    log = read_log(out)
    for r in log:
        assert r["loss"] == pytest.approx(r["loss_clip"] + 0.5 * r["loss_nn"] + 0.5 * r["loss_xnn"], rel=1e-6)
    if targets == "frozen":
        assert all(r["loss_nn"] > 0 and r["loss_xnn"] > 0 for r in log)
    else:  # nothing remembered before the first batch; by the last step some neighbours were seen
        assert log[0]["loss_nn"] == log[0]["loss_xnn"] == 0.0 and log[-1]["loss_nn"] > 0 and log[-1]["loss_xnn"] > 0
    assert log[1]["clip_ping_temperature"] != log[0]["clip_ping_temperature"]  # the temperature learns

    resumed = tmp_path / "resumed"
    from_step = out / "checkpoints" / f"step-{steps - 1:08d}.pt"
    assert train_main(flags({**args, "out": resumed, "resume": from_step})) == 0
    last = read_log(resumed)[-1]
    for key in ("step", "loss", "loss_clip", "loss_nn", "loss_xnn", "data_digest"):
        assert last[key] == log[-1][key], key

    state = torch.load(out / "checkpoints" / f"step-{steps:08d}.pt", weights_only=True)["model"]
    if targets == "frozen":
        assert state["clip_ping_heads.image_xnn.weight"].shape == (64, 64)  # CLIP embed -> the bank's text space
    else:
        assert not any(k.startswith("clip_ping_heads.") for k in state)  # student targets need no head
        assert state["clip_ping_memory"].shape == (2, N_NODES, 64)
        assert 16 < state["clip_ping_seen"].sum() <= 16 * steps
    exported = torch.load(out / "open_clip_state_dict.pt", weights_only=True)
    assert not any("clip_ping" in k for k in exported)
    open_clip.create_model(resolve_model_name(str(assets["model"]))).load_state_dict(exported)  # strict
    run = load_run(out)  # evaluation rebuilds the method (heads sized from the bank): the checkpoint loads strictly
    assert run.method == "clip-ping" and run.model.method.tables is None  # no neighbour search to evaluate


def test_clip_ping_graph_adds_the_structure_term(assets, tmp_path):
    cfg = build_config(**train_args(assets, tmp_path / "graph", method="clip-ping-graph", bank=str(assets["bank"]),
                                    clip_ping_xnn_weight=0, batch_size=16, workers=0, steps=2, warmup=1,
                                    ckpt_every=2))
    trainer = Trainer(cfg)
    assert sorted(trainer.model.clip_ping_heads) == ["image_nn", "text_nn"]  # no XNN heads at weight 0
    trainer.run()
    log = read_log(tmp_path / "graph")
    assert "loss_xnn" not in log[0]
    assert any(r["loss_graph"] > 0 for r in log), "the synthetic release's clusters put neighbours in a batch"
    for r in log:
        assert r["loss"] == pytest.approx(r["loss_clip"] + 0.5 * r["loss_nn"] + r["loss_graph"], rel=1e-6)


def test_a_bank_of_another_release_or_no_bank_is_exit_2(assets, tmp_path, capsys):
    other = make_synthetic_release(tmp_path / "other", n_nodes=N_NODES - 12, shard_size=48, image_size=32)
    args = train_args(assets, tmp_path / "run", method="clip-ping", bank=assets["bank"], release=other,
                      workers=0, steps=1)
    assert train_main(flags(args)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(assets["bank"]) in err[0] and "node ids do not match" in err[0], err
    no_bank = {k: v for k, v in args.items() if k != "bank"}
    assert train_main(flags(no_bank)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --bank BANK" in err[0], err
