"""The async image crawler: many downloads in flight on one event loop, decoding on every core.

How network and CPU work overlap (so both cores stay busy on a 2-core machine):
- `concurrency` coroutines share one job iterator. Each takes a job, downloads it (holding a per-host slot only
  while the request is open), hands the bytes to one of `workers` decode processes (`etl.imaging.workers`), awaits the
  JPEG, and takes the next job. While some coroutines wait on a worker, the others keep downloading, so the
  workers never run dry; and since a coroutine holds its body until a worker is done with it, at most
  `concurrency` bodies are in memory and downloads slow down by themselves when decoding is the bottleneck (no
  unbounded queue anywhere).
- The event loop (HTTP, bookkeeping) is the only thing running in the crawler's process, beside the workers;
  chunk files are written by the caller's sink in a short-lived thread.
- All requests go through one httpx client on `etl.net.transport` (keep-alive HTTP/1.1 on asyncio protocols), whose
  per-request cost does not grow with the number of connections.

Renditions: a job may list several URLs of one image (`CrawlJob.renditions`, smallest covering first: see
`etl.imaging.renditions`). The crawler downloads the first; when its decoded shorter side is below `shorter_side`
it moves on to the next (counted as `rendition_fallbacks`), and the result row names the rendition it kept. Any
other outcome (an HTTP error, a broken body) ends the job with that outcome, as for a single URL, except after a
too-small image: then that smaller image is kept (it is still usable, only below `shorter_side`).

Every await is bounded: a request attempt has httpx's connect/read timeouts *and* a total deadline (connect +
read timeout) against slow-drip servers; backoff sleeps are capped by `backoff_max_s` (Retry-After included).
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx

from etl.config import HttpConfig, ImagesConfig
from etl.imaging.process import ImageRejected
from etl.imaging.workers import ImageWorkers
from etl.net.http import (
    BlockedURL,
    HostThrottle,
    PassedHosts,
    RetryPolicy,
    TooLarge,
    TooManyRedirects,
    UnresolvableHost,
    async_client,
    is_retriable,
    read_capped_async,
    retry_after,
    send_checked_async,
)

# X-Robots-Tag directives that opt an image out of (AI) dataset use.
OPTOUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "none"})
TIMING_SAMPLES = 10_000  # timings kept for the percentiles in the stats (a uniform sample of all of them)
# Statuses always worth another try: the server or the path to it failed, not the image. An empty 200 body is one
# (a server restarting, a file being rewritten), never `not_image`.
RETRIABLE_STATUSES = frozenset({"timeout", "connect_error", "empty_body"})
# Content types that are certainly not an image body (error pages, API errors); anything else is judged by bytes.
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml+xml", "application/problem")


if sys.version_info >= (3, 11):
    async def _within(awaitable: Awaitable[Any], seconds: float) -> Any:
        """`await` with a deadline; `asyncio.timeout` avoids the extra task `wait_for` creates per request."""
        async with asyncio.timeout(seconds):
            return await awaitable
else:
    _within = asyncio.wait_for


@dataclass(frozen=True)
class CrawlJob:
    node_id: int
    asin: str
    url: str | None         # as in the node table (recorded as is; rewrites apply only to the request)
    prior_attempts: int = 0  # attempts made by earlier runs (resume)
    renditions: tuple[tuple[str, str], ...] = ()  # (name, url) to try in order; empty: `url` alone


@dataclass
class CrawlResult:
    """One row of the image status table (plus the JPEG for ok rows)."""

    node_id: int
    asin: str
    url: str | None
    status: str
    attempts: int
    fetched_at: str
    rendition: str | None = None
    http_status: int | None = None
    error: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    jpeg: bytes | None = None


@dataclass(frozen=True)
class CrawlSettings:
    concurrency: int
    per_host_concurrency: int
    per_host_rps: float
    retry: RetryPolicy
    max_bytes: int
    max_pixels: int
    shorter_side: int
    resize_mode: str
    jpeg_quality: int
    workers: int
    respect_robots: bool
    max_redirects: int
    deadline_s: float

    @classmethod
    def from_config(cls, images: ImagesConfig, http: HttpConfig) -> CrawlSettings:
        return cls(
            concurrency=images.concurrency, per_host_concurrency=images.per_host_concurrency,
            per_host_rps=images.per_host_rps, retry=RetryPolicy.from_config(images), max_bytes=images.max_bytes,
            max_pixels=images.max_pixels, shorter_side=images.shorter_side, resize_mode=images.resize_mode,
            jpeg_quality=images.jpeg_quality, workers=images.workers or available_cpus(),
            respect_robots=images.respect_robots, max_redirects=http.max_redirects,
            deadline_s=http.connect_timeout_s + http.read_timeout_s)


class Reservoir:
    """A uniform random sample of at most `capacity` values (bounded memory for a million-image crawl)."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.values: list[float] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def append(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.capacity:
            self.values.append(value)
        elif (slot := self._rng.randrange(self.seen)) < self.capacity:
            self.values[slot] = value


