"""A loopback HTTP server with per-path faults, for download tests (fetch, images).

    from helpers.servers import FaultServer, Serve, Status, Cut, Stall, Redirect, Trickle, fail_then

    routes = {
        "/ok.jpg": Serve(jpeg, content_type="image/jpeg"),          # Range, HEAD, If-Range, ETag supported
        "/flaky": fail_then(2, Status(503, headers={"Retry-After": "1"}), Serve(b"x")),
        "/reset": Cut(data, after=1000),                           # full Content-Length, RST after 1000 bytes
        "/short": Cut(data, after=1000, reset=False),              # ... clean close instead (truncated body)
        "/stall": Stall(5.0),                                      # accept, then say nothing (read timeout)
        "/away": Redirect("http://169.254.169.254/latest/"),       # redirect to a refused address
        "/slow": Trickle(data, chunk=4096, delay_s=0.05),          # slow but steady
        "/html": Serve(b"<html></html>", content_type="image/jpeg"),
    }
    with FaultServer(routes) as server:
        server.url("/ok.jpg")            # http://127.0.0.1:PORT/ok.jpg
        server.requests                  # [Request(method, path, headers, at)] in arrival order; .range
        server.hits("/reset")            # requests to one path
        server.set_route("/slow", Serve(data))   # change behaviour between runs

A route is one behaviour or a list of them: the n-th request to the path gets the n-th behaviour, the last one
repeats. Unknown paths get 404. The server runs in threads, refuses more than `max_connections` concurrent
connections (503), and shuts itself down after `lifetime_s` even if a test forgets to (sleeping behaviours wake up
and stop at shutdown), so it can never hang a test run.
"""
from __future__ import annotations

import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    at: float = 0.0  # time.monotonic() on arrival

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


class Behaviour:
    """What the server does for one request; subclasses implement `respond`."""

    def respond(self, h: _Handler) -> None:
        raise NotImplementedError


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _byte_range(h: _Handler, size: int, etag: str | None) -> tuple[int, int] | None | str:
    """(start, end exclusive) for a satisfiable single Range, None to send everything, "416" when unsatisfiable."""
    header = h.headers.get("Range")
    if not header:
        return None
    if_range = h.headers.get("If-Range")
    if if_range is not None and if_range != etag:
        return None  # the client's partial copy is of another version: send the whole current one
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)) + 1, size) if m.group(2) else size
    else:
        start, end = max(size - int(m.group(2)), 0), size
    if start >= size or start >= end:
        return "416"
    return start, end


@dataclass
class Serve(Behaviour):
    """Serve `body` with Range (206/416), HEAD and If-Range support; `etag` enables If-Range checks."""

    body: bytes
    content_type: str = "application/octet-stream"
    headers: Mapping[str, str] = field(default_factory=dict)
    ranges: bool = True
    etag: str | None = None

    def respond(self, h: _Handler) -> None:
        span = _byte_range(h, len(self.body), self.etag) if self.ranges else None
        if span == "416":
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(self.body)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        start, end = span if isinstance(span, tuple) else (0, len(self.body))
        h.send_response(206 if isinstance(span, tuple) else 200)
        if isinstance(span, tuple):
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(self.body)}")
        self._headers(h, end - start)
        if h.command != "HEAD":
            self.send_body(h, self.body[start:end])

    def _headers(self, h: _Handler, length: int) -> None:
        h.send_header("Content-Type", self.content_type)
        h.send_header("Content-Length", str(length))
        if self.ranges:
            h.send_header("Accept-Ranges", "bytes")
        if self.etag:
            h.send_header("ETag", self.etag)
        for k, v in self.headers.items():
            h.send_header(k, v)
        h.end_headers()

    def send_body(self, h: _Handler, data: bytes) -> None:
        h.wfile.write(data)


@dataclass
class Trickle(Serve):
    """`Serve`, but the body goes out `chunk` bytes every `delay_s` seconds (slow mirror, kill-mid-file tests)."""

    chunk: int = 4096
    delay_s: float = 0.05

    def send_body(self, h: _Handler, data: bytes) -> None:
        for i in range(0, len(data), self.chunk):
            h.wfile.write(data[i:i + self.chunk])
            h.wfile.flush()
            if h.server.stopping.wait(self.delay_s):
                return


