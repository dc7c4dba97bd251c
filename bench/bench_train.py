"""Throughput: `slip-train --method clip` vs open_clip's own trainer (`open_clip_train.main`), and SLIP's overhead
over CLIP, on the same synthetic shards, same model config, batch, workers and device (CPU by default).

The headline figure is whole-process wall time (imports, setup, training, final checkpoint) for the same number
of samples; beside it the same processes' CPU time (user + sys, loader workers included: the steadier figure on a
shared machine) and the in-loop rate (median step time after the first `--log-every` steps).

    python bench/bench_train.py [--samples 5000] [--steps S] [--batch-size 128] [--workers 1] [--threads T]

Notes on the baseline: open_clip_train needs pandas, and with webdataset >= 1.0 its own sample grouping raises
KeyError 'fname' on the per-shard end marker ({}) that `tar_file_expander` now yields; the runner below filters
those markers out (nothing else is changed) and registers our model config JSON before calling its main().
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trainer.synthetic import make_synthetic_release

REPO = Path(__file__).resolve().parents[1]

OPEN_CLIP_RUNNER = """
import sys, open_clip
import open_clip_train.data as ocd
_group = ocd.group_by_keys_nothrow
ocd.group_by_keys_nothrow = lambda data, *a, **k: _group((s for s in data if s), *a, **k)
open_clip.add_model_config(sys.argv[1])
from open_clip_train.main import main
main(sys.argv[2:])
"""


def timed(cmd: list[str], log_path: Path, threads: int | None) -> tuple[float, float]:
    """Run `cmd` (output to `log_path`); return (wall s, CPU s of the process and its reaped children, e.g. the
    loader workers). CPU time is the steadier figure on a shared machine; fail loudly on error."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if code != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"{cmd[0]} ... failed ({code}); log {log_path}:\n{tail}")
    return wall, cpu


def open_clip_loop_rate(log_text: str, batch_size: int) -> float:
    """Samples/s from the median of open_clip_train's 'Batch (t): AVG' log lines, first interval dropped."""
    averages = [float(m) for m in re.findall(r"Batch \(t\): ([0-9.]+)", log_text)][1:]
    return batch_size / statistics.median(averages) if averages else math.nan


def slip_loop_rate(run_dir: Path, batch_size: int, skip: int) -> float:
    times = [json.loads(line)["batch_time"] for line in (run_dir / "log.jsonl").read_text().splitlines()][skip:]
    return batch_size / statistics.median(times) if times else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5000, help="train-split samples in the synthetic shards")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model-config", type=Path, default=REPO / "trainer" / "model_configs" / "slip-tiny.json")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: one pass over the shards)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for every run (default: torch's own choice)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "train")
    args = parser.parse_args()

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    image_size = json.loads(args.model_config.read_text())["vision_cfg"]["image_size"]
    release = out / "release"
    if not (release / "shards" / "sizes.json").exists():
        make_synthetic_release(release, n_nodes=math.ceil(args.samples / 0.8), shard_size=500, image_size=image_size)
    sizes = json.loads((release / "shards" / "sizes.json").read_text())
    train_shards = sorted(k for k in sizes if k.startswith("train-"))
    n_train = sum(sizes[k] for k in train_shards)
    steps = min(args.steps or n_train // args.batch_size, n_train // args.batch_size)
    samples = steps * args.batch_size
    pattern = str(release / "shards" / f"train-{{000000..{len(train_shards) - 1:06d}}}.tar")
    print(f"shards: {len(train_shards)} train shards, {n_train} samples, {image_size}px JPEG "
          f"(trainer/synthetic.py); model {args.model_config.name}; batch {args.batch_size}, "
          f"{args.workers} worker(s), device {args.device}, OMP_NUM_THREADS={args.threads or 'default'}; "
          f"{steps} steps = {samples} samples per run; load average {os.getloadavg()[0]:.1f}", flush=True)

    results = {}
    oc_logs = out / "open_clip_logs"
    oc_cmd = [sys.executable, "-c", OPEN_CLIP_RUNNER, str(args.model_config),
              "--train-data", pattern, "--dataset-type", "webdataset", "--train-num-samples", str(samples),
              "--batch-size", str(args.batch_size), "--workers", str(args.workers),
              "--model", args.model_config.stem, "--epochs", "1", "--precision", "fp32", "--lr", "5e-4",
              "--warmup", "10", "--wd", "0.2", "--grad-clip-norm", "1.0", "--seed", "0",
              "--log-every-n-steps", str(args.log_every), "--report-to", "", "--logs", str(oc_logs),
              "--name", f"bench-{int(time.time())}", "--device", args.device]
    wall, cpu = timed(oc_cmd, out / "open_clip_train.log", args.threads)
    results["open_clip_train"] = {"wall_s": wall, "cpu_s": cpu, "samples": samples,
                                  "loop_samples_per_s": open_clip_loop_rate(
                                      (out / "open_clip_train.log").read_text(), args.batch_size)}

    slip_train = Path(sys.executable).parent / "slip-train"
    for method in ("clip", "slip"):
        run_dir = out / f"run-{method}"
        cmd = [str(slip_train), "--release", str(release), "--method", method, "--model", str(args.model_config),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--steps", str(steps),
               "--seed", "0", "--lr", "5e-4", "--warmup", "10", "--device", args.device, "--out", str(run_dir),
               "--ckpt-every", str(steps)]
        shutil.rmtree(run_dir, ignore_errors=True)
        wall, cpu = timed(cmd, out / f"slip_train_{method}.log", args.threads)
        results[f"slip-train --method {method}"] = {
            "wall_s": wall, "cpu_s": cpu, "samples": samples,
            "loop_samples_per_s": slip_loop_rate(run_dir, args.batch_size, args.log_every)}

    for r in results.values():
        r["samples_per_s"] = r["samples"] / r["wall_s"]
        r["samples_per_cpu_s"] = r["samples"] / r["cpu_s"]
    base = results["open_clip_train"]
    clip = results["slip-train --method clip"]
    slip = results["slip-train --method slip"]
    ratios = {
        "clip_vs_open_clip_train (wall)": clip["samples_per_s"] / base["samples_per_s"],
        "clip_vs_open_clip_train (cpu)": clip["samples_per_cpu_s"] / base["samples_per_cpu_s"],
        "clip_vs_open_clip_train (loop)": clip["loop_samples_per_s"] / base["loop_samples_per_s"],
        "slip_overhead_over_clip (wall)": clip["samples_per_s"] / slip["samples_per_s"] - 1,
        "slip_overhead_over_clip (cpu)": clip["samples_per_cpu_s"] / slip["samples_per_cpu_s"] - 1,
        "slip_overhead_over_clip (loop)": clip["loop_samples_per_s"] / slip["loop_samples_per_s"] - 1,
    }
    print(f"\n{'trainer':<28}{'wall s':>8}{'CPU s':>8}{'samples/s wall':>16}{'samples/CPU-s':>15}"
          f"{'samples/s loop':>16}")
    for name, r in results.items():
        print(f"{name:<28}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}{r['samples_per_s']:>16.1f}"
              f"{r['samples_per_cpu_s']:>15.1f}{r['loop_samples_per_s']:>16.1f}")
    for name, value in ratios.items():
        print(f"{name:<36}{value:>8.3f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    (out / "results.json").write_text(json.dumps({"results": results, "ratios": ratios, "steps": steps,
                                                  "batch_size": args.batch_size, "workers": args.workers,
                                                  "threads": args.threads, "device": args.device}, indent=2))


if __name__ == "__main__":
    main()
