"""The crawler's HTTP/1.1 transport against loopback servers that send exactly the bytes each test scripts."""
from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable

import httpx
import pytest
import trustme

from etl.net.transport import H1Transport
from etl.net.urlsafety import BlockedURL

LOCAL = ("127.0.0.1",)
JPEG = bytes(range(256)) * 40
Handler = Callable[[socket.socket, int], None]


class RawServer:
    """Accepts connections on 127.0.0.1 and runs `handler(connection, index)` for each in its own thread."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    def url(self, path: str = "/img.jpg", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> RawServer:
        self._accepting.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                index = self.connections
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn, index), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        with self._lock:
            self.open_now += 1
            self.most_open = max(self.most_open, self.open_now)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            with conn:
                self.handler(conn, index)
        except OSError:
            pass
        finally:
            with self._lock:
                self.open_now -= 1


def ok(body: bytes = JPEG, extra: str = "") -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def serve_each(reply: Callable[[bytes], bytes], close_after: int = 10**9) -> Handler:
    """A keep-alive handler answering every request on a connection with `reply(request)`."""
    def handler(conn: socket.socket, index: int) -> None:
        for _ in range(close_after):
            if (request := _read(conn)) is None:
                return
            conn.sendall(reply(request))
    return handler


def _read(conn: socket.socket) -> bytes | None:
    """One request head (None when the client closed the connection)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return None
        data += piece
    return data


async def fetch(client: httpx.AsyncClient, url: str, method: str = "GET") -> tuple[httpx.Response, bytes]:
    async with client.stream(method, url) as response:
        return response, await response.aread()


async def fetch_body(c: httpx.AsyncClient, url: str) -> bytes:
    return (await fetch(c, url))[1]


def get_bodies(server: RawServer, n: int, pause_s: float = 0.0) -> list[bytes]:
    """n GETs one after another on one client (so keep-alive applies), pausing `pause_s` after each."""
    async def go() -> list[bytes]:
        async with client() as c:
            bodies = []
            for _ in range(n):
                bodies.append(await fetch_body(c, server.url()))
                await asyncio.sleep(pause_s)
            return bodies
    return asyncio.run(go())


def client(max_connections: int = 8, read_s: float = 2.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=H1Transport(LOCAL, max_connections),
                             timeout=httpx.Timeout(2.0, read=read_s, pool=2.0))


def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given() -> None:
    seen: list[bytes] = []
    with RawServer(serve_each(lambda request: seen.append(request) or ok())) as server:
        async def go() -> list[bytes]:
            async with httpx.AsyncClient(transport=H1Transport(LOCAL), headers={"User-Agent": "slip-kit test"}) as c:
                return [(await fetch(c, server.url(f"/img{i}.jpg?x=1")))[1] for i in range(5)]
        assert asyncio.run(go()) == [JPEG] * 5
        assert server.connections == 1
    lines = seen[0].decode().split("\r\n")
    assert lines[0] == "GET /img0.jpg?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines and "User-Agent: slip-kit test" in lines


def test_chunked_close_delimited_and_bodiless_replies() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nTrailer: x\r\n\r\n")
    replies = {b"/chunked": chunked, b"/head": ok(), b"/204": b"HTTP/1.1 204 No Content\r\n\r\n",
               b"/continue": b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after 100")}

    def reply(request: bytes) -> bytes:
        path = request.split(b" ")[1]
        if request.startswith(b"HEAD"):
            return ok()[:-len(JPEG)]  # the head says Content-Length, no body follows
        return replies[path]

    with RawServer(serve_each(reply)) as server:
        async def go() -> list[tuple[int, bytes]]:
            async with client() as c:
                out = []
                for path, method in [("/chunked", "GET"), ("/head", "HEAD"), ("/204", "GET"), ("/continue", "GET"),
                                     ("/chunked", "GET")]:
                    response, body = await fetch(c, server.url(path), method)
                    out.append((response.status_code, body))
                return out
        assert asyncio.run(go()) == [(200, b"abcdefg"), (200, b""), (204, b""), (200, b"after 100"),
                                     (200, b"abcdefg")]
        assert server.connections == 1  # every one of these leaves the connection reusable


def test_a_reply_ended_by_close_is_read_to_the_end_and_the_connection_not_reused() -> None:
    def handler(conn: socket.socket, index: int) -> None:
        if _read(conn) is not None:
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\n\r\n" + JPEG)

    with RawServer(handler) as server:
        assert get_bodies(server, 2) == [JPEG, JPEG]
        assert server.connections == 2


def test_more_bytes_than_content_length_means_the_connection_is_not_reused() -> None:
    with RawServer(serve_each(lambda request: ok(b"12345") + b"garbage")) as server:
        assert get_bodies(server, 2) == [b"12345", b"12345"]
        assert server.connections == 2


def test_a_keep_alive_connection_the_server_closed_is_replaced_without_an_error() -> None:
    with RawServer(serve_each(lambda request: ok(), close_after=1)) as server:
        # the server's close reaches us while the connection is idle; the next request takes a new one
        assert get_bodies(server, 3, pause_s=0.05) == [JPEG] * 3
        assert server.connections == 3


def test_a_close_racing_the_next_request_is_retried_once_on_a_new_connection() -> None:
    """The server reads the second request on a reused connection and hangs up without a byte: resent once."""
    def handler(conn: socket.socket, index: int) -> None:
        if _read(conn) is not None:
            conn.sendall(ok())
        if index == 0:
            _read(conn)  # ...then closes without replying

    with RawServer(handler) as server:
        assert get_bodies(server, 2) == [JPEG, JPEG]
        assert server.connections == 2


@pytest.mark.parametrize(("reply", "error", "message"), [
    (ok()[:500], httpx.RemoteProtocolError, f"received {500 - len(ok()) + len(JPEG)} bytes, expected {len(JPEG)}"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n12345", httpx.RemoteProtocolError,
     "Content-Length"),
    (b"NOT HTTP\r\n\r\n", httpx.RemoteProtocolError, "malformed status line"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000, httpx.RemoteProtocolError, "larger than"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", httpx.RemoteProtocolError, "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", httpx.RemoteProtocolError,
     "middle of a chunked body"),
    (b"HTTP/1.1 200 OK\r\nContent-Le", httpx.RemoteProtocolError, "complete response head"),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", httpx.RemoteProtocolError, "101"),
])
def test_malformed_or_truncated_replies_are_protocol_errors(reply: bytes, error: type, message: str) -> None:
    def handler(conn: socket.socket, index: int) -> None:
        if _read(conn) is not None:
            conn.sendall(reply)
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.2)

    with RawServer(handler) as server:
        async def go() -> None:
            async with client() as c:
                await fetch(c, server.url())
        with pytest.raises(error, match=message):
            asyncio.run(go())


