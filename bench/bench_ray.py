"""`slip-etl images` (and `shards`) on the local executor vs Ray with 1 and 2 workers on this machine: the overhead
of Ray, and a check that all three write the same outputs.

Each run builds the embedded sample in its own dataset root through the real CLI (`slip-etl shards`, which runs
`images` first); Ray runs start a private Ray instance (`executor.address` empty) with `executor.workers` tasks.
Reported per run: the images stage's wall time from its record (Ray start-up included), the crawl alone
(`this_run.elapsed_s`, after Ray is up), images/s of the crawl, and whether the resolved status rows (without
`fetched_at`) and the shard tars are byte-identical to the local run's.

    python bench/bench_ray.py --products 1000        # small run
    python bench/bench_ray.py --products 3000 --workers 1 2 4

Results also go to bench/out/bench_ray.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def _run(dest: Path, products: int, extra: list[str]) -> dict:
    args = [sys.executable, "-m", "etl.cli", "shards", "--source", "sample", "--out", str(dest), "--no-progress",
            "--set", f"sources.sample.sample_products={products}", "--set", "labels.min_class_size=5",
            "--set", "shards.max_samples=256", "--set", "images.workers=1", *extra]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"slip-etl failed ({' '.join(extra) or 'local'}):\n{proc.stderr[-3000:]}")
    root = dest / "sample-electronics"
    record = json.loads((root / "work" / "records" / "images.json").read_text())
    status = [{k: ADDRESS.sub("0x", v) if isinstance(v, str) else v for k, v in r.items() if k != "fetched_at"}
              for r in pq.read_table(root / "work" / "images" / "status.parquet").to_pylist()]
    tars = hashlib.sha256()
    for tar in sorted((root / "work" / "shards" / "shards").iterdir()):
        tars.update(tar.name.encode() + hashlib.sha256(tar.read_bytes()).digest())
    crawl = record["stats"]["this_run"]
    return {"images": record["counts"]["input"], "stage_s": record["duration_s"], "crawl_s": crawl["elapsed_s"],
            "images_per_s": crawl["images_per_s"], "command_s": round(wall, 2),
            "executor": record["stats"]["executor"],
            "status_sha": hashlib.sha256(json.dumps(status, sort_keys=True, default=str).encode()).hexdigest(),
            "shards_sha": tars.hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=1000, help="sample products (default 1000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    args = parser.parse_args()
    work = OUT / "ray"
    shutil.rmtree(work, ignore_errors=True)
    runs = {"local": _run(work / "local", args.products, [])}
    for n in args.workers:
        runs[f"ray-{n}"] = _run(work / f"ray-{n}", args.products,
                                ["--executor", "ray", "--set", f"executor.workers={n}"])
    base = runs["local"]
    print(f"{'run':<8} {'images':>6} {'stage s':>8} {'crawl s':>8} {'img/s':>7}  same status  same shards")
    for name, r in runs.items():
        r["same_status"] = r["status_sha"] == base["status_sha"]
        r["same_shards"] = r["shards_sha"] == base["shards_sha"]
        print(f"{name:<8} {r['images']:>6} {r['stage_s']:>8.1f} {r['crawl_s']:>8.1f} {r['images_per_s']:>7.1f}  "
              f"{str(r['same_status']):<11}  {r['same_shards']}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_ray.json").write_text(json.dumps({"products": args.products, "cpus": os.cpu_count(),
                                                    "runs": runs}, indent=2) + "\n")
    if not all(r["same_status"] and r["same_shards"] for r in runs.values()):
        sys.exit("the executors wrote different outputs")


if __name__ == "__main__":
    main()
