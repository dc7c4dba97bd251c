"""Images/s of SLIP-kit's `slip-etl shards` (the images and shards stages) against img2dataset 1.47, same URLs.

Both peers download the same N 800x800 JPEGs from the same loopback server (etl.sample's static server, in this
process), make the same output (shorter side 256 keep-ratio, JPEG quality 95, WebDataset shards for img2dataset /
chunks + shards for us), with 2 worker processes each and 64 requests in flight (img2dataset: 2 processes x 32
threads). They run back to back in this script; the figures are end to end (process start-up included), and peak
RSS is the sum over each peer's whole process tree (psutil, sampled every 100 ms). CPU seconds per image
(the whole process tree, from rusage) are printed too: on a shared machine they are steadier than wall time.

    python bench/bench_images.py --n 2000          # reduced run
    python bench/bench_images.py                   # 10,000 images
    python bench/bench_images.py --repeat 3        # three alternating runs, median ratio (this machine is noisy)

The JPEGs are made once and cached under bench/out/jpegs-800/; img2dataset lives in bench/out/venv-img2dataset
(bench/peers/setup.sh creates it). Results also go to bench/out/bench_images.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"

from procstats import PeakRSS, children_cpu_s  # noqa: E402

import schemas  # noqa: E402
from etl.harness import adopt_stage, load_config, make_opts  # noqa: E402  (adopt upstream stages from tables)
from etl.sample import serve_directory  # noqa: E402

SIDE = 800
CONCURRENCY = 64  # img2dataset: processes_count 2 x thread_count 32
WORKERS = 2


def _make_jpeg(path: Path, index: int) -> None:
    """A product-photo-like 800x800 JPEG (gradient background, shapes, mild noise): about 60-120 KB."""
    rng = np.random.default_rng(index)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, SIDE)[:, None, None]
    base = (c0 * (1 - t) + c1 * t) * np.ones((1, SIDE, 1))
    base += rng.normal(0, 4, (SIDE, SIDE, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.integers(0, SIDE - 200, 2)
        w, h = rng.integers(60, 260, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((int(x), int(y), int(x + w), int(y + h)),
                                                                 fill=colour)
    img.save(path, "JPEG", quality=90)


def _make_one(args: tuple[str, int]) -> None:
    _make_jpeg(Path(args[0]), args[1])


def ensure_jpegs(folder: Path, n: int) -> list[str]:
    """Relative paths of n cached JPEGs, making the missing ones."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(n)]
    missing = [(str(folder / name), i) for i, name in enumerate(names) if not (folder / name).is_file()]
    if missing:
        print(f"making {len(missing)} {SIDE}x{SIDE} JPEGs under {folder} (once)", flush=True)
        with Pool(WORKERS) as pool:
            pool.map(_make_one, missing, chunksize=64)
    return names


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Wall time, peak RSS of the process tree, CPU seconds of the tree (waited-for descendants) and of the
    loopback server (this process) while it ran."""
    t0, cpu0, server0 = time.perf_counter(), children_cpu_s(), time.process_time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    with PeakRSS(proc.pid) as rss:
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{err[-4000:]}")
    return {"wall_s": wall, "peak_rss": rss.peak, "cpu_s": children_cpu_s() - cpu0,
            "server_cpu_s": time.process_time() - server0, "stdout": out, "stderr": err}


def seed_slip(root: Path, urls: list[str]) -> tuple[object, object]:
    """A dataset root whose fetch/nodes/edges/labels are adopted from tables listing `urls`."""
    cfg = load_config()
    opts = make_opts(root)
    fixtures = root / "fixtures"
    fixtures.mkdir(parents=True)
    (fixtures / "meta.jsonl").write_text("{}\n")
    adopt_stage(cfg, opts, "fetch", {"metadata": fixtures / "meta.jsonl"})
    n = len(urls)
    nodes = pa.table({
        "node_id": pa.array(range(n), pa.int64()), "asin": [f"B{i:09d}" for i in range(n)],
        "title": [f"bench product {i}" for i in range(n)], "features": [["a feature"]] * n,
        "description": [""] * n, "store": [None] * n, "main_category": ["Electronics"] * n,
        "category_path": [["Electronics", f"Leaf {i % 8}"] for i in range(n)], "price": [None] * n,
        "average_rating": [None] * n, "rating_number": [None] * n, "image_url": urls,
        **dict.fromkeys(("image_url_thumb", "image_url_large", "image_url_hi_res"), [None] * n),
        "also_buy": [[]] * n, "also_view": [[]] * n})
    pq.write_table(schemas.conform(nodes, "nodes"), fixtures / "nodes.parquet")
    adopt_stage(cfg, opts, "nodes", {"nodes": fixtures / "nodes.parquet"})
    node_filter = pa.table({"node_id": pa.array(range(n), pa.int64()), "kept": [True] * n, "reason": [None] * n})
    pq.write_table(schemas.conform(node_filter, "node_filter"), fixtures / "node_filter.parquet")
    edges = pa.table({"src": pa.array(range(n - 1), pa.int64()), "dst": pa.array(range(1, n), pa.int64()),
                      "weight": pa.array([2.0] * (n - 1), pa.float32()), "kind": ["copurchase"] * (n - 1)})
    pq.write_table(schemas.conform(edges, "edges"), fixtures / "edges.parquet")
    adopt_stage(cfg, opts, "edges", {"edges": fixtures / "edges.parquet",
                                      "node_filter": fixtures / "node_filter.parquet"})
    splits = ["train"] * 8 + ["val", "test"]
    labels = pa.table({"node_id": pa.array(range(n), pa.int64()), "asin": [f"B{i:09d}" for i in range(n)],
                       "label": pa.array([i % 8 for i in range(n)], pa.int32()),
                       "label_name": [f"Leaf {i % 8}" for i in range(n)],
                       "split": [splits[i % 10] for i in range(n)]})
    pq.write_table(schemas.conform(labels, "node_labels"), fixtures / "node_labels.parquet")
    (fixtures / "labels.json").write_text(json.dumps({
        "level": 1, "classes": [{"id": c, "name": f"Leaf {c}", "count": n // 8} for c in range(8)],
        "rule": {}, "dropped": {}}))
    adopt_stage(cfg, opts, "labels", {"node_labels": fixtures / "node_labels.parquet",
                                      "labels": fixtures / "labels.json"})
    return cfg, opts


def bench_slip(urls: list[str], workdir: Path) -> dict:
    """`slip-etl shards`: one command, which runs the images stage it needs first (as a user would run it)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    _, opts = seed_slip(workdir, urls)
    sets = {"images.concurrency": CONCURRENCY, "images.per_host_concurrency": CONCURRENCY,
            "images.workers": WORKERS, "images.shorter_side": 256, "images.resize_mode": "keep_ratio",
            "images.jpeg_quality": 95}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    run = run_measured([sys.executable, "-m", "etl.cli", "shards", "--source", opts.source, "--category",
                        opts.category, "--out", str(workdir), "--allow-host", "127.0.0.1", "--no-progress", *args])
    result = {key: run[key] for key in ("wall_s", "peak_rss", "cpu_s", "server_cpu_s")}
    records = {stage: json.loads((opts.work_dir / "records" / f"{stage}.json").read_text())
               for stage in ("images", "shards")}
    for stage, record in records.items():
        result[f"{stage}_stage_s"] = record["duration_s"]
    result["ok"] = records["images"]["counts"]["kept"]
    result["crawl_images_per_s"] = records["images"]["stats"]["this_run"]["images_per_s"]
    ok_rows = pq.read_table(opts.work_dir / "images" / "status.parquet", columns=["status"])
    assert ok_rows.num_rows == len(urls)
    assert records["shards"]["counts"]["kept"] == len(urls)
    sizes = [Image.open(io.BytesIO(j)).size for j in _first_jpegs(opts.work_dir / "images" / "chunks", 20)]
    result["sample_sizes"] = sorted(set(sizes))
    return result


