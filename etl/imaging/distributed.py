"""The image crawl as Ray tasks: one partition of the to-do nodes per task, one rate limiter for the whole cluster.

- `crawl_partition` runs the ordinary crawler (`etl.imaging.crawler` + its decode workers) over its jobs and
  *returns* the result rows as one Arrow table in the chunk schema; it writes nothing. The driver writes the table
  with the chunk writer when the task has completed, so a task that dies (and is rerun by Ray) leaves no half chunk
  and no duplicate, and workers need no shared filesystem.
- `HostLimiter` is a Ray actor every task's throttle asks for each request's start time: per-host request rates
  (`images.per_host_rps`) and Retry-After pauses then hold for the cluster, not per worker. The per-host
  concurrency is split between the tasks that run at once (each gets its share as local slots), so it also holds
  for the cluster without permits a dead task could leak. With no rate limit the actor is not asked at all
  (one RPC per request is not free), and a Retry-After pause then applies to the task that saw it.
- `ProgressBoard` is a Ray actor the tasks report their done count to (per partition, so a rerun task overwrites
  its count instead of adding to it); the driver reads it for the one progress bar of the cluster.

`ray` is imported only inside a running task: the driver wraps these plain classes and functions with
`ray.remote`.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pyarrow as pa

from etl.config import HttpConfig
from etl.imaging.chunks import results_table
from etl.imaging.crawler import Crawler, CrawlJob, CrawlResult, CrawlSettings, CrawlStats
from etl.net.http import HostThrottle

REPORT_EVERY = 16  # results between a task's progress reports


class HostLimiter:
    """Ray actor: hands out per-host request start times at most `rps` per second across every task."""

    def __init__(self, rps: float) -> None:
        self._interval = 1.0 / rps if rps > 0 else 0.0
        self._next_start: dict[str, float] = {}
        self.granted = 0

    async def reserve(self, host: str) -> float:
        """Seconds the caller must wait before starting its request to `host` (0 = now)."""
        now = asyncio.get_running_loop().time()
        start = max(now, self._next_start.get(host, now))
        self._next_start[host] = start + self._interval
        self.granted += 1
        return start - now

    async def pause(self, host: str, seconds: float) -> None:
        """No request to `host` starts anywhere in the cluster in the next `seconds` (a Retry-After)."""
        now = asyncio.get_running_loop().time()
        self._next_start[host] = max(self._next_start.get(host, now), now + max(seconds, 0.0))

    async def count(self) -> int:
        return self.granted


class ClusterThrottle:
    """HostThrottle's interface for a task: local slots for its share of the per-host concurrency, start times from
    the cluster's `HostLimiter`."""

    def __init__(self, limiter: Any, concurrency: int) -> None:
        self._limiter = limiter
        self._local = HostThrottle(concurrency)  # concurrency only; the rate is the limiter's

    def pause(self, host: str, seconds: float) -> None:
        self._limiter.pause.remote(host, seconds)  # fire and forget, as HostThrottle.pause does not wait

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        async with self._local.slot(host):
            delay = await self._limiter.reserve.remote(host)
            if delay > 0:
                await asyncio.sleep(delay)
            yield


class ProgressBoard:
    """Ray actor: results done per partition and task starts (a start beyond the first per partition is a retry)."""

    def __init__(self) -> None:
        self.done: dict[int, int] = {}
        self.starts: dict[int, int] = {}

    def started(self, partition: int) -> None:
        self.starts[partition] = self.starts.get(partition, 0) + 1
        self.done[partition] = 0

    def report(self, partition: int, n: int) -> None:
        self.done[partition] = n

    def totals(self) -> tuple[int, int]:
        """(results done over all partitions, task reruns)."""
        return sum(self.done.values()), sum(max(0, s - 1) for s in self.starts.values())


def task_settings(settings: CrawlSettings, tasks_at_once: int, task_cpus: float) -> CrawlSettings:
    """A task's share: decode processes for its CPUs, per-host slots so that all tasks together stay within the
    configured per-host concurrency."""
    return dataclasses.replace(settings, workers=max(1, int(task_cpus)),
                               per_host_concurrency=max(1, settings.per_host_concurrency // max(1, tasks_at_once)))


def ray_get(ref: Any) -> Any:
    import ray  # only ever called inside a Ray task, where Ray is importable

    return ray.get(ref)


def crawl_partition(partition: int, jobs: Sequence[CrawlJob], settings: CrawlSettings, http_cfg: HttpConfig,
                    allow_hosts: Sequence[str], rewrites: Sequence[tuple[str, str]], limiter: Any,
                    board: Any) -> tuple[pa.Table, CrawlStats]:
    """Ray task: crawl `jobs`, return (their result rows as a chunk table, the crawl's stats); writes nothing."""
    ray_get(board.started.remote(partition))  # counted before any work, so a rerun after a kill is always seen
    rows: list[CrawlResult] = []

    async def keep(result: CrawlResult) -> None:
        rows.append(result)

    def on_progress(_: CrawlResult) -> None:
        if len(rows) % REPORT_EVERY == 0:
            board.report.remote(partition, len(rows))

    throttle = ClusterThrottle(limiter, settings.per_host_concurrency) if settings.per_host_rps > 0 else None
    crawler = Crawler(settings, http_cfg, allow_hosts, rewrites, on_progress, throttle=throttle)
    stats = asyncio.run(crawler.run(jobs, keep))
    board.report.remote(partition, len(rows))
    return results_table(rows), stats


def merge_stats(parts: Sequence[CrawlStats], elapsed_s: float) -> CrawlStats:
    """One CrawlStats for the whole cluster (sums; timing samples pooled; the driver's wall time)."""
    total = CrawlStats()
    for part in parts:
        total.results += part.results
        total.requests += part.requests
        total.retries += part.retries
        total.bytes_downloaded += part.bytes_downloaded
        total.jpeg_bytes += part.jpeg_bytes
        total.status.update(part.status)
        total.worker_restarts += part.worker_restarts
        total.rendition_fallbacks += part.rendition_fallbacks
        total.renditions.update(part.renditions)
        for value in part.fetch_s.values:
            total.fetch_s.append(value)
        for value in part.process_s.values:
            total.process_s.append(value)
    total.elapsed_s = elapsed_s
    return total