@dataclass
class CrawlStats:
    """What one crawl did, for the stage's stats (JSON-able via `as_dict`)."""

    results: int = 0
    requests: int = 0
    retries: int = 0
    bytes_downloaded: int = 0
    jpeg_bytes: int = 0
    status: Counter = field(default_factory=Counter)
    fetch_s: Reservoir = field(default_factory=lambda: Reservoir(TIMING_SAMPLES))
    process_s: Reservoir = field(default_factory=lambda: Reservoir(TIMING_SAMPLES))
    worker_restarts: int = 0
    rendition_fallbacks: int = 0
    renditions: Counter = field(default_factory=Counter)  # rendition of each ok result
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        rate = self.results / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return {
            "results": self.results, "requests": self.requests, "retries": self.retries,
            "status": dict(sorted(self.status.items())), "bytes_downloaded": self.bytes_downloaded,
            "jpeg_bytes": self.jpeg_bytes, "elapsed_s": round(self.elapsed_s, 3),
            "images_per_s": round(rate, 2),
            "ok_per_s": round(self.status["ok"] / self.elapsed_s, 2) if self.elapsed_s > 0 else 0.0,
            "fetch_s": percentiles(self.fetch_s.values), "process_s": percentiles(self.process_s.values),
            "worker_restarts": self.worker_restarts, "rendition_fallbacks": self.rendition_fallbacks,
            "renditions": dict(sorted(self.renditions.items())),
        }


def available_cpus() -> int:
    """CPUs this process may run on (affinity/cgroup-aware where the OS says so)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(pick(0.5), 4), "p90": round(pick(0.9), 4), "p99": round(pick(0.99), 4),
            "max": round(ordered[-1], 4)}


def rewrite_url(url: str, rewrites: Iterable[tuple[str, str]]) -> str:
    """Apply the first (prefix, replacement) that matches: mirrors and the sample's loopback server."""
    for prefix, replacement in rewrites:
        if url.startswith(prefix):
            return replacement + url[len(prefix):]
    return url


def robots_optout(headers: httpx.Headers, agent_token: str = "slip-kit") -> str | None:
    """The opt-out directive in X-Robots-Tag that applies to us (unscoped or scoped to our agent), or None."""
    for value in headers.get_list("x-robots-tag"):
        scope, sep, rest = value.partition(":")
        directives = value
        if sep and scope.strip().lower() not in OPTOUT_DIRECTIVES and " " not in scope.strip():
            if scope.strip().lower() != agent_token:
                continue  # "otherbot: noindex" is not addressed to us
            directives = rest
        for directive in directives.split(","):
            if directive.strip().lower() in OPTOUT_DIRECTIVES:
                return directive.strip().lower()
    return None