def _first_jpegs(chunks: Path, k: int) -> list[bytes]:
    first = sorted(chunks.glob("part-*.parquet"))[0]
    return [j for j in pq.read_table(first, columns=["jpeg"]).column("jpeg").to_pylist() if j][:k]


def bench_img2dataset(urls: list[str], workdir: Path) -> dict:
    exe = subprocess.run([str(ROOT / "bench" / "peers" / "setup.sh")], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    url_list = workdir / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    run = run_measured([exe, "--url_list", str(url_list), "--input_format", "txt", "--output_folder",
                        str(workdir / "shards"), "--output_format", "webdataset", "--processes_count", str(WORKERS),
                        "--thread_count", str(CONCURRENCY // WORKERS), "--image_size", "256", "--resize_mode",
                        "keep_ratio", "--encode_quality", "95", "--encode_format", "jpg",
                        "--number_sample_per_shard", "1000", "--timeout", "10", "--retries", "0",
                        "--enable_wandb", "False"], env={"NO_ALBUMENTATIONS_UPDATE": "1"})
    stats = [json.loads(p.read_text()) for p in (workdir / "shards").glob("*_stats.json")]
    return {"wall_s": run["wall_s"], "peak_rss": run["peak_rss"], "cpu_s": run["cpu_s"],
            "server_cpu_s": run["server_cpu_s"], "ok": sum(s.get("successes", 0) for s in stats),
            "count": sum(s.get("count", 0) for s in stats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="images (default 10000)")
    parser.add_argument("--repeat", type=int, default=1, help="run both peers this many times, alternating, and "
                                                                "report the median ratio (default 1)")
    parser.add_argument("--only", choices=["slip", "img2dataset"], help="run one peer")
    args = parser.parse_args()

    jpeg_dir = OUT / "jpegs-800"
    names = ensure_jpegs(jpeg_dir, args.n)
    runs: list[dict[str, dict]] = []
    print(f"{args.n} x {SIDE}x{SIDE} JPEG, loopback, {WORKERS} workers, {CONCURRENCY} in flight, "
          f"shorter side 256 keep-ratio, JPEG q95; cpus={psutil.cpu_count()}")
    print(f"{'peer':<12} {'ok':>7} {'wall s':>8} {'images/s':>9} {'CPU ms/img':>11} {'server ms/img':>14} "
          f"{'peak RSS MiB':>13}  notes")
    with serve_directory(jpeg_dir) as base:
        urls = [f"{base.rstrip('/')}/{name}" for name in names]
        for _ in range(args.repeat):
            results: dict[str, dict] = {}
            if args.only != "img2dataset":
                results["slip-kit"] = bench_slip(urls, OUT / "run-slip")
            if args.only != "slip":
                results["img2dataset"] = bench_img2dataset(urls, OUT / "run-img2dataset")
            _report(results, args.n)
            runs.append(results)
    summary: dict[str, float] = {}
    if args.only is None:
        ratios = sorted(r["ratio"]["images_per_s"] for r in runs)
        summary = {"median_ratio": float(np.median(ratios)), "ratios": ratios}
        print(f"ratio slip-kit / img2dataset over {len(runs)} run(s): median {summary['median_ratio']:.2f}x "
              f"(each: {', '.join(f'{r:.2f}' for r in ratios)})")
    (OUT / "bench_images.json").write_text(json.dumps({"n": args.n, "runs": runs, **summary}, indent=2,
                                                      default=str) + "\n")


def _report(results: dict[str, dict], n: int) -> None:
    """Print one line per peer (and the ratio when both ran); adds the derived figures to `results`."""
    for name, r in results.items():
        r["images_per_s"] = n / r["wall_s"]
        notes = (f"slip-etl shards (images {r['images_stage_s']:.1f} s + shards {r['shards_stage_s']:.1f} s); "
                 f"crawl alone {r['crawl_images_per_s']:.0f} images/s" if name == "slip-kit" else "webdataset output")
        r["cpu_ms_per_image"] = 1000 * r["cpu_s"] / n
        r["server_cpu_ms_per_image"] = 1000 * r["server_cpu_s"] / n
        print(f"{name:<12} {r['ok']:>7} {r['wall_s']:>8.1f} {r['images_per_s']:>9.1f} {r['cpu_ms_per_image']:>11.2f} "
              f"{r['server_cpu_ms_per_image']:>14.2f} {r['peak_rss'] / 2**20:>13.0f}  {notes}")
    if len(results) == 2:
        ratio = results["slip-kit"]["images_per_s"] / results["img2dataset"]["images_per_s"]
        cpu_ratio = results["img2dataset"]["cpu_s"] / results["slip-kit"]["cpu_s"]
        results["ratio"] = {"images_per_s": round(ratio, 2), "cpu_per_image": round(cpu_ratio, 2)}
        print(f"ratio slip-kit / img2dataset: {ratio:.2f}x images/s; img2dataset uses {cpu_ratio:.2f}x our CPU "
              f"time per image (load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
