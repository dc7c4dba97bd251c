"""The shared HTTP client against real loopback servers: guarded connects, redirects, caps, retry maths."""
from __future__ import annotations

import asyncio
import gzip
import random
import selectors
import socket
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from etl.config import load_config
from etl.net import http, urlsafety
from etl.net.http import (
    BlockedURL,
    HostThrottle,
    RetryPolicy,
    TooLarge,
    TooManyRedirects,
    is_retriable,
    parse_retry_after,
    read_capped,
    read_capped_async,
    stream_checked,
    stream_checked_async,
)
from helpers.servers import Cut, FaultServer, Redirect, Serve, Stall, Status

LOCAL = ("127.0.0.1",)
BODY = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture(scope="module")
def cfg():
    return load_config(overrides=["http.read_timeout_s=0.5", "http.connect_timeout_s=2", "http.max_redirects=3"])


@pytest.fixture(scope="module")
def server():
    routes = {
        "/body": Serve(BODY, etag='"v1"'),
        "/hop1": Redirect("/hop2", 301),
        "/hop2": Redirect("/body", 307),
        "/loop": Redirect("/loop"),
        "/to-metadata": Redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-localhost": Redirect("http://localhost:1/x"),
        "/bomb": Serve(gzip.compress(b"\0" * 5_000_000), headers={"Content-Encoding": "gzip"}),
        "/reset": Cut(BODY, after=1000),
        "/short": Cut(BODY, after=1000, reset=False),
        "/stall": Stall(5.0),
        "/teapot": Status(418, body=b"short and stout"),
        "/cookie": Serve(b"tracked", headers={"Set-Cookie": "session=abc123; Path=/"}),
    }
    with FaultServer(routes) as s:
        yield s


def test_user_agent_and_plain_get(cfg, server) -> None:
    with http.sync_client(cfg.http, LOCAL) as client, stream_checked(client, server.url("/body"),
                                                                      allow_hosts=LOCAL) as r:
        assert r.status_code == 200 and read_capped(r, len(BODY)) == BODY
    assert server.hits("/body")[-1].headers["user-agent"] == http.user_agent(cfg.http) == cfg.http.user_agent


def test_redirects_are_followed_with_headers_kept(cfg, server) -> None:
    server.clear_log()
    with http.sync_client(cfg.http, LOCAL) as client, stream_checked(
            client, server.url("/hop1"), allow_hosts=LOCAL, max_redirects=2,
            headers={"Range": "bytes=100-"}) as r:
        assert r.status_code == 206 and r.read() == BODY[100:]
        assert str(r.url) == server.url("/body")
    assert [(q.path, q.range) for q in server.requests] == [
        ("/hop1", "bytes=100-"), ("/hop2", "bytes=100-"), ("/body", "bytes=100-")]


def test_redirect_limit(cfg, server) -> None:
    with http.sync_client(cfg.http, LOCAL) as client:
        with pytest.raises(TooManyRedirects, match="more than 3 redirects"):
            http.send_checked(client, server.url("/loop"), allow_hosts=LOCAL, max_redirects=3)
        with pytest.raises(TooManyRedirects):
            http.send_checked(client, server.url("/hop1"), allow_hosts=LOCAL, max_redirects=1)
    assert len(server.hits("/loop")) == 4  # the first request + 3 followed redirects, then it stops


@pytest.mark.parametrize(("path", "reason"), [("/to-metadata", "cloud metadata address 169.254.169.254"),
                                              ("/to-localhost", "host resolves to loopback address")])
def test_redirect_to_refused_address_is_blocked(cfg, server, path: str, reason: str) -> None:
    with http.sync_client(cfg.http, LOCAL) as client:
        with pytest.raises(BlockedURL) as info:
            http.send_checked(client, server.url(path), allow_hosts=LOCAL)
    assert reason in info.value.reason and info.value.url != server.url(path)

    async def go() -> None:
        async with http.async_client(cfg.http, LOCAL) as client:
            async with stream_checked_async(client, server.url(path), allow_hosts=LOCAL):
                pass

    with pytest.raises(BlockedURL, match=reason):
        asyncio.run(go())


def test_client_refuses_unallowed_addresses_even_without_check_url(cfg, server) -> None:
    """The guard sits at connect time: a plain client.get to a refused address never connects."""
    server.clear_log()
    with http.sync_client(cfg.http) as client:
        with pytest.raises(BlockedURL, match="loopback address 127.0.0.1"):
            client.get(server.url("/body"))
    with http.sync_client(cfg.http, LOCAL) as client:  # allowing 127.0.0.1 does not allow "localhost"
        with pytest.raises(BlockedURL, match="host resolves to loopback"):
            client.get(server.url("/body").replace("127.0.0.1", "localhost"))

    async def go() -> None:
        async with http.async_client(cfg.http) as client:
            await client.get(server.url("/body"))

    with pytest.raises(BlockedURL):
        asyncio.run(go())
    assert server.requests == []