@dataclass
class _Attempt:
    """The outcome of one request attempt."""

    status: str
    http_status: int | None = None
    error: str | None = None
    body: bytes | None = None
    retry_after: float | None = None

    @property
    def retriable(self) -> bool:
        if self.status in RETRIABLE_STATUSES:
            return True
        return self.status == "http_error" and self.http_status is not None and is_retriable(self.http_status)


class Crawler:
    """Downloads and processes jobs; `run(jobs, sink)` calls `await sink(result)` once per job."""

    def __init__(self, settings: CrawlSettings, http_cfg: HttpConfig, allow_hosts: Sequence[str] = (),
                 rewrites: Sequence[tuple[str, str]] = (),
                 on_progress: Callable[[CrawlResult], None] | None = None, throttle: Any = None) -> None:
        self.settings = settings
        self.http_cfg = http_cfg
        self.allow_hosts = tuple(allow_hosts)
        self.rewrites = tuple(rewrites)
        self.on_progress = on_progress
        self.stats = CrawlStats()
        # `throttle`: anything with HostThrottle's slot()/pause(), e.g. the cluster-wide one of a Ray task
        self._throttle = throttle or HostThrottle(settings.per_host_concurrency, settings.per_host_rps)
        self._passed = PassedHosts()  # one DNS check per host and minute, not per image

    async def run(self, jobs: Iterable[CrawlJob], sink: Callable[[CrawlResult], Awaitable[None]]) -> CrawlStats:
        started = time.perf_counter()
        workers = ImageWorkers(self.settings.workers, shorter_side=self.settings.shorter_side,
                               mode=self.settings.resize_mode, quality=self.settings.jpeg_quality,
                               max_pixels=self.settings.max_pixels)
        try:
            await workers.start()
            async with async_client(self.http_cfg, self.allow_hosts, self.settings.concurrency) as client:
                queue = iter(jobs)  # shared by the coroutines; next() never yields to the loop, so no job twice
                tasks = [asyncio.create_task(self._worker(queue, client, workers, sink))
                         for _ in range(self.settings.concurrency)]
                try:
                    await asyncio.gather(*tasks)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self.stats.worker_restarts = workers.restarts
            await workers.close()
            self.stats.elapsed_s = time.perf_counter() - started
        return self.stats

    async def _worker(self, queue: Iterable[CrawlJob], client: httpx.AsyncClient, workers: ImageWorkers,
                      sink: Callable[[CrawlResult], Awaitable[None]]) -> None:
        for job in queue:
            result = await self._one(job, client, workers)
            self.stats.results += 1
            self.stats.status[result.status] += 1
            await sink(result)
            if self.on_progress is not None:
                self.on_progress(result)

    async def _one(self, job: CrawlJob, client: httpx.AsyncClient, workers: ImageWorkers) -> CrawlResult:
        candidates = job.renditions or ((None, job.url),)
        if not candidates[0][1] or not candidates[0][1].strip():
            return self._row(job, None, job.url, "no_url", 0, error="the node has no image URL")
        attempts, kept = 0, None
        for index, (rendition, listed) in enumerate(candidates):
            result = await self._fetch(job, rendition, listed, attempts, client, workers)
            attempts = result.attempts - job.prior_attempts
            if result.status != "ok":
                if kept is not None:  # a larger rendition failed: the smaller image is still a usable one
                    result = dataclasses.replace(kept, attempts=result.attempts)
                break
            kept = result
            if index == len(candidates) - 1 or min(result.width or 0, result.height or 0) >= self.settings.shorter_side:
                break
            self.stats.rendition_fallbacks += 1  # too small for shorter_side: the next, larger rendition
        if result.status == "ok":
            self.stats.renditions[result.rendition or "image_url"] += 1
        return result

    def _row(self, job: CrawlJob, rendition: str | None, url: str | None, status: str, attempts: int,
             **kw: Any) -> CrawlResult:
        return CrawlResult(node_id=job.node_id, asin=job.asin, url=url, rendition=rendition, status=status,
                           attempts=job.prior_attempts + attempts,
                           fetched_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), **kw)

    async def _fetch(self, job: CrawlJob, rendition: str | None, listed: str, attempts: int,
                     client: httpx.AsyncClient, workers: ImageWorkers) -> CrawlResult:
        """Download and process one URL of the job (with retries); `attempts` made for the job so far."""
        def row(status: str, attempts: int, **kw: Any) -> CrawlResult:
            return self._row(job, rendition, listed, status, attempts, **kw)

        url = rewrite_url(listed.strip(), self.rewrites)
        host = urlsplit(url).hostname or ""
        first = attempts
        while True:
            attempts += 1
            outcome = await self._attempt(client, url, host)
            if not outcome.retriable or attempts - first > self.settings.retry.retries:
                break
            self.stats.retries += 1
            delay = self.settings.retry.delay(attempts - first, outcome.retry_after)
            if outcome.retry_after is not None:
                self._throttle.pause(host, delay)  # the host asked everyone to wait, not just this request
            await asyncio.sleep(delay)
        if outcome.body is None:
            return row(outcome.status, attempts, http_status=outcome.http_status, error=outcome.error)
        self.stats.bytes_downloaded += len(outcome.body)
        t0 = time.perf_counter()
        try:
            image = await workers.process(outcome.body)
        except ImageRejected as exc:
            return row(exc.status, attempts, http_status=outcome.http_status, error=exc.message[:500],
                       bytes=len(outcome.body))
        finally:
            self.stats.process_s.append(time.perf_counter() - t0)
        self.stats.jpeg_bytes += len(image.jpeg)
        return row("ok", attempts, http_status=outcome.http_status, bytes=image.bytes, sha256=image.sha256,
                   width=image.width, height=image.height, jpeg=image.jpeg)

    async def _attempt(self, client: httpx.AsyncClient, url: str, host: str) -> _Attempt:
        async with self._throttle.slot(host):
            self.stats.requests += 1
            t0 = time.perf_counter()
            try:
                return await _within(self._request(client, url), self.settings.deadline_s)
            except BlockedURL as exc:
                return _Attempt("blocked_url", error=exc.reason)
            except httpx.InvalidURL as exc:
                return _Attempt("blocked_url", error=f"invalid URL: {exc}")
            except TooLarge as exc:
                return _Attempt("too_large", error=str(exc))
            except TooManyRedirects as exc:
                return _Attempt("http_error", error=str(exc))
            except UnresolvableHost as exc:
                return _Attempt("connect_error", error=str(exc))
            except asyncio.TimeoutError:
                return _Attempt("timeout", error=f"no complete response within {self.settings.deadline_s:g}s")
            except httpx.TimeoutException as exc:
                return _Attempt("timeout", error=f"{type(exc).__name__}: {exc}"[:500])
            except httpx.TransportError as exc:
                return _Attempt("connect_error", error=f"{type(exc).__name__}: {exc}"[:500])
            finally:
                self.stats.fetch_s.append(time.perf_counter() - t0)

    async def _request(self, client: httpx.AsyncClient, url: str) -> _Attempt:
        response = await send_checked_async(client, url, allow_hosts=self.allow_hosts,
                                            max_redirects=self.settings.max_redirects, passed=self._passed)
        try:
            code = response.status_code
            if code != 200:
                return _Attempt("http_error", http_status=code, error=f"HTTP {code} {response.reason_phrase}",
                                retry_after=retry_after(response) if code in (429, 503) else None)
            if self.settings.respect_robots and (directive := robots_optout(response.headers)):
                return _Attempt("robots_optout", http_status=code, error=f"X-Robots-Tag: {directive}")
            ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype.startswith(_TEXT_TYPES):
                return _Attempt("not_image", http_status=code, error=f"Content-Type {ctype}")
            body = await read_capped_async(response, self.settings.max_bytes)
            if not body:
                return _Attempt("empty_body", http_status=code, error=f"HTTP {code} with an empty body")
            return _Attempt("ok", http_status=code, body=body)
        finally:
            await response.aclose()
