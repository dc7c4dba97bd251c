"""Throughput of DDP on CPU: `slip-train` in 1 process vs `torchrun --nproc_per_node 2` (gloo) at the same global
batch (2 x B per rank = 1 x 2B), same model, steps and synthetic shards, one intra-op thread per process.

The figure is the in-loop rate (summary.json `samples_per_s`: global samples over training time, setup and
imports excluded), beside each run's whole-process wall time. On a shared machine run it while nothing else does.

    python bench/bench_ddp.py [--global-batch 64] [--steps 20] [--method slip] [--model slip-tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer.synthetic import make_synthetic_release

REPO = Path(__file__).resolve().parents[1]


def train_cmd(release: Path, out: Path, args: argparse.Namespace, batch: int) -> list[str]:
    script = Path(sys.executable).parent / "slip-train"
    return [str(script), "--release", str(release), "--method", args.method, "--model", args.model,
            "--batch-size", str(batch), "--steps", str(args.steps), "--warmup", "1", "--workers", "1",
            "--ckpt-every", str(args.steps), "--out", str(out)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], out: Path) -> tuple[float, dict]:
    """(wall s, summary.json) of one run; exits with the run's output on failure."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--method", default="slip")
    parser.add_argument("--model", default="slip-tiny")
    args = parser.parse_args()
    if args.global_batch % 2:
        raise SystemExit("--global-batch must be even (2 ranks)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # 2 shards per rank and per step budget: enough samples that no run wraps an epoch more than the other
        release = make_synthetic_release(root / "release", n_nodes=max(400, args.global_batch * args.steps // 2),
                                         shard_size=64)
        one = root / "one"
        wall_1, s_1 = run(train_cmd(release, one, args, args.global_batch), one)
        two = root / "two"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr",
                    "127.0.0.1", "--master-port", str(free_port())]
        wall_2, s_2 = run(launcher + train_cmd(release, two, args, args.global_batch // 2), two)
    assert s_1["samples"] == s_2["samples"], (s_1["samples"], s_2["samples"])
    print(f"{args.method} {args.model}, global batch {args.global_batch}, {args.steps} steps, "
          f"{s_1['samples']} samples, 1 thread per process")
    print("| run | in-loop samples/s | whole-process wall s |")
    print("| --- | --- | --- |")
    print(f"| 1 process x batch {args.global_batch} | {s_1['samples_per_s']:.1f} | {wall_1:.1f} |")
    print(f"| torchrun 2 x batch {args.global_batch // 2} (gloo) | {s_2['samples_per_s']:.1f} | {wall_2:.1f} |")
    print(f"ratio DDP / 1 process: {s_2['samples_per_s'] / s_1['samples_per_s']:.2f}x")


if __name__ == "__main__":
    main()
