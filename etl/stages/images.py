"""Stage `images`: download, validate and resize the main image of every kept node, resumable per sample.

Results go to append-only Parquet chunks (`chunks/part-NNNNNN.parquet`, each written atomically every
`images.chunk_rows` results; the format is `etl.imaging.chunks`), so a killed run loses at most the results not yet
in a chunk. A later chunk's row supersedes an earlier one for the same node. On start the stage reads the chunks,
keeps every node whose latest status is final and fetches only the rest (never fetched, or failed with a retriable
status). At the end `status.parquet` holds the resolved latest row per node (without the JPEG). The crawl itself
is `etl.imaging.crawler`.

Which URL: the node table's renditions of the image (`image_url_thumb/_large/_hi_res`), the smallest that covers
`images.shorter_side` first, larger ones when the downloaded image turns out too small (`images.rendition`,
etl/imaging/renditions.py); `status.rendition` names the one kept and `url` is its URL. A node table without
renditions fetches `image_url`, as before; `rendition: largest` fetches the same URL, now named.

A finished stage is skipped by the framework; `slip-etl images --force` runs it again over the kept chunks, so
only nodes still missing or failed with a retriable status (after `images.retries`) are requested again. To start
over, delete `work/images/`. `attempts` counts across runs.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

import schemas
from etl.core import executor as executors
from etl.core.stage import Counts, StageContext, StageError, StageResult
from etl.imaging.chunks import ChunkWriter, chunk_paths, read_latest
from etl.imaging.crawler import Crawler, CrawlJob, CrawlResult, CrawlSettings
from etl.imaging.renditions import RENDITIONS, Policy, plan
from etl.net.http import is_retriable, user_agent
from slipio import atomic

VERSION = "3"  # 2: OpenCV resize/encode changed the JPEG bytes; 3: renditions (status.rendition, url = the one used)

CHUNK_DIR = "chunks"
FINAL_STATUSES = frozenset({"ok", "not_image", "too_large", "decode_error", "blocked_url", "no_url",
                            "robots_optout"})
PROGRESS_EVERY = 64  # results between progress-bar postfix updates


def is_final(status: str, http_status: int | None) -> bool:
    """A result worth keeping on resume; retriable ones (timeouts, connection errors, empty bodies, 429/5xx) are
    fetched again."""
    if status == "http_error":
        return http_status is None or not is_retriable(http_status)
    return status in FINAL_STATUSES


RENDITION_COLUMNS = tuple(f"image_url_{name}" for name in RENDITIONS)


def kept_nodes(ctx: StageContext) -> pl.DataFrame:
    """node_id, asin, image_url and its renditions' URLs of every node the graph filters kept."""
    nodes = pl.read_parquet(ctx.input("nodes", "nodes"), columns=["node_id", "asin", "image_url",
                                                                  *RENDITION_COLUMNS])
    node_filter = pl.read_parquet(ctx.input("edges", "node_filter"), columns=["node_id", "kept"])
    kept_ids = node_filter.filter(pl.col("kept"))
    joined = kept_ids.join(nodes, on="node_id", how="left")
    missing = joined.filter(pl.col("asin").is_null()).height
    if missing:
        raise StageError(f"node_filter keeps {missing} node_id(s) that are not in the node table; "
                         f"rerun the edges stage (slip-etl edges --force)")
    return joined.select("node_id", "asin", "image_url", *RENDITION_COLUMNS).sort("node_id")


def plan_jobs(nodes: pl.DataFrame, previous: pl.DataFrame, shorter_side: int = 256,
              policy: Policy = "smallest_covering") -> tuple[list[CrawlJob], int]:
    """Jobs for the nodes without a final result (with the renditions to try); and how many nodes are already done."""
    done: set[int] = set()
    prior: dict[int, int] = {}
    for node_id, status, http_status, attempts in previous.select(
            "node_id", "status", "http_status", "attempts").iter_rows():
        if is_final(status, http_status):
            done.add(node_id)
        else:
            prior[node_id] = attempts
    columns = [c for c in RENDITION_COLUMNS if c in nodes.columns]
    jobs = []
    for node_id, asin, url, *urls in nodes.select("node_id", "asin", "image_url", *columns).iter_rows():
        if node_id not in done:
            tries = plan(dict(zip(RENDITIONS, urls)), shorter_side, policy)  # () without renditions: image_url
            jobs.append(CrawlJob(node_id, asin, url, prior.get(node_id, 0), tries))
    return jobs, nodes.height - len(jobs)


