"""The image crawler's httpx transport: HTTP/1.1 keep-alive over asyncio protocols, every connect checked.

Why not httpx's default transport (httpcore + h11 + AnyIO): on a loopback crawl of small JPEGs its event-loop CPU
per request is a large share of what decoding the image costs, spread over many layers (a cancel scope per read,
pool bookkeeping, h11's event machinery). This transport does the same job for a download client in one layer, at
well under half that CPU (bench/README.md), with the same httpx client on top (redirect checks, byte caps,
timeouts, headers, Content-Encoding, and the crawler's error handling are unchanged). It is used by
`etl.net.http.async_client`; the sync client (`fetch`, a few large files) keeps httpx's default stack.

Scope, on purpose: GET and HEAD without a request body (downloads); http and https; HTTP/1.1 (and 1.0 replies).
Parsing is `etl.net.wire`. Errors are httpx's: `ConnectError`/`ConnectTimeout`, `ReadError` (reset),
`ReadTimeout`, `RemoteProtocolError` (malformed or truncated reply), `PoolTimeout`; `BlockedURL` from the URL
guard passes through. A request that finds its reused keep-alive connection closed by the server before any byte
of the reply is sent again once on a new connection (GET and HEAD are idempotent).
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Collection
from typing import Any

import httpx

from etl.net.urlsafety import UnresolvableHost, resolve_checked_async
from etl.net.wire import (
    ChunkedDecoder,
    Framing,
    ProtocolError,
    ResponseHead,
    body_framing,
    head_end,
    parse_head,
    request_head,
)

READ_HIGH_WATER = 1 << 20  # stop reading from a socket whose unread bytes pass this (flow control)
# Linux: acknowledge at once instead of up to 40 ms later. A server that writes the head and the body in two sends
# with Nagle's algorithm on (Python's http.server does) holds the body until the head is acknowledged; with delayed
# ACKs every such response waits for the peer's delayed-ACK timer (effect on the sample crawl: bench/README.md).
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]


class _Stream(asyncio.Protocol):
    """A socket's received bytes and its state; wakes the one reader waiting on it."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[bool] | None = None
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self._socket: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if TCP_QUICKACK is not None:
            self._socket = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        if self._socket is not None:
            try:
                self._socket.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)  # the kernel resets it: set per read
            except OSError:  # not a TCP socket after all: only a missed optimisation
                self._socket = None
        self.buffer += data
        if len(self.buffer) > READ_HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = self.error or exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(True)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class _Connection:
    def __init__(self, origin: Origin, transport: asyncio.Transport, stream: _Stream) -> None:
        self.origin = origin
        self.transport = transport
        self.stream = stream
        self.idle_since = 0.0

    @property
    def buffer(self) -> bytearray:
        return self.stream.buffer

    def reusable(self, expiry_s: float, now: float) -> bool:
        """Still open, nothing unexpected received while idle, not idle for longer than `expiry_s`."""
        s = self.stream
        return not (s.eof or s.buffer or self.transport.is_closing() or now - self.idle_since > expiry_s)

    async def wait(self, timeout: float | None, request: httpx.Request) -> None:
        """Until more bytes arrived or the peer closed; `ReadTimeout` after `timeout` seconds of silence."""
        s = self.stream
        if s.paused:
            s.paused = False
            self.transport.resume_reading()
        loop = asyncio.get_running_loop()
        s.waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            if not await waiter:
                raise httpx.ReadTimeout(f"no data for {timeout:g}s", request=request)
        finally:
            s.waiter = None
            if timer is not None:
                timer.cancel()

    def closed_error(self, request: httpx.Request, what: str) -> httpx.TransportError:
        """The error for a connection that ended early: a reset is a ReadError, a clean close a protocol error."""
        if self.stream.error is not None:
            return httpx.ReadError(f"{what}: {self.stream.error}", request=request)
        return httpx.RemoteProtocolError(what, request=request)

    def close(self) -> None:
        self.transport.close()


