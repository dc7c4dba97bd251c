"""The one HTTP client every download uses: URL safety on every hop, timeouts, retries, byte caps, politeness.

Both clients (sync for `fetch` on httpx's own stack, async for `images` on `etl.net.transport`) connect through a
guard that resolves the host, refuses internal addresses (`etl.net.urlsafety`) and connects to exactly the addresses
it checked, so neither a redirect nor a DNS answer that changes between check and connect can reach 127.0.0.1 or
a metadata service.
Redirects are never followed by httpx: `send_checked` follows them itself, checking each hop and counting them.

Exceptions callers see: `BlockedURL` (refused; permanent), `UnresolvableHost` (DNS failure; a connect error),
`TooManyRedirects`, `TooLarge`, and httpx's `TransportError` family (`ConnectError`, `TimeoutException`,
`RemoteProtocolError` for a reset or a body shorter than its Content-Length, ...). Proxies are not supported:
the safety check must see the real destination.
"""
from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import http.cookiejar
import math
import random
import ssl
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import httpcore
import httpx

from etl.config import HttpConfig
from etl.net.transport import H1Transport
from etl.net.urlsafety import (
    BlockedURL,
    PassedHosts,
    UnresolvableHost,
    check_url,
    check_url_async,
    resolve_checked,
)

__all__ = [
    "BlockedURL", "PassedHosts", "UnresolvableHost", "TooLarge", "TooManyRedirects", "RetryPolicy", "HostThrottle",
    "user_agent", "parse_retry_after", "retry_after", "is_retriable", "sync_client", "async_client",
    "send_checked", "send_checked_async", "stream_checked", "stream_checked_async", "read_capped",
    "read_capped_async",
]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# 501 Not Implemented and 505 HTTP Version Not Supported describe the request, not a passing condition.
PERMANENT_5XX = frozenset({501, 505})


class TooLarge(Exception):
    """A body over the byte cap: announced by Content-Length (`declared`) or seen while streaming."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        how = f"Content-Length {declared}" if declared is not None else "body"
        super().__init__(f"{how} exceeds the cap of {limit} bytes")
        self.limit = limit
        self.declared = declared


class TooManyRedirects(Exception):
    """More than `max_redirects` hops; not an httpx error on purpose, so retry loops do not retry it."""

    def __init__(self, url: str, max_redirects: int) -> None:
        super().__init__(f"more than {max_redirects} redirects starting at {url}")
        self.url = url
        self.max_redirects = max_redirects


def user_agent(http_cfg: HttpConfig) -> str:
    """The User-Agent every request sends: identifies the tool and where to complain (from config)."""
    return http_cfg.user_agent.strip()


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP-date); None if absent or unparsable.

    A date in the past gives 0. `now` (timezone-aware) is for tests.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def retry_after(response: httpx.Response) -> float | None:
    """The response's Retry-After in seconds (None when absent)."""
    return parse_retry_after(response.headers.get("retry-after"))


def is_retriable(status: int) -> bool:
    """True for statuses worth retrying: 408, 425, 429 and 5xx except 501/505 (those will not change)."""
    return status in (408, 425, 429) or (500 <= status <= 599 and status not in PERMANENT_5XX)


class _BackoffConfig(Protocol):
    retries: int
    backoff_base_s: float
    backoff_max_s: float


@dataclass
class RetryPolicy:
    """How many times to retry and how long to wait before each retry.

    `delay(attempt)` for the attempt-th retry (1-based) is exponential backoff with full jitter: uniform in
    [0, min(max_s, base_s * 2**(attempt-1))], which spreads many clients' retries apart. A server's Retry-After
    wins over the backoff but is capped by `max_s`, so a server asking for an hour cannot stall a build; if it is
    still not ready, the retries run out and the caller reports the failure.
    """

    retries: int
    base_s: float
    max_s: float
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    @classmethod
    def from_config(cls, section: _BackoffConfig, rng: random.Random | None = None) -> RetryPolicy:
        """From a config section with `retries`, `backoff_base_s`, `backoff_max_s` (fetch, images)."""
        return cls(section.retries, section.backoff_base_s, section.backoff_max_s, rng or random.Random())

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_s)
        ceiling = min(self.max_s, self.base_s * 2.0 ** min(max(attempt - 1, 0), 62))
        return self.rng.uniform(0.0, ceiling)


