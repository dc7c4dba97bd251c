"""Training under torchrun: real 2-process gloo runs on CPU (`python -m torch.distributed.run`).

(a) 2 ranks x B give the loss terms, the global batch-graph stats and every parameter's gradient of 1 x 2B, for
clip and slip, with --local-loss, and with --accum-freq 2 (2 ranks x 2 x B/2); (b) a run resumed under DDP after a
kill continues at the exact step (same log.jsonl), and a different world size on resume is refused (exit 2);
(c) only rank 0 writes, and a rank that fails ends the whole run with its error, in bounded time.
"""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.ddp_driver import compare, step_result
from helpers.torchrun import finish, free_port, launch, run_torchrun
from helpers.training import make_train_assets, train_args
from trainer.cli import train_main
from trainer.run_io import read_log

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DRIVER = Path(__file__).parent / "helpers" / "ddp_driver.py"
B = 8
TIMEOUT_S = 150


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_train_assets(tmp_path_factory.mktemp("ddp"), n_nodes=200)


def torchrun(script: Path, *args: str) -> subprocess.CompletedProcess:
    return run_torchrun([str(script), *args], TIMEOUT_S, env={"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})


def train_script(tmp: Path) -> Path:
    script = Path(sys.executable).parent / "slip-train"
    if script.exists():
        return script
    script = tmp / "slip_train.py"
    script.write_text("import sys\nfrom trainer.cli import train_main\nsys.exit(train_main())\n")
    return script


def flags(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        flag = key.replace("_", "-")
        out += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    return out


def cfg_values(assets, out: Path, method: str, **overrides) -> dict:
    return train_args(assets, out, method=method, workers=0, augment=False, gat_dropout=0.0, **overrides)


JOBS = {"clip": ("clip", {}), "slip": ("slip", {}), "slip-local": ("slip", {"local_loss": True}),
        "slip-accum-freq": ("slip", {"batch_size": B // 2, "accum_freq": 2})}
ACCUM = {"batch_size": B // 2, "accum": 2}  # negatives per micro-batch: no 1-process twin, but synced gradients


def run_args(assets, out: Path) -> dict:
    return cfg_values(assets, out, "slip", batch_size=B, steps=6, ckpt_every=3, warmup=1, shuffle_buffer=20)


@pytest.fixture(scope="module")
def launched(assets, tmp_path_factory):
    """One torchrun launch: the gradient jobs of JOBS and a 6-step training run (`full`)."""
    root = tmp_path_factory.mktemp("launch")
    spec = []
    for name, (method, extra) in JOBS.items():
        (root / name).mkdir()
        spec.append({"cfg": cfg_values(assets, root / name, method, **{"batch_size": B, **extra}),
                     "global_size": 2 * B, "out": str(root / name)})
    (root / "slip-accum").mkdir()
    spec.append({"cfg": cfg_values(assets, root / "slip-accum", "slip", **ACCUM), "global_size": 2 * B,
                 "out": str(root / "slip-accum")})
    spec.append({"train": run_args(assets, root / "full")})
    (root / "jobs.json").write_text(json.dumps(spec))
    proc = torchrun(DRIVER, str(root / "jobs.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_two_ranks_give_the_loss_and_gradients_of_one_process_with_the_whole_batch(assets, launched, tmp_path):
    single = {method: step_result(cfg_values(assets, tmp_path / f"single-{method}", method, batch_size=2 * B), 2 * B)
              for method in ("clip", "slip")}
    assert single["slip"]["neighbor_frac"] > 0
    for name, (method, _) in JOBS.items():
        for rank in (0, 1):
            got = torch.load(launched / name / f"rank{rank}.pt", weights_only=False)
            assert got["world"] == 2 and got["rank"] == rank
            compare(got, single[method])
    # --accum under DDP: no sync on the first micro-batch (no_sync), one on the last: both ranks hold the mean
    ranks = [torch.load(launched / "slip-accum" / f"rank{r}.pt", weights_only=False)["grads"] for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and all(
        torch.allclose(ranks[0][k], ranks[1][k], rtol=1e-5, atol=1e-9) for k in ranks[0])


def test_resume_under_ddp_continues_at_the_exact_step_and_only_rank_0_writes(assets, launched, tmp_path, capsys):
    full = launched / "full"
    log = read_log(full)
    assert [r["step"] for r in log] == list(range(1, 7))
    assert all(r["samples"] == r["step"] * 2 * B and r["neighbor_frac"] is not None for r in log)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["samples"] == 6 * 2 * B
    # nothing from rank 1: one TensorBoard file, each log line once, no file beyond rank 0's set
    assert len(list((full / "tb").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in full.iterdir()) == sorted(
        ["checkpoints", "config.json", "log.jsonl", "open_clip_config.json", "open_clip_state_dict.pt", "summary.json",
         "tb"])
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["step-00000003.pt", "step-00000006.pt"]

    killed = tmp_path / "killed"  # the state of a run killed after step 4: checkpoint 3, log lines up to 4
    shutil.copytree(full, killed)
    for name in ("checkpoints/step-00000006.pt", "summary.json", "open_clip_state_dict.pt"):
        (killed / name).unlink()
    (killed / "log.jsonl").write_text("\n".join((full / "log.jsonl").read_text().splitlines()[:4]) + "\n")
    args = {**run_args(assets, killed), "resume": "latest"}
    proc = torchrun(train_script(tmp_path), *flags(args))  # through the CLI this time
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines().count(str(killed.resolve())) == 1  # only rank 0 reports
    drop = ("samples_per_s", "data_time", "batch_time")
    assert [{k: v for k, v in r.items() if k not in drop} for r in read_log(killed)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in log]

    single = tmp_path / "single"
    shutil.copytree(killed, single)
    code = train_main(flags({**args, "out": str(single), "resume": "latest"}))
    assert code == 2  # one process cannot continue a 2-rank data position
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "world size" in err[0] and "--nproc_per_node 2" in err[0], err


def test_two_nodes_joined_by_c10d_rendezvous_train_as_one_two_rank_run(assets, launched, tmp_path):
    """Multi-node: two torchrun launches (one process each) that meet through the c10d rendezvous, as two machines
    would; the run is the 2-rank run of the launch fixture, loss for loss."""
    out = tmp_path / "two-nodes"
    endpoint = f"127.0.0.1:{free_port()}"
    rdzv = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
            "--rdzv-id", "two-nodes-test"]
    env = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = [str(train_script(tmp_path)), *flags(run_args(assets, out))]
    nodes = [launch(rdzv, args, env) for _ in range(2)]
    results = [finish(node, TIMEOUT_S) for node in nodes]
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    drop = ("samples_per_s", "data_time", "batch_time")
    assert [{k: v for k, v in r.items() if k not in drop} for r in read_log(out)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in read_log(launched / "full")]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


def test_a_failing_rank_ends_the_run_with_its_error(assets, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    shutil.copy(assets["release"] / "shards" / "train-000000.tar", shards / "train-000000.tar")
    (shards / "train-000001.tar").write_bytes(b"not a tar file" * 100)  # rank 1's only shard (no shard shuffle)
    args = cfg_values(assets, tmp_path / "run", "slip", batch_size=B, steps=4)
    del args["release"]
    args.update(shards=str(shards / "train-{000000..000001}.tar"), graph=str(assets["release"] / "edges.parquet"))
    cmd_flags = flags(args) + ["--no-shard-shuffle"]
    t0 = time.monotonic()
    proc = torchrun(train_script(tmp_path), *cmd_flags)
    assert proc.returncode != 0
    assert "no valid sample" in proc.stderr and "rank 1" in proc.stderr, proc.stderr[-3000:]
    assert time.monotonic() - t0 < 120  # torchrun stops rank 0 at once; --dist-timeout (600 s) is the backstop
    assert not (tmp_path / "run" / "checkpoints").exists()
