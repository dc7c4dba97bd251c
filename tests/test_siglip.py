"""SigLIP: the sigmoid loss equals open_clip's SigLipLoss (one process, and two torchrun ranks with open_clip's
neighbour exchange against our all-gather), a 2x2 value by hand, same-product copies masked or positive;
`--method siglip` starts at t = 10, b = -10 and is `--method clip --loss sigmoid`; slip takes `--loss sigmoid`."""
import json
import math
import textwrap
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from helpers.torchrun import run_torchrun
from helpers.training import make_train_assets, train_args
from trainer.config import TrainSetupError, build_config
from trainer.loop import Trainer
from trainer.losses import sigmoid_loss
from trainer.model import resolve_model_name
from trainer.run_io import read_log

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sigmoid_loss_equals_open_clip_siglip_loss():
    gen = torch.Generator().manual_seed(0)
    for rows, scale, bias in ((5, 10.0, -10.0), (3, 2.5, 0.7), (8, 1.0, 0.0)):
        img = F.normalize(torch.randn(rows, 6, generator=gen), dim=-1)
        txt = F.normalize(torch.randn(rows, 6, generator=gen), dim=-1)
        want = SigLipLoss()(img, txt, torch.tensor(scale), torch.tensor(bias))
        got = sigmoid_loss(img, txt, torch.tensor(scale), torch.tensor(bias))
        assert got.item() == pytest.approx(want.item(), rel=1e-6), (rows, scale, bias)


def test_sigmoid_loss_by_hand_on_2x2():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])  # img @ txt.T = [[1, 0.6], [0, 0.8]]
    t, b = 2.0, -1.0
    logits = [[t * 1 + b, t * 0.6 + b], [t * 0 + b, t * 0.8 + b]]
    expected = -(log_sigmoid(logits[0][0]) + log_sigmoid(-logits[0][1]) + log_sigmoid(-logits[1][0])
                 + log_sigmoid(logits[1][1])) / 2
    assert sigmoid_loss(img, txt, torch.tensor(t), torch.tensor(b)).item() == pytest.approx(expected, rel=1e-6)


def test_same_product_copies_are_masked_or_positives():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    txt = img.clone()
    ids = torch.tensor([5, 5, 7])
    t, b = 1.0, 0.0
    sims = (img @ txt.T).tolist()  # [[1,1,0],[1,1,0],[0,0,1]]
    pair = {(i, j): -log_sigmoid((1 if i == j else -1) * (t * sims[i][j] + b)) for i in range(3) for j in range(3)}
    copies = {(0, 1), (1, 0)}
    masked = sum(v for k, v in pair.items() if k not in copies) / 3
    positive = (sum(v for k, v in pair.items() if k not in copies) - 2 * log_sigmoid(t * 1 + b)) / 3
    args = (torch.tensor(t), torch.tensor(b))
    assert sigmoid_loss(img, txt, *args, node_ids=ids).item() == pytest.approx(masked, rel=1e-6)
    assert sigmoid_loss(img, txt, *args, node_ids=ids, duplicates="positive").item() == pytest.approx(positive,
                                                                                                      rel=1e-6)
    assert sigmoid_loss(img, txt, *args).item() == pytest.approx(sum(pair.values()) / 3, rel=1e-6)


RANK_SCRIPT = textwrap.dedent("""
    import importlib.util, json, os, sys
    import torch, torch.distributed as dist, torch.distributed.nn.functional as dist_fn
    import torch.nn.functional as F
    from trainer.losses import sigmoid_loss

    # open_clip's loss module by its file: the package's __init__ (model zoo, torchvision) is not needed here
    package = importlib.util.find_spec("open_clip").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location("open_clip_loss", os.path.join(package, "loss.py"))
    open_clip_loss = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(open_clip_loss)

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same global batch on every rank; each takes its rows
    img_all = F.normalize(torch.randn(world * 3, 8), dim=-1)
    txt_all = F.normalize(torch.randn(world * 3, 8), dim=-1)
    scale, bias = torch.tensor(4.0), torch.tensor(-2.0)
    result = {}
    for name in ("open_clip", "ours"):
        img = img_all[rank * 3:(rank + 1) * 3].clone().requires_grad_()
        txt = txt_all[rank * 3:(rank + 1) * 3].clone().requires_grad_()
        if name == "open_clip":  # each rank: its images against every rank's texts, by neighbour exchange
            loss = open_clip_loss.SigLipLoss(rank=rank, world_size=world, dist_impl="bidir")(img, txt, scale, bias)
        else:  # the loop's way: the gathered global batch on every rank
            gather = lambda t: torch.cat(dist_fn.all_gather(t))
            loss = sigmoid_loss(gather(img), gather(txt), scale, bias)
        loss.backward()
        result[name] = {"loss": loss.item(), "img_grad": img.grad.tolist(), "txt_grad": txt.grad.tolist()}
    # --local-loss: this rank's rows of the global batch only
    result["local_rows"] = sigmoid_loss(img_all, txt_all, scale, bias, rows=slice(rank * 3, rank * 3 + 3)).item()
    with open(sys.argv[1] + f"/rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
""")