# --- connection guard (sync client): every TCP connect goes to addresses urlsafety has checked ---------------

class _GuardedBackend(httpcore.NetworkBackend):
    def __init__(self, allow_hosts: Collection[str]) -> None:
        self._inner = httpcore.SyncBackend()
        self._allow = tuple(allow_hosts)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        try:
            addresses = resolve_checked(host, port, self._allow)
        except UnresolvableHost as exc:
            raise httpcore.ConnectError(str(exc)) from None
        last: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used by SLIP-kit downloads")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying context for every client (loading the CA bundle is slow, so it is done once)."""
    return httpx.create_ssl_context()


# httpx has no public hook for a network backend. Its transport does all its work through `self._pool`
# (httpx 0.23 - 0.28; pyproject pins httpx < 1), so this subclass builds that pool itself with the guard.
# tests/test_http.py fails if a future httpx stops honouring it (a refused address would then connect).

class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, allow_hosts: Collection[str], limits: httpx.Limits) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(allow_hosts))


def _timeout(http_cfg: HttpConfig) -> httpx.Timeout:
    """connect from config; read = longest silence allowed between bytes (a slow but live stream is fine)."""
    return httpx.Timeout(connect=http_cfg.connect_timeout_s, read=http_cfg.read_timeout_s,
                         write=http_cfg.read_timeout_s, pool=http_cfg.read_timeout_s)


class _NoCookies(http.cookiejar.CookieJar):
    """A jar that neither stores nor sends cookies: downloads are stateless, so a server cannot tie one request
    to the next, and httpx skips its per-response cookie parsing (5% of the crawler's event loop)."""

    def add_cookie_header(self, request: Any) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass


def sync_client(http_cfg: HttpConfig, allow_hosts: Collection[str] = (), max_connections: int = 10) -> httpx.Client:
    """A keep-alive client with config timeouts, the UA header, no automatic redirects, guarded connects, and
    no cookies."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                          keepalive_expiry=30.0)
    return httpx.Client(transport=_GuardedTransport(allow_hosts, limits), timeout=_timeout(http_cfg),
                        headers={"User-Agent": user_agent(http_cfg)}, follow_redirects=False, trust_env=False,
                        cookies=_NoCookies())


def async_client(http_cfg: HttpConfig, allow_hosts: Collection[str] = (),
                 max_connections: int = 64) -> httpx.AsyncClient:
    """The async twin of `sync_client`, on the crawler's own transport (`etl.net.transport`: the same guard, a
    fraction of the CPU per request); per-host limits and rates are `HostThrottle`'s job."""
    transport = H1Transport(allow_hosts, max_connections, keepalive_expiry_s=30.0, ssl_context=_ssl_context())
    return httpx.AsyncClient(transport=transport, timeout=_timeout(http_cfg),
                             headers={"User-Agent": user_agent(http_cfg)}, follow_redirects=False,
                             trust_env=False, cookies=_NoCookies())


def _next_hop(response: httpx.Response, method: str) -> tuple[str, str] | None:
    """(method, absolute URL) to go to next, or None when the response is final."""
    location = response.headers.get("location")
    if response.status_code not in REDIRECT_STATUSES or not location:
        return None
    url = str(response.url.join(location))
    if response.status_code == 303 and method != "HEAD":
        method = "GET"
    return method, url


