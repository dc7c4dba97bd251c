"""--val-every on a tiny real run: val_* metrics logged at steps 2/4/6 (log.jsonl and TensorBoard), the best
checkpoint kept by --best-metric and loadable by `slip-eval --checkpoint best` (which scores it exactly as the
validation did), a resumed run logs the same lines and keeps the same best checkpoint, validation does not change
training, W&B offline gets the same keys, and bad input exits 2 naming what to change."""
import glob
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from helpers.training import make_train_assets, train_args
from trainer.checkpoint import BEST_NAME, load_checkpoint, reconcile_best
from trainer.cli import eval_main, train_main
from trainer.config import VAL_METRICS, TrainConfig
from trainer.loop import train
from trainer.reporting import scalar_name
from trainer.run_io import read_log
from trainer.validation import BestSoFar

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS, VAL_EVERY, CKPT_EVERY = 6, 2, 3
METRIC = "t2i_median_rank"  # lower is better; on this seeded run it is best at step 2, before the resume point
TIMING = {"samples_per_s", "data_time", "batch_time", "val_time_s"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_train_assets(tmp_path_factory.mktemp("val"))


def args(assets, out: Path, **overrides) -> dict:
    return train_args(assets, out, **{"steps": STEPS, "ckpt_every": CKPT_EVERY, "warmup": 1, "val_every": VAL_EVERY,
                                      "best_metric": METRIC, **overrides})


@pytest.fixture(scope="module")
def val_run(assets) -> Path:
    out = assets["root"] / "run"
    train(TrainConfig(**args(assets, out)))
    return out


def untimed(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in TIMING} for line in log]


def best_state(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / BEST_NAME)