def test_a_reset_mid_body_is_a_read_error() -> None:
    def handler(conn: socket.socket, index: int) -> None:
        if _read(conn) is not None:
            conn.sendall(ok()[:3000])
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST

    with RawServer(handler) as server:
        async def go() -> None:
            async with client() as c:
                await fetch(c, server.url())
        with pytest.raises(httpx.ReadError):
            asyncio.run(go())


def test_silence_is_a_read_timeout_and_a_cancelled_request_frees_its_slot() -> None:
    release = threading.Event()

    def handler(conn: socket.socket, index: int) -> None:
        while (request := _read(conn)) is not None:
            if b"/stall" in request:
                release.wait(10)
                return
            conn.sendall(ok())

    with RawServer(handler) as server:
        async def go() -> bytes:
            async with client(max_connections=1, read_s=0.3) as c:
                t0 = time.monotonic()
                with pytest.raises(httpx.ReadTimeout):
                    await fetch(c, server.url("/stall"))
                assert time.monotonic() - t0 < 2
                with pytest.raises(TimeoutError):  # cancelled by the caller's own deadline
                    await asyncio.wait_for(fetch(c, server.url("/stall")), 0.1)
                return (await fetch(c, server.url()))[1]  # the only slot is free again
        try:
            assert asyncio.run(go()) == JPEG
        finally:
            release.set()


def test_at_most_max_connections_are_open_at_once() -> None:
    def handler(conn: socket.socket, index: int) -> None:
        while _read(conn) is not None:
            time.sleep(0.05)
            conn.sendall(ok())

    with RawServer(handler) as server:
        async def go() -> list[bytes]:
            async with client(max_connections=2) as c:
                return await asyncio.gather(*(fetch_body(c, server.url()) for _ in range(10)))
        assert asyncio.run(go()) == [JPEG] * 10
        assert server.most_open <= 2 and server.connections == 2


def test_connect_guard_and_request_limits() -> None:
    with RawServer(serve_each(lambda request: ok())) as server:
        async def go() -> None:
            async with httpx.AsyncClient(transport=H1Transport()) as c:  # 127.0.0.1 not allowed
                with pytest.raises(BlockedURL, match="loopback"):
                    await c.get(server.url())
            async with client() as c:
                with pytest.raises(httpx.UnsupportedProtocol, match="POST"):
                    await c.post(server.url(), content=b"x")
                with pytest.raises(httpx.ConnectError):
                    await c.get("http://127.0.0.1:1/closed-port")
        asyncio.run(go())
        assert server.connections == 0


def test_https_with_certificate_verification() -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    with RawServer(serve_each(lambda request: ok()), tls=server_tls) as server:
        async def go(context: ssl.SSLContext) -> list[bytes]:
            async with httpx.AsyncClient(transport=H1Transport(LOCAL, 4, ssl_context=context)) as c:
                return [(await fetch(c, server.url(scheme="https")))[1] for _ in range(3)]
        assert asyncio.run(go(trusting)) == [JPEG] * 3
        assert server.connections == 1
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            asyncio.run(go(ssl.create_default_context()))  # a certificate from an unknown CA is refused