def send_checked(client: httpx.Client, url: str, *, allow_hosts: Collection[str] = (), max_redirects: int = 5,
                 method: str = "GET", headers: Mapping[str, str] | None = None) -> httpx.Response:
    """Send a request and follow redirects, checking every hop's URL first; return the final response unread.

    The caller must close the response (or use `stream_checked`). Headers (e.g. Range) are kept on every hop.
    """
    hops, start = 0, url
    while True:
        check_url(url, allow_hosts)
        response = client.send(client.build_request(method, url, headers=headers), stream=True)
        nxt = _next_hop(response, method)
        if nxt is None:
            return response
        response.close()
        hops += 1
        if hops > max_redirects:
            raise TooManyRedirects(start, max_redirects)
        method, url = nxt


async def send_checked_async(client: httpx.AsyncClient, url: str, *, allow_hosts: Collection[str] = (),
                             max_redirects: int = 5, method: str = "GET", headers: Mapping[str, str] | None = None,
                             passed: PassedHosts | None = None) -> httpx.Response:
    """`send_checked` for the async client; `passed` remembers hosts that passed the check (`PassedHosts`)."""
    hops, start = 0, url
    while True:
        await check_url_async(url, allow_hosts, passed)
        response = await client.send(client.build_request(method, url, headers=headers), stream=True)
        nxt = _next_hop(response, method)
        if nxt is None:
            return response
        await response.aclose()
        hops += 1
        if hops > max_redirects:
            raise TooManyRedirects(start, max_redirects)
        method, url = nxt


@contextlib.contextmanager
def stream_checked(client: httpx.Client, url: str, **kw: Any) -> Iterator[httpx.Response]:
    """`with stream_checked(client, url, allow_hosts=..., max_redirects=...) as response:` (closed on exit)."""
    response = send_checked(client, url, **kw)
    try:
        yield response
    finally:
        response.close()


@contextlib.asynccontextmanager
async def stream_checked_async(client: httpx.AsyncClient, url: str, **kw: Any) -> AsyncIterator[httpx.Response]:
    """`async with stream_checked_async(client, url, ...) as response:` (closed on exit)."""
    response = await send_checked_async(client, url, **kw)
    try:
        yield response
    finally:
        await response.aclose()


def _declared_length(response: httpx.Response) -> int | None:
    try:
        value = int(response.headers.get("content-length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _check_declared(response: httpx.Response, max_bytes: int) -> None:
    declared = _declared_length(response)
    if declared is not None and declared > max_bytes:
        raise TooLarge(max_bytes, declared)


def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The (decoded) body, refusing more than `max_bytes`: by Content-Length before reading, or mid-stream.

    The streaming check also catches a Content-Encoding bomb, since it counts decoded bytes.
    """
    _check_declared(response, max_bytes)
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise TooLarge(max_bytes)
    return bytes(body)


async def read_capped_async(response: httpx.Response, max_bytes: int) -> bytes:
    """`read_capped` for a response of the async client."""
    _check_declared(response, max_bytes)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise TooLarge(max_bytes)
    return bytes(body)


class HostThrottle:
    """Per-host politeness for the async crawler: at most `concurrency` requests in flight per host, at most
    `rps` request starts per second per host (0 = unlimited), and a host-wide pause after a 429/503 Retry-After.

    `async with throttle.slot(host): ...` around each request; `throttle.pause(host, seconds)` on Retry-After.
    """

    def __init__(self, concurrency: int, rps: float = 0.0) -> None:
        if concurrency < 1 or rps < 0:
            raise ValueError("HostThrottle needs concurrency >= 1 and rps >= 0")
        self._concurrency = concurrency
        self._interval = 1.0 / rps if rps > 0 else 0.0
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._next_start: dict[str, float] = {}

    def pause(self, host: str, seconds: float) -> None:
        """No new request to `host` starts in the next `seconds`."""
        now = asyncio.get_running_loop().time()
        self._next_start[host] = max(self._next_start.get(host, now), now + max(seconds, 0.0))

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        semaphore = self._slots.setdefault(host, asyncio.Semaphore(self._concurrency))
        async with semaphore:
            loop = asyncio.get_running_loop()
            now = loop.time()
            start = max(now, self._next_start.get(host, now))
            self._next_start[host] = start + self._interval
            if start > now:
                await asyncio.sleep(start - now)
            yield