def _rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """rebind.example resolves to a public address once, then to 127.0.0.1 (the resolver is the input here)."""
    answers = iter(["93.184.215.14", "127.0.0.1", "127.0.0.1"])
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kw):  # type: ignore[no-untyped-def]
        if host == "rebind.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(urlsafety.socket, "getaddrinfo", getaddrinfo)


def test_dns_rebinding_is_closed(cfg, server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that is public when checked and loopback when connecting is refused at connect."""
    _rebinding_dns(monkeypatch)
    server.clear_log()
    with http.sync_client(cfg.http, LOCAL) as client:
        with pytest.raises(BlockedURL, match="host resolves to loopback address 127.0.0.1"):
            http.send_checked(client, f"http://rebind.example:{server.port}/body", allow_hosts=LOCAL)
    assert server.requests == []


def test_dns_rebinding_is_closed_for_a_host_the_crawler_remembers_as_passed(cfg, server, monkeypatch) -> None:
    """The crawler skips the pre-check for a host that passed recently; the connect-time check still refuses."""
    _rebinding_dns(monkeypatch)
    passed = urlsafety.PassedHosts()
    url = f"http://rebind.example:{server.port}/body"
    asyncio.run(urlsafety.check_url_async(url, passed=passed))  # public now: remembered

    async def go() -> None:
        async with http.async_client(cfg.http, LOCAL) as client:
            await http.send_checked_async(client, url, allow_hosts=LOCAL, passed=passed)

    server.clear_log()
    with pytest.raises(BlockedURL, match="loopback address 127.0.0.1"):
        asyncio.run(go())
    assert server.requests == []


def test_byte_cap(cfg, server) -> None:
    with http.sync_client(cfg.http, LOCAL) as client:
        with stream_checked(client, server.url("/body"), allow_hosts=LOCAL) as r:
            assert read_capped(r, len(BODY)) == BODY  # exactly at the cap is fine
        with stream_checked(client, server.url("/body"), allow_hosts=LOCAL) as r:
            with pytest.raises(TooLarge) as info:
                read_capped(r, len(BODY) - 1)
        assert info.value.declared == len(BODY)
        with stream_checked(client, server.url("/bomb"), allow_hosts=LOCAL) as r:
            assert int(r.headers["content-length"]) < 100_000
            with pytest.raises(TooLarge) as info:  # small on the wire, huge decoded: stopped while streaming
                read_capped(r, 1_000_000)
        assert info.value.declared is None and info.value.limit == 1_000_000

    async def go() -> None:
        async with http.async_client(cfg.http, LOCAL) as client:
            async with stream_checked_async(client, server.url("/bomb"), allow_hosts=LOCAL) as r:
                await read_capped_async(r, 1_000_000)

    with pytest.raises(TooLarge):
        asyncio.run(go())


def test_transport_faults_surface_as_httpx_errors(cfg, server) -> None:
    with http.sync_client(cfg.http, LOCAL) as client:
        with pytest.raises(httpx.ReadError):
            with stream_checked(client, server.url("/reset"), allow_hosts=LOCAL) as r:
                r.read()
        with pytest.raises(httpx.RemoteProtocolError, match="received 1000 bytes"):
            with stream_checked(client, server.url("/short"), allow_hosts=LOCAL) as r:
                r.read()
        assert client.timeout.read == cfg.http.read_timeout_s == 0.5
        with pytest.raises(httpx.ReadTimeout):  # the server stays silent for 5 s: the 0.5 s read timeout fires
            http.send_checked(client, server.url("/stall"), allow_hosts=LOCAL)
        with stream_checked(client, server.url("/teapot"), allow_hosts=LOCAL) as r:
            assert r.status_code == 418 and not is_retriable(r.status_code)


def test_async_client_get(cfg, server) -> None:
    async def go() -> list[bytes]:
        async with http.async_client(cfg.http, LOCAL, max_connections=4) as client:
            async def one(path: str) -> bytes:
                async with stream_checked_async(client, server.url(path), allow_hosts=LOCAL) as r:
                    return await read_capped_async(r, 1 << 20)
            return await asyncio.gather(*(one("/hop1") for _ in range(8)))

    assert asyncio.run(go()) == [BODY] * 8


def test_clients_neither_store_nor_send_cookies(cfg, server) -> None:
    server.clear_log()
    with http.sync_client(cfg.http, LOCAL) as client:
        for _ in range(2):
            with stream_checked(client, server.url("/cookie"), allow_hosts=LOCAL) as r:
                assert r.headers["set-cookie"].startswith("session=") and read_capped(r, 100) == b"tracked"
        assert not client.cookies

    async def twice() -> None:
        async with http.async_client(cfg.http, LOCAL) as client:
            for _ in range(2):
                async with stream_checked_async(client, server.url("/cookie"), allow_hosts=LOCAL) as r:
                    assert await read_capped_async(r, 100) == b"tracked"
            assert not client.cookies

    asyncio.run(twice())
    hits = server.hits("/cookie")
    assert len(hits) == 4 and all("cookie" not in hit.headers for hit in hits)


def test_parse_retry_after() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90.0
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now=now) == 0.0  # in the past: go now
    for bad in (None, "", "  ", "-5", "soon", "nan", "inf", "Wed, 99 Foo 2024"):
        assert parse_retry_after(bad, now=now) is None, bad


def test_retry_policy_bounds() -> None:
    policy = RetryPolicy(retries=6, base_s=0.5, max_s=10.0, rng=random.Random(1))
    for attempt in range(1, 12):
        ceiling = min(10.0, 0.5 * 2 ** (attempt - 1))
        samples = [policy.delay(attempt) for _ in range(300)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling and min(samples) < 0.2 * ceiling  # full jitter spreads
    assert policy.delay(10_000) <= 10.0  # no overflow for absurd attempts
    assert policy.delay(1, retry_after=7.0) == 7.0  # Retry-After wins over the backoff ...
    assert policy.delay(1, retry_after=3600.0) == 10.0  # ... capped by max_s
    assert policy.delay(3, retry_after=0.0) == 0.0
    a, b = RetryPolicy(3, 1.0, 5.0, rng=random.Random(7)), RetryPolicy(3, 1.0, 5.0, rng=random.Random(7))
    assert [a.delay(i) for i in range(1, 5)] == [b.delay(i) for i in range(1, 5)]
    fetch = RetryPolicy.from_config(load_config().fetch)
    assert (fetch.retries, fetch.base_s, fetch.max_s) == (6, 1.0, 60.0)


@pytest.mark.parametrize(("status", "retriable"), [
    (200, False), (301, False), (400, False), (403, False), (404, False), (408, True), (425, True), (429, True),
    (500, True), (501, False), (502, True), (503, True), (504, True), (505, False), (599, True)])
def test_is_retriable(status: int, retriable: bool) -> None:
    assert is_retriable(status) is retriable


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when every task waits on a timer, and then jumps to the next timer:
    HostThrottle reads the loop's clock and sleeps on it, so its schedule is exact and takes no wall time."""

    def __init__(self) -> None:
        self.now = 0.0
        loop = self

        class Selector(selectors.DefaultSelector):
            def select(self, timeout: float | None = None):  # type: ignore[no-untyped-def]
                events = super().select(None if timeout is None else 0)
                if not events and timeout:
                    loop.now += timeout
                return events

        super().__init__(Selector())

    def time(self) -> float:
        return self.now


def run_virtual(coro):  # type: ignore[no-untyped-def]
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_host_throttle_spaces_starts_by_the_rate() -> None:
    async def go() -> list[float]:
        throttle, starts = HostThrottle(concurrency=2, rps=20.0), []

        async def one() -> None:
            async with throttle.slot("a.example"):
                starts.append(asyncio.get_running_loop().time())
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one() for _ in range(6)))
        return starts

    assert run_virtual(go()) == pytest.approx([0.0, 0.05, 0.10, 0.15, 0.20, 0.25])  # one start per 1/20 s