@pytest.mark.timeout(180)
def test_under_ddp_the_gathered_loss_matches_open_clips_neighbour_exchange(tmp_path):
    script = tmp_path / "siglip_rank.py"
    script.write_text(RANK_SCRIPT)
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = run_torchrun([str(script), str(tmp_path)], timeout_s=170, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # DDP trains the mean of the ranks' losses; ours is that mean on every rank
    mean_open_clip = sum(r["open_clip"]["loss"] for r in ranks) / 2
    assert all(r["ours"]["loss"] == pytest.approx(mean_open_clip, rel=1e-5) for r in ranks)
    assert len({round(r["open_clip"]["loss"], 6) for r in ranks}) == 2  # per-rank values differ: a real check
    assert all(r["local_rows"] == pytest.approx(r["open_clip"]["loss"], rel=1e-5) for r in ranks)
    for r in ranks:  # the same gradient reaches every rank's features (before DDP's mean over ranks)
        for key in ("img_grad", "txt_grad"):
            assert torch.allclose(torch.tensor(r["ours"][key]), torch.tensor(r["open_clip"][key]), atol=1e-6), key


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_train_assets(tmp_path_factory.mktemp("siglip"), n_nodes=60)


def first_step(assets, out: Path, **overrides) -> tuple[Trainer, dict]:
    trainer = Trainer(build_config(**train_args(assets, out, batch_size=8, workers=0, steps=2, warmup=1,
                                                **overrides)))
    return trainer, trainer._micro_step(next(trainer.batches))


def test_siglip_method_is_clip_with_the_sigmoid_loss(assets, tmp_path):
    siglip, part = first_step(assets, tmp_path / "siglip", method="siglip")
    model = siglip.model
    # checked after the micro-step (no optimizer step yet): the initial values
    assert model.clip.logit_scale.exp().item() == pytest.approx(10.0) and model.siglip_logit_bias.item() == -10.0
    assert set(part["terms"]) == {"siglip"} and model.siglip_logit_bias.grad is not None
    assert model.clip.logit_scale.grad is not None  # t is the CLIP's own logit scale: it trains
    _, same = first_step(assets, tmp_path / "clip-sigmoid", method="clip", loss="sigmoid")
    assert same["terms"] == part["terms"]
    _, softmax = first_step(assets, tmp_path / "clip", method="clip")
    assert set(softmax["terms"]) == {"clip"}
    _, slip = first_step(assets, tmp_path / "slip-sigmoid", method="slip", loss="sigmoid")
    assert set(slip["terms"]) == {"siglip", "struct"} and slip["terms"]["siglip"] == part["terms"]["siglip"]
    with pytest.raises(TrainSetupError, match="--method siglip is the sigmoid loss"):
        build_config(release="r", method="siglip", loss="softmax")


def test_siglip_run_resumes_exactly_logs_its_bias_and_exports_without_it(assets, tmp_path):
    out = tmp_path / "run"
    args = train_args(assets, out, method="siglip", batch_size=8, workers=0, steps=2, warmup=1, ckpt_every=1)
    Trainer(build_config(**args)).run()
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2] and all("logit_bias" in r and "loss_siglip" in r for r in log)
    assert log[-1]["logit_bias"] != -10.0  # b learns
    resumed = tmp_path / "resumed"
    Trainer(build_config(**{**args, "out": str(resumed), "resume": str(out / "checkpoints" / "step-00000001.pt")})
            ).run()
    assert read_log(resumed)[-1]["loss"] == log[-1]["loss"]
    state = torch.load(out / "open_clip_state_dict.pt", weights_only=True)
    assert not any("bias" == k.split(".")[-1] and "siglip" in k for k in state)
    clip = open_clip.create_model(resolve_model_name(str(assets["model"])))
    clip.load_state_dict(state)  # strict: the bias is the method's, not open_clip's
    assert clip.logit_scale.exp().item() == pytest.approx(log[-1]["logit_scale"], rel=1e-5)