def test_val_metrics_are_logged_and_the_best_checkpoint_kept(val_run):
    log = read_log(val_run)
    val_steps = [line["step"] for line in log if "val_mean_R@1" in line]
    assert val_steps == [2, 4, 6]
    for line in log:
        if line["step"] in val_steps:
            assert line["loss"] is not None  # on the step's own line
            for key in ("val_i2t_R@1", "val_t2i_R@1", "val_i2t_mean_rank", "val_t2i_mean_rank",
                        "val_zeroshot_acc1", f"val_{METRIC}"):
                assert isinstance(line[key], float), key
            assert line["val_n_samples"] == 30  # the whole val split of the synthetic release (< 512)
    values = {line["step"]: line[f"val_{METRIC}"] for line in log if line["step"] in val_steps}
    best_step = min(values, key=lambda s: (values[s], s))  # lowest rank, the earliest of ties
    state = best_state(val_run)
    assert state["step"] == best_step and state["best"] == {"metric": METRIC, "value": values[best_step],
                                                            "step": best_step}
    assert json.loads((val_run / "summary.json").read_text())["best"] == state["best"]
    assert sorted(p.name for p in (val_run / "checkpoints").iterdir()) == [BEST_NAME, "step-00000003.pt",
                                                                           "step-00000006.pt"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(val_run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars(f"val/{METRIC}")] == [2, 4, 6]
    assert "train/loss" in events.Tags()["scalars"]


def test_slip_eval_checkpoint_best_scores_what_validation_scored(assets, val_run, tmp_path, capsys):
    state = best_state(val_run)
    out = tmp_path / "eval.json"
    code = eval_main([str(val_run), "--release", str(assets["release"]), "--split", "val", "--checkpoint", "best",
                      "--max-samples", "512", "--fewshot-pool", "20", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["step"] == state["step"]
    logged = next(line for line in read_log(val_run) if line["step"] == state["step"])
    for key in (METRIC, "i2t_R@1", "t2i_R@1", "t2i_mean_rank", "zeroshot_acc1"):
        assert result[key] == pytest.approx(logged[f"val_{key}"], abs=1e-6), key


def test_resumed_run_logs_the_same_lines_and_keeps_the_same_best(assets, val_run, tmp_path):
    killed = tmp_path / "killed"
    shutil.copytree(val_run, killed)
    # killed after step 5: last checkpoint at 3 (its best so far: step 2), log lines up to 5
    for name in ("checkpoints/step-00000006.pt", "summary.json", "open_clip_state_dict.pt"):
        (killed / name).unlink()
    (killed / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in read_log(val_run)[:5]))
    assert load_checkpoint(killed / "checkpoints" / "step-00000003.pt")["best"]["step"] == 2
    # the resumed run must keep step 2 although its first validation (step 4) is the first it scores itself
    assert best_state(val_run)["step"] == 2, f"pick a METRIC whose best is before step {CKPT_EVERY}"
    train(TrainConfig(**args(assets, killed, resume="latest")))
    assert untimed(read_log(killed)) == untimed(read_log(val_run))
    resumed, original = best_state(killed), best_state(val_run)
    assert resumed["best"] == original["best"] and resumed["step"] == original["step"]
    assert all(torch.equal(resumed["model"][k], v) for k, v in original["model"].items())


def test_validation_does_not_change_training(assets, val_run, tmp_path):
    plain = tmp_path / "plain"
    (plain / "checkpoints").mkdir(parents=True)
    shutil.copy(val_run / "checkpoints" / BEST_NAME, plain / "checkpoints" / BEST_NAME)  # another run's leftover
    train(TrainConfig(**args(assets, plain, val_every=None)))
    assert not (plain / "checkpoints" / BEST_NAME).exists()
    without_val = [{k: v for k, v in line.items() if not k.startswith("val_")} for line in untimed(read_log(val_run))]
    assert untimed(read_log(plain)) == without_val


def test_reconcile_keeps_only_the_best_so_far(val_run, tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(val_run / "checkpoints" / BEST_NAME, folder / BEST_NAME)
    best = best_state(val_run)["best"]
    reconcile_best(tmp_path / "run", best)
    assert (folder / BEST_NAME).is_file()
    reconcile_best(tmp_path / "run", {**best, "step": best["step"] - 1})  # written after the resumed checkpoint
    assert not (folder / BEST_NAME).exists()
    shutil.copy(val_run / "checkpoints" / BEST_NAME, folder / BEST_NAME)
    reconcile_best(tmp_path / "run", None)  # a fresh run: a leftover best.pt is another run's
    assert not (folder / BEST_NAME).exists()


def test_best_so_far_direction_and_ties():
    higher, lower = BestSoFar("mean_R@1"), BestSoFar("t2i_mean_rank")
    assert higher.improves(0.1) and lower.improves(9.0)
    higher.update(0.1, 2)
    lower.update(9.0, 2)
    assert not higher.improves(0.1) and higher.improves(0.2) and not higher.improves(float("nan"))
    assert lower.improves(8.0) and not lower.improves(9.5)
    assert BestSoFar.from_state("mean_R@1", higher.state()) == higher
    assert BestSoFar.from_state("i2t_R@1", higher.state()) == BestSoFar("i2t_R@1")  # another metric: start over


def _wandb_history(path: str) -> list[dict]:
    """History rows of an offline W&B run file (a LevelDB-style log of protobuf records, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, rows = Path(path).read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


@pytest.mark.timeout(300)
def test_report_to_wandb_offline_logs_the_same_keys(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-dir").mkdir()
    out = tmp_path / "wb"
    # log every 2nd step: step 1's validation gets a line of its own
    train(TrainConfig(**args(assets, out, steps=2, val_every=1, log_every=2, report_to=["tensorboard,wandb"])))
    log = read_log(out)
    assert [sorted(k for k in line if not k.startswith("val_")) for line in log][0] == ["samples", "step"]
    assert "val_mean_R@1" in log[0] and "loss" in log[1] and "val_mean_R@1" in log[1]
    run_id = json.loads((out / "wandb.json").read_text())["id"]
    files = glob.glob(str(tmp_path / "wandb-dir" / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    assert len(files) == 1
    history = {row["_step"]: row for row in _wandb_history(files[0])}
    assert sorted(history) == [1, 2]
    for line in log:
        logged = {scalar_name(k): v for k, v in line.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        assert {"val/mean_R@1", f"val/{METRIC}"} <= set(logged)
        assert {k: history[line["step"]][k] for k in logged} == logged
    assert "train/loss" in history[2]
    assert (out / "tb").is_dir()


def test_bad_validation_input_exits_2_with_one_line(assets, tmp_path, capsys):
    base = ["--release", str(assets["release"]), "--model", str(assets["model"]), "--steps", "1",
            "--out", str(tmp_path / "run")]
    assert train_main(base + ["--val-every", "1", "--best-metric", "R@1"]) == 2
    err = capsys.readouterr().err
    assert "best_metric" in err and "'R@1' is not a validation metric" in err
    assert all(name in err for name in VAL_METRICS) and len(err.strip().splitlines()) == 1
    assert train_main(base + ["--report-to", "tensorboard,mlflow"]) == 2
    assert "unknown backend 'mlflow'" in capsys.readouterr().err
    assert train_main(base + ["--val-every", "1", "--val-split", "nosuch"]) == 2
    assert "no nosuch-*.tar shards" in capsys.readouterr().err
    assert train_main(["--shards", str(tmp_path / "x.tar"), "--method", "clip", "--val-every", "1"]) == 2
    assert "--val-every needs --release" in capsys.readouterr().err
    assert train_main(base + ["--method", "sail", "--val-every", "1"]) == 2  # SAIL trains on a bank: refused
    assert "--val-every is not supported for --method sail" in capsys.readouterr().err


def test_checkpoint_best_without_validation_exits_2(assets, val_run, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(val_run, bare)
    (bare / "checkpoints" / BEST_NAME).unlink()
    code = eval_main([str(bare), "--release", str(assets["release"]), "--checkpoint", "best",
                      "--json", str(tmp_path / "e.json")])
    assert code == 2
    assert "no best checkpoint" in capsys.readouterr().err


@pytest.mark.timeout(200)
def test_validation_under_two_ddp_ranks_scores_on_rank_0_only(assets, tmp_path):
    """Rank 0 scores while rank 1 waits at the barrier: the run ends, val lines once, one best.pt, one TB file."""
    from helpers.torchrun import run_torchrun

    out = tmp_path / "ddp"
    values = train_args(assets, out, method="clip", batch_size=8, workers=0, steps=2, ckpt_every=2, warmup=1,
                        val_every=1, shuffle_buffer=20)
    script = tmp_path / "slip_train.py"
    script.write_text("import sys\nfrom trainer.cli import train_main\nsys.exit(train_main())\n")
    cmd = [str(script)] + [item for key, value in values.items() for item in (f"--{key.replace('_', '-')}",
                                                                                str(value))]
    proc = run_torchrun(cmd, 180, env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
                                       "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_log(out)
    assert [line["step"] for line in log if "val_mean_R@1" in line] == [1, 2]
    assert [line["step"] for line in log] == [1, 2]
    assert best_state(out)["best"]["step"] in (1, 2)
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