def run(ctx: StageContext) -> StageResult:
    nodes = kept_nodes(ctx)
    chunks_dir = ctx.out_dir / CHUNK_DIR
    chunks_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temps(chunks_dir)
    jobs, resumed = plan_jobs(nodes, read_latest(chunks_dir), ctx.cfg.images.shorter_side, ctx.cfg.images.rendition)
    if resumed:
        ctx.log.info("images: %d of %d nodes already have a final result; fetching %d", resumed, nodes.height,
                     len(jobs))
    ray_cfg = ctx.cfg.executor
    crawl = {} if not jobs else _crawl_ray(ctx, jobs, chunks_dir) if ray_cfg.kind == "ray" else _crawl(
        ctx, jobs, chunks_dir)

    status = read_latest(chunks_dir).filter(pl.col("node_id").is_in(nodes["node_id"].implode()))
    if status.height != nodes.height:
        raise StageError(f"images: {nodes.height - status.height} kept node(s) have no result after the crawl; "
                         f"rerun the images stage")
    status_path = ctx.out_dir / "status.parquet"
    atomic.write_parquet(status_path, schemas.conform(status.to_arrow(), "image_status"))

    counts = Counter(status["status"].to_list())
    renditions = Counter(r or "image_url" for r, s in zip(status["rendition"].to_list(), status["status"].to_list())
                         if s == "ok")  # image_url: a node table without renditions
    http_hist = Counter(str(c) for c in status["http_status"].to_list() if c is not None)
    ok = counts.pop("ok", 0)
    stats: dict[str, Any] = {
        "status_counts": dict(sorted({**counts, "ok": ok}.items())),
        "http_status": dict(sorted(http_hist.items())),
        "success_rate": round(ok / nodes.height, 4) if nodes.height else 0.0,
        "renditions": dict(sorted(renditions.items())),
        "chunks": len(chunk_paths(chunks_dir)),
        "resumed_final": resumed,
        "this_run": crawl,
        "executor": crawl.pop("executor", None) or (executors.local_description() if ray_cfg.kind == "local"
                                                     else {"kind": "ray", "workers": 0, "tasks": 0}),
    }
    return StageResult(
        outputs={"status": status_path, "chunks": chunks_dir},
        counts=Counts(input=nodes.height, kept=ok, rejected=dict(sorted(counts.items()))),
        stats=stats,
        provenance={"user_agent": user_agent(ctx.cfg.http), "url_rewrite": [list(r) for r in
                                                                             ctx.opts.image_url_rewrite]},
    )


def _crawl(ctx: StageContext, jobs: list[CrawlJob], chunks_dir: Path) -> dict[str, Any]:
    """Run the crawler over `jobs`, streaming results into chunks; the buffer is kept even when interrupted."""
    settings = CrawlSettings.from_config(ctx.cfg.images, ctx.cfg.http)
    writer = ChunkWriter(chunks_dir, ctx.cfg.images.chunk_rows)
    bar = ctx.progress(total=len(jobs), desc="images", unit="img")
    done = Counter()

    def on_progress(result: CrawlResult) -> None:
        done["all"] += 1
        done["ok"] += result.status == "ok"
        bar.update(1)
        if done["all"] % PROGRESS_EVERY == 0 or done["all"] == len(jobs):
            bar.set_postfix(ok=f"{done['ok'] / done['all']:.1%}", refresh=False)

    crawler = Crawler(settings, ctx.cfg.http, ctx.opts.allow_hosts, ctx.opts.image_url_rewrite, on_progress)
    try:
        stats = asyncio.run(crawler.run(jobs, writer.add))
    finally:
        writer.flush()
        bar.close()
    out = stats.as_dict()
    out.update(workers=settings.workers, concurrency=settings.concurrency)
    ctx.log.info("images: %d results in %.1fs (%.1f images/s, %d ok)", stats.results, stats.elapsed_s,
                 out["images_per_s"], stats.status["ok"])
    return out


def _crawl_ray(ctx: StageContext, jobs: list[CrawlJob], chunks_dir: Path) -> dict[str, Any]:
    """The same crawl as Ray tasks over partitions of `jobs` (etl/imaging/distributed.py); the driver writes each
    partition's rows once, when its task completes, so a task rerun after a worker died leaves no duplicate."""
    import time

    from etl.imaging.distributed import (
        HostLimiter,
        ProgressBoard,
        crawl_partition,
        merge_stats,
        task_settings,
    )

    session = executors.connect(ctx.cfg.executor)
    ray = session.ray
    settings = task_settings(CrawlSettings.from_config(ctx.cfg.images, ctx.cfg.http), session.workers,
                             ctx.cfg.executor.task_cpus)
    limiter = ray.remote(num_cpus=0, max_restarts=-1)(HostLimiter).remote(ctx.cfg.images.per_host_rps)
    board = ray.remote(num_cpus=0)(ProgressBoard).remote()
    parts = executors.split(jobs, session.partitions(len(jobs)))
    task = session.remote(crawl_partition)
    shared = (ray.put(settings), ray.put(ctx.cfg.http), tuple(ctx.opts.allow_hosts),
              tuple(ctx.opts.image_url_rewrite), limiter, board)
    writer = ChunkWriter(chunks_dir, ctx.cfg.images.chunk_rows)
    bar = ctx.progress(total=len(jobs), desc=f"images (ray, {session.workers} workers)", unit="img")
    stats, written, ok = [], 0, 0
    started = time.perf_counter()

    def on_done(index: int, result: tuple[Any, Any]) -> None:
        nonlocal written, ok
        table, part_stats = result
        if table.num_rows != len(parts[index]):
            raise StageError(f"images: partition {index} returned {table.num_rows} rows for "
                             f"{len(parts[index])} nodes")
        writer.write_table(table)
        stats.append(part_stats)
        written += table.num_rows
        ok += part_stats.status["ok"]

    def on_poll() -> None:
        done, _ = ray.get(board.totals.remote())
        bar.n = max(written, min(done, len(jobs)))
        bar.set_postfix(ok=f"{ok / written:.1%}" if written else "-", refresh=False)
        bar.refresh()

    try:
        tasks = executors.run_tasks(session, task, ((i, part, *shared) for i, part in enumerate(parts)),
                                    on_done, on_poll)
        _, retried = ray.get(board.totals.remote())
    finally:
        bar.close()
        for actor in (limiter, board):
            ray.kill(actor)
    total = merge_stats(stats, time.perf_counter() - started)
    out = total.as_dict()
    out.update(workers=settings.workers, concurrency=settings.concurrency,
               executor=session.describe(tasks, retried))
    ctx.log.info("images: %d results in %.1fs on %d Ray workers (%.1f images/s, %d ok, %d task reruns)",
                 total.results, total.elapsed_s, session.workers, out["images_per_s"], total.status["ok"], retried)
    return out
