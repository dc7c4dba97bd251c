"""Bytes per image and images/s of the `images` stage: the smallest covering rendition against always-hi_res.

The embedded sample (`--source sample`) is built up to `edges` once; then the images stage runs over the same kept
nodes once per rule (`images.rendition=largest`, the old behaviour, and `smallest_covering`, the default), each from
an empty work/images/, against one loopback sample server with CDN renditions on (etl/sample/server.py: hi_res
`._AC_SL1500_` is the stored ~350 px render resized to 1500 px, large `._AC_` is the render as stored). The server's
renditions are made once before the timed runs (a CDN has them cached), so the figures are the crawler's: HTTP,
decode, resize, re-encode. Rules alternate over --repeat rounds; the median is reported.

    python bench/bench_renditions.py                 # 600 products, 3 rounds
    python bench/bench_renditions.py --products 3000 --repeat 1

Results go to bench/out/bench_renditions.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

from etl.core.source import SAMPLE_IMAGE_HOST, open_source  # noqa: E402
from etl.harness import load_config, make_opts, run  # noqa: E402
from etl.imaging.renditions import RENDITIONS  # noqa: E402
from etl.sample import serve_directory  # noqa: E402

RULES = ("largest", "smallest_covering")


def warm(base: str, urls: list[str]) -> None:
    """Ask for every URL once, so the server's renditions exist before anything is timed."""
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda url: client.get(base + url.removeprefix(SAMPLE_IMAGE_HOST)).status_code, urls))


def images_run(cfg, opts, rule: str) -> dict:
    """One images stage from scratch under `rule`; the crawl's own figures from its record."""
    shutil.rmtree(opts.work_dir / "images", ignore_errors=True)
    (opts.work_dir / "records" / "images.json").unlink(missing_ok=True)
    rule_cfg = cfg.model_copy(update={"images": cfg.images.model_copy(update={"rendition": rule})})
    run(rule_cfg, opts, "images")
    stats = json.loads((opts.work_dir / "records" / "images.json").read_text())["stats"]
    crawl = stats["this_run"]
    ok = crawl["status"].get("ok", 0)
    return {"rule": rule, "results": crawl["results"], "ok": ok, "requests": crawl["requests"],
            "bytes_downloaded": crawl["bytes_downloaded"], "bytes_per_image": crawl["bytes_downloaded"] / max(ok, 1),
            "elapsed_s": crawl["elapsed_s"], "images_per_s": crawl["images_per_s"],
            "renditions": stats["renditions"], "fallbacks": crawl["rendition_fallbacks"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    work = OUT / "renditions"
    shutil.rmtree(work, ignore_errors=True)
    cfg = load_config(overrides=[f"sources.sample.sample_products={args.products}", f"images.workers={args.workers}"])
    opts = make_opts(work, source="sample")
    with open_source(cfg, opts) as served:
        run(cfg, served, "edges")
    nodes = pl.read_parquet(opts.work_dir / "nodes" / "nodes.parquet")
    urls = [u for column in (f"image_url_{r}" for r in RENDITIONS) for u in nodes[column].drop_nulls().to_list()
            if u.startswith(SAMPLE_IMAGE_HOST)]
    with serve_directory(opts.dataset_root / "sample_src", renditions=True) as base:
        opts = dataclasses.replace(served, image_url_rewrite=((SAMPLE_IMAGE_HOST, base),), mirror=base)
        warm(base, urls)
        rounds = [images_run(cfg, opts, rule) for _ in range(args.repeat) for rule in RULES]
    summary = {}
    for rule in RULES:
        mine = [r for r in rounds if r["rule"] == rule]
        summary[rule] = {"bytes_per_image": statistics.median(r["bytes_per_image"] for r in mine),
                         "images_per_s": statistics.median(r["images_per_s"] for r in mine),
                         "ok": mine[0]["ok"], "results": mine[0]["results"], "renditions": mine[0]["renditions"],
                         "fallbacks": mine[0]["fallbacks"]}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_renditions.json").write_text(json.dumps({"args": vars(args), "rounds": rounds,
                                                            "summary": summary}, indent=2) + "\n")
    old, new = summary["largest"], summary["smallest_covering"]
    print(f"{'rule':<18} {'ok':>5} {'KB/image':>9} {'images/s':>9}  renditions")
    for rule, s in summary.items():
        print(f"{rule:<18} {s['ok']:>5} {s['bytes_per_image'] / 1024:>9.1f} {s['images_per_s']:>9.1f}  "
              f"{s['renditions']} (fallbacks {s['fallbacks']})")
    print(f"smallest_covering: {old['bytes_per_image'] / new['bytes_per_image']:.1f}x fewer bytes per image, "
          f"{new['images_per_s'] / old['images_per_s']:.2f}x the images/s")


if __name__ == "__main__":
    main()