class _StaleConnection(Exception):
    """A reused connection that the server had closed: nothing was received, so the request can be resent."""


class H1Transport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 for `httpx.AsyncClient(transport=...)`, connecting only to addresses `urlsafety`
    vetted (`allow_hosts` as there). At most `max_connections` requests in flight (and open connections)."""

    def __init__(self, allow_hosts: Collection[str] = (), max_connections: int = 64,
                 keepalive_expiry_s: float = 30.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self._allow = tuple(allow_hosts)
        self._max = max_connections
        self._expiry = keepalive_expiry_s
        self._ssl = ssl_context
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        method = request.method.encode("ascii")
        if method not in (b"GET", b"HEAD"):
            raise httpx.UnsupportedProtocol(f"{request.method} is not supported: this transport downloads "
                                            f"(GET, HEAD)", request=request)
        url = request.url
        if url.scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}", request=request)
        origin = (url.scheme, url.host, url.port or DEFAULT_PORTS[url.scheme])
        timeouts = request.extensions.get("timeout", {})
        try:
            head = request_head(method, url.raw_path, request.headers.raw)
        except ValueError as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from None
        await self._acquire(timeouts.get("pool"), request)
        conn: _Connection | None = None
        try:
            conn = self._take_idle(origin)
            while True:
                reused = conn is not None
                if conn is None:
                    conn = await self._connect(origin, timeouts.get("connect"), request)
                conn.transport.write(head)
                try:
                    reply = await self._read_head(conn, timeouts.get("read"), request, reused)
                    break
                except _StaleConnection:  # the resend goes on a new connection, so this happens once at most
                    self._discard(conn)
                    conn = None
            framing = body_framing(reply, method)
        except ProtocolError as exc:
            self._fail(conn)
            raise httpx.RemoteProtocolError(str(exc), request=request) from None
        except BaseException:
            self._fail(conn)
            raise
        return httpx.Response(reply.status, headers=reply.headers,
                              stream=_Body(self, conn, framing, timeouts.get("read"), request),
                              extensions={"http_version": reply.http_version, "reason_phrase": reply.reason})

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._open -= sum(len(conns) for conns in self._idle.values())
        self._idle.clear()

    # --- slots and the idle pool ---------------------------------------------------------------------------------

    async def _acquire(self, timeout: float | None, request: httpx.Request) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max)
        if not self._slots.locked():
            await self._slots.acquire()  # returns at once; no timer needed
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except asyncio.TimeoutError:
            raise httpx.PoolTimeout(f"no free connection within {timeout:g}s", request=request) from None

    def _release(self) -> None:
        self._slots.release()

    def _take_idle(self, origin: Origin) -> _Connection | None:
        conns = self._idle.get(origin)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if conn.reusable(self._expiry, now):
                return conn
            self._discard(conn)
        return None

    def _put_idle(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1

    def _fail(self, conn: _Connection | None) -> None:
        """A request that ends in an error (or is cancelled) before its response is returned."""
        if conn is not None:
            self._discard(conn)
        self._release()

    def _make_room(self) -> None:
        """Close the longest-idle connection (any host) when opening another would pass `max_connections`."""
        if self._open < self._max:
            return
        oldest = min((c for conns in self._idle.values() for c in conns), key=lambda c: c.idle_since, default=None)
        if oldest is not None:
            self._idle[oldest.origin].remove(oldest)
            self._discard(oldest)

    # --- connecting and reading ----------------------------------------------------------------------------------

    async def _connect(self, origin: Origin, timeout: float | None, request: httpx.Request) -> _Connection:
        scheme, host, port = origin
        try:
            addresses = await resolve_checked_async(host, port, self._allow)  # BlockedURL passes through
        except UnresolvableHost as exc:
            raise httpx.ConnectError(str(exc), request=request) from None
        if scheme == "https" and self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # once: loading the CA bundle is slow
        tls = self._ssl if scheme == "https" else None
        loop = asyncio.get_running_loop()
        self._make_room()
        error: httpx.TransportError | None = None
        for address in addresses:
            try:
                transport, stream = await asyncio.wait_for(loop.create_connection(
                    _Stream, address, port, ssl=tls, server_hostname=host if tls else None), timeout)
            except asyncio.TimeoutError:
                error = httpx.ConnectTimeout(f"connecting to {address}:{port} took over {timeout:g}s",
                                             request=request)
            except (OSError, ssl.SSLError) as exc:
                error = httpx.ConnectError(f"{address}:{port}: {exc}", request=request)
            else:
                self._open += 1
                return _Connection(origin, transport, stream)
        raise error or httpx.ConnectError(f"no address for {host}", request=request)

    async def _read_head(self, conn: _Connection, timeout: float | None, request: httpx.Request,
                         reused: bool) -> ResponseHead:
        """The final response's head (1xx interim replies skipped), consumed from the buffer."""
        buffer = conn.buffer
        while True:
            end = head_end(buffer)
            if end >= 0:
                reply = parse_head(memoryview(buffer)[:end])
                del buffer[:end + 4]
                if reply.status == 101:
                    raise ProtocolError("101 Switching Protocols to a request that asked for no upgrade")
                if reply.status >= 200:
                    return reply
                continue
            if conn.stream.eof:
                if reused and not buffer and conn.stream.error is None:
                    raise _StaleConnection()
                raise conn.closed_error(request, "server disconnected without sending a complete response head")
            await conn.wait(timeout, request)