def test_host_throttle_bounds_concurrency_per_host() -> None:
    async def go() -> tuple[dict[str, int], list[float]]:
        throttle = HostThrottle(concurrency=2)  # no rate limit
        in_flight: dict[str, int] = {}
        peak: dict[str, int] = {}
        starts: list[float] = []

        async def one(host: str) -> None:
            async with throttle.slot(host):
                in_flight[host] = in_flight.get(host, 0) + 1
                peak[host] = max(peak.get(host, 0), in_flight[host])
                if host == "a.example":
                    starts.append(asyncio.get_running_loop().time())
                await asyncio.sleep(0.01)
                in_flight[host] -= 1

        await asyncio.gather(*(one("a.example") for _ in range(6)), *(one("b.example") for _ in range(2)))
        return peak, starts

    peak, starts = run_virtual(go())
    assert peak == {"a.example": 2, "b.example": 2}  # each host has its own two slots
    assert starts == pytest.approx([0.0, 0.0, 0.01, 0.01, 0.02, 0.02])  # a slot frees as a request ends


def test_host_throttle_pause_holds_only_that_host() -> None:
    async def go() -> dict[str, list[float]]:
        throttle, started = HostThrottle(concurrency=4), {"a.example": [], "b.example": []}

        async def one(host: str) -> None:
            async with throttle.slot(host):
                started[host].append(asyncio.get_running_loop().time())

        await asyncio.sleep(1.0)
        throttle.pause("b.example", 0.3)  # e.g. after a 429 with Retry-After: 0.3
        await asyncio.gather(one("b.example"), one("a.example"))
        throttle.pause("a.example", -1.0)  # a negative pause is no pause
        await one("a.example")
        return started

    started = run_virtual(go())
    assert started["b.example"] == pytest.approx([1.3])
    assert started["a.example"] == pytest.approx([1.0, 1.3])  # at once; then at once after the gather ended
