"""End-to-end training on a tiny synthetic release with a micro open_clip config (real forward/backward):
loss goes down, kill + resume reproduces the losses exactly (also in a new process through the CLI), the export
loads into open_clip, load_run gives an eval model, slip and clip see the same data, bad input fails clearly."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from helpers.training import MICRO_CONFIG, make_train_assets, train_args
from trainer.cli import train_main
from trainer.config import TrainConfig, TrainSetupError
from trainer.loop import train
from trainer.methods.slip import SLIP
from trainer.model import resolve_model_name
from trainer.optim import decays, lr_at
from trainer.run_io import load_run, read_log
from trainer.synthetic import write_tar

STEPS, CKPT_EVERY = 24, 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_train_assets(tmp_path_factory.mktemp("train"))


def base_args(assets, out: Path, **overrides) -> dict:
    return train_args(assets, out, **{"steps": STEPS, "ckpt_every": CKPT_EVERY, **overrides})


@pytest.fixture(scope="module")
def slip_run(assets) -> Path:
    out = assets["root"] / "slip"
    train(TrainConfig(**base_args(assets, out)))
    return out


def losses(run_dir: Path) -> dict[int, tuple]:
    return {r["step"]: (r["loss"], r["loss_clip"], r["loss_struct"]) for r in read_log(run_dir)}


def test_short_run_lowers_the_loss_and_writes_the_run_folder(slip_run):
    log = read_log(slip_run)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    first = sum(r["loss"] for r in log[:4]) / 4
    last = sum(r["loss"] for r in log[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    for key in ("loss_clip", "loss_struct", "lr", "logit_scale", "struct_temperature", "samples_per_s",
                "data_time", "batch_time", "neighbor_frac", "edges_per_sample", "skipped", "alpha_image"):
        assert log[-1][key] is not None, key
    assert any(r["neighbor_frac"] > 0 for r in log)
    summary = json.loads((slip_run / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["samples"] == STEPS * 24 and summary["skipped_total"] == 0
    assert summary["seed"] == json.loads((slip_run / "config.json").read_text())["seed"]  # compare pairs by it
    assert sorted(p.name for p in (slip_run / "checkpoints").iterdir()) == ["step-00000012.pt", "step-00000024.pt"]
    assert list((slip_run / "tb").glob("events.out.tfevents.*"))
    assert json.loads((slip_run / "config.json").read_text())["method"] == "slip"
    assert summary["final"] == {k: log[-1][k] for k in ("loss", "loss_clip", "loss_struct")}


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "slip-train"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from trainer.cli import train_main; sys.exit(train_main())"]


def to_flags(args: dict) -> list[str]:
    return [item for key, value in args.items() for item in (f"--{key.replace('_', '-')}", str(value))]


@pytest.mark.timeout(300)
def test_resume_in_a_new_process_reproduces_the_losses_exactly(assets, slip_run, tmp_path):
    out = tmp_path / "resumed"
    checkpoint = slip_run / "checkpoints" / f"step-{CKPT_EVERY:08d}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cli_command() + to_flags(base_args(assets, out, resume=checkpoint)), env=env,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    resumed, original = losses(out), losses(slip_run)
    assert sorted(resumed) == list(range(CKPT_EVERY + 1, STEPS + 1))
    assert all(resumed[s] == original[s] for s in resumed), (resumed, original)


def test_resume_latest_after_a_kill_continues_the_same_run(assets, slip_run, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(slip_run, killed)
    # state of a run killed after step 18: last checkpoint at 12, log lines up to 18, no export/summary
    (killed / "checkpoints" / f"step-{STEPS:08d}.pt").unlink()
    (killed / "summary.json").unlink()
    (killed / "open_clip_state_dict.pt").unlink()
    lines = (killed / "log.jsonl").read_text().splitlines()[:18]
    (killed / "log.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(TrainSetupError, match="already holds checkpoints: pass --resume latest"):
        train(TrainConfig(**base_args(assets, killed)))
    train(TrainConfig(**base_args(assets, killed, resume="latest")))
    assert losses(killed) == losses(slip_run)
    assert [r["data_digest"] for r in read_log(killed)] == [r["data_digest"] for r in read_log(slip_run)]


def test_exported_state_dict_loads_into_open_clip(assets, slip_run):
    clip = open_clip.create_model(resolve_model_name(str(assets["model"])))
    state = torch.load(slip_run / "open_clip_state_dict.pt", weights_only=True)
    clip.load_state_dict(state)  # strict
    run = load_run(slip_run)
    image = run.preprocess(Image.new("RGB", (40, 30), (10, 200, 30))).unsqueeze(0)
    clip.eval()
    with torch.no_grad():
        expected = torch.nn.functional.normalize(clip.encode_image(image), dim=-1)
        assert torch.allclose(run.model.encode_image(image), expected, atol=1e-6)


def test_load_run_gives_an_eval_model_with_its_preprocess_and_tokenizer(slip_run):
    run = load_run(slip_run, checkpoint=str(CKPT_EVERY))
    assert run.method == "slip" and run.step == CKPT_EVERY and not run.model.training and run.model.has_graph
    tokens = run.tokenizer(["a red circle", "blue square"])
    assert tokens.shape == (2, MICRO_CONFIG["text_cfg"]["context_length"]) and tokens.dtype == torch.long
    assert run.preprocess(Image.new("RGB", (50, 70))).shape == (3, 32, 32)
    with torch.no_grad():
        emb = run.model.encode_text(tokens)
        edges = torch.tensor([[0, 1], [1, 0]])
        refined = run.model.graph_refine(emb, edges, modality="text")
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2)) and torch.allclose(refined.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(refined, emb)
    assert load_run(slip_run).step == STEPS


def test_clip_method_trains_on_the_same_data_without_graph_parts(assets, slip_run, tmp_path):
    out = tmp_path / "clip"
    summary = train(TrainConfig(**base_args(assets, out, method="clip", steps=4)))
    log = read_log(out)
    slip_log = read_log(slip_run)
    assert [r["data_digest"] for r in log] == [r["data_digest"] for r in slip_log[:4]]
    assert not any(k in r for r in log for k in ("loss_struct", "struct_temperature", "alpha_image"))
    assert all(r["loss_clip"] == r["loss"] for r in log)
    assert summary["steps"] == 4
    run = load_run(out)
    assert run.method == "clip" and not run.model.has_graph
    emb = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    assert torch.equal(run.model.graph_refine(emb, torch.tensor([[0], [1]])), emb)
    assert not any(k.startswith("gat_") for k in torch.load(run.checkpoint, weights_only=True)["model"])


def test_gradient_accumulation_counts_samples(assets, tmp_path):
    out = tmp_path / "accum"
    summary = train(TrainConfig(**base_args(assets, out, method="clip", steps=2, accum=2, batch_size=8,
                                            workers=0)))
    assert summary["samples"] == 2 * 2 * 8
    assert all(math.isfinite(r["loss"]) for r in read_log(out))


def test_cli_rejects_bad_input_clearly(assets, tmp_path, capsys):
    with pytest.raises(SystemExit) as help_exit:
        train_main(["--help"])
    assert help_exit.value.code == 0 and "--lambda-struct" in capsys.readouterr().out
    cases = [
        (["--release", str(tmp_path / "nope")], "nope: not a folder"),
        (["--release", str(assets["release"]), "--model", "ViT-B-32-typo"], "unknown model"),
        (["--release", str(assets["release"]), "--model", str(tmp_path / "missing.json")], "not found"),
        (["--shards", str(tmp_path / "x-{000000..000003}.tar"), "--method", "clip"], "no file matches"),
        (["--shards", str(tmp_path / "x.tar")], "needs --graph"),
        (["--release", str(assets["release"]), "--lr", "-1"], "lr"),
    ]
    for argv, message in cases:
        assert train_main(argv + ["--out", str(tmp_path / "run"), "--steps", "1"]) == 2, argv
        assert message in capsys.readouterr().err, argv


@pytest.mark.timeout(60)
def test_cli_fails_fast_when_no_sample_is_valid(assets, tmp_path, capsys):
    for i in range(2):
        write_tar(tmp_path / f"bad-{i:06d}.tar", [(f"{i:010d}", {"jpg": b"garbage", "txt": b"x",
                                                                 "json": json.dumps({"node_id": i}).encode()})])
    code = train_main(["--shards", str(tmp_path / "bad-{000000..000001}.tar"), "--method", "clip", "--model",
                       str(assets["model"]), "--workers", "1", "--batch-size", "2", "--steps", "3", "--out",
                       str(tmp_path / "run")])
    assert code == 1
    err = capsys.readouterr().err
    assert "no valid sample" in err and "bad_image=" in err and "bad-000000.tar" in err


def test_optimizer_exclusions_and_schedule():
    cfg = TrainConfig(release="r", lr=1.0, warmup=4, steps=14, min_lr_ratio=0.1)
    assert [lr_at(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, cfg) == 1.0 and lr_at(9, cfg) == pytest.approx(0.55) and lr_at(14, cfg) == pytest.approx(0.1)
    matrix, vector = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    assert decays("clip.visual.transformer.resblocks.0.attn.in_proj_weight", matrix)
    assert not decays("clip.visual.transformer.resblocks.0.attn.in_proj_bias", vector)
    for name in ("clip.token_embedding.weight", "clip.positional_embedding", "clip.ln_final.weight",
                 "clip.logit_scale"):
        assert not decays(name, matrix), name
    for name in ("gat_image.alpha", "struct_log_inv_temperature"):  # SLIP's own scales: its markers
        assert decays(name, matrix) and not decays(name, matrix, SLIP.no_decay), name


def test_pretrained_local_file_and_tower_locks(assets, slip_run):
    from trainer.model import build_model
    export = slip_run / "open_clip_state_dict.pt"
    cfg = TrainConfig(release="r", model=str(assets["model"]), pretrained=str(export), lock_image=True,
                      lock_text=True, lock_text_unlocked_layers=2)
    model = build_model(cfg)
    saved = torch.load(export, weights_only=True)
    assert all(torch.equal(model.clip.state_dict()[k], v) for k, v in saved.items())
    assert not any(p.requires_grad for p in model.clip.visual.parameters())
    trainable_text = [n for n, p in model.clip.named_parameters() if p.requires_grad and not n.startswith("visual")]
    assert any(n.startswith("transformer.resblocks.1.") for n in trainable_text)
    assert not any(n.startswith("transformer.resblocks.0.") for n in trainable_text)
    assert all(p.requires_grad for p in model.gat_image.parameters())
    with pytest.raises(TrainSetupError, match="could not load pretrained .*nope.pt"):
        build_model(cfg.model_copy(update={"pretrained": str(slip_run / "nope.pt")}))