class _Body(httpx.AsyncByteStream):
    """The response body as it arrives; gives the connection back to the pool when it was read to its end."""

    def __init__(self, owner: H1Transport, conn: _Connection, framing: Framing, timeout: float | None,
                 request: httpx.Request) -> None:
        self._owner = owner
        self._conn: _Connection | None = conn
        self._framing = framing
        self._timeout = timeout
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            raise httpx.StreamClosed()
        kind = self._framing.kind
        try:
            if kind == "length":
                async for piece in self._by_length(conn, self._framing.length):
                    yield piece
            elif kind == "chunked":
                async for piece in self._chunked(conn):
                    yield piece
            else:
                async for piece in self._until_close(conn):
                    yield piece
        except ProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=self._request) from None
        self._finish(reuse=self._framing.reusable and not conn.buffer)

    async def aclose(self) -> None:
        self._finish(reuse=False)

    def _finish(self, reuse: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if reuse:
            self._owner._put_idle(conn)
        else:
            self._owner._discard(conn)
        self._owner._release()

    async def _by_length(self, conn: _Connection, length: int) -> AsyncIterator[bytes]:
        remaining = length
        buffer = conn.buffer
        while remaining:
            if buffer:
                if len(buffer) <= remaining:
                    piece = bytes(buffer)
                    buffer.clear()
                else:
                    piece = bytes(buffer[:remaining])
                    del buffer[:remaining]
                remaining -= len(piece)
                yield piece
            elif conn.stream.eof:
                raise conn.closed_error(self._request, f"peer closed connection without sending complete message "
                                                       f"body: received {length - remaining} bytes, expected {length}")
            else:
                await conn.wait(self._timeout, self._request)

    async def _chunked(self, conn: _Connection) -> AsyncIterator[bytes]:
        decoder = ChunkedDecoder()
        while True:
            for piece in decoder.feed(conn.buffer):
                yield piece
            if decoder.done:
                return
            if conn.stream.eof:
                raise conn.closed_error(self._request, "peer closed connection in the middle of a chunked body")
            await conn.wait(self._timeout, self._request)

    async def _until_close(self, conn: _Connection) -> AsyncIterator[bytes]:
        buffer = conn.buffer
        while True:
            if buffer:
                piece = bytes(buffer)
                buffer.clear()
                yield piece
            elif conn.stream.eof:
                if conn.stream.error is not None:
                    raise conn.closed_error(self._request, "connection reset while reading the body")
                return
            else:
                await conn.wait(self._timeout, self._request)