@dataclass
class Cut(Serve):
    """`Serve` announcing the full Content-Length but stopping after `after` body bytes (of this response, so
    Range requests are cut too): a TCP reset (`reset=True`, a dropped connection) or a clean close
    (`reset=False`, a truncated body)."""

    after: int = 0
    reset: bool = True
    linger_s: float = 0.2  # let the client read what was sent before the RST (an RST discards unread data)

    def send_body(self, h: _Handler, data: bytes) -> None:
        h.wfile.write(data[:self.after])
        h.wfile.flush()
        h.close_connection = True
        h.server.stopping.wait(self.linger_s)
        if self.reset:  # SO_LINGER 0: close() sends RST instead of FIN
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()


@dataclass
class Status(Behaviour):
    """Answer with `status` (e.g. 404, 429, 503), optional headers (Retry-After) and a small body."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def respond(self, h: _Handler) -> None:
        h.send_response(self.status)
        for k, v in self.headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(self.body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(self.body)


@dataclass
class Redirect(Behaviour):
    """A redirect to `location` (absolute or relative)."""

    location: str
    status: int = 302

    def respond(self, h: _Handler) -> None:
        Status(self.status, {"Location": self.location}).respond(h)


@dataclass
class Stall(Behaviour):
    """Accept the request and say nothing for `seconds` (client read timeout), then close."""

    seconds: float

    def respond(self, h: _Handler) -> None:
        h.server.stopping.wait(self.seconds)
        h.close_connection = True


def fail_then(n: int, failure: Behaviour, then: Behaviour) -> list[Behaviour]:
    """`failure` for the first `n` requests, `then` afterwards."""
    return [failure] * n + [then]


Route = Behaviour | Sequence[Behaviour]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    timeout = 10  # an idle keep-alive connection is dropped after this
    server: _Server

    def do_GET(self) -> None:
        self.server.dispatch(self)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read `requests` instead
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, routes: Mapping[str, Route], max_connections: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, list[Behaviour]] = {}
        self.counts: dict[str, int] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.slots = threading.BoundedSemaphore(max_connections)
        for path, route in routes.items():
            self.set_route(path, route)

    def set_route(self, path: str, route: Route) -> None:
        with self.lock:
            self.routes[path] = [route] if isinstance(route, Behaviour) else list(route)
            self.counts[path] = 0

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        if not self.slots.acquire(blocking=False):
            request.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """Clients hanging up (resets, timeouts) are part of the tests; anything else is printed as usual."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def dispatch(self, h: _Handler) -> None:
        path = h.path.split("?", 1)[0]
        with self.lock:
            self.requests.append(Request(h.command, path, {k.lower(): v for k, v in h.headers.items()},
                                         time.monotonic()))
            behaviours = self.routes.get(path)
            if behaviours is not None:
                n = self.counts[path]
                self.counts[path] = n + 1
                behaviour = behaviours[min(n, len(behaviours) - 1)]
        if behaviours is None:
            behaviour = Status(404, body=b"not found")
        try:
            behaviour.respond(h)
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True  # the client went away; nothing to do


class FaultServer:
    """`with FaultServer(routes) as server:` a threaded loopback server; see the module docstring."""

    def __init__(self, routes: Mapping[str, Route] | None = None, *, max_connections: int = 128,
                 lifetime_s: float = 120.0) -> None:
        self._server = _Server(routes or {}, max_connections)
        self._lifetime_s = lifetime_s
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    @property
    def requests(self) -> list[Request]:
        with self._server.lock:
            return list(self._server.requests)

    def hits(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def set_route(self, path: str, route: Route) -> None:
        self._server.set_route(path, route)

    def clear_log(self) -> None:
        with self._server.lock:
            self._server.requests.clear()

    def start(self) -> FaultServer:
        """Start serving (once; a second call is a no-op)."""
        if self._thread.ident is not None:
            return self
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        if self._server.stopping.is_set():
            return
        self._server.stopping.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connection refused): an 'offline' base."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


__all__ = ["FaultServer", "Request", "Behaviour", "Serve", "Trickle", "Cut", "Status", "Redirect", "Stall",
           "fail_then", "closed_port_url"]
