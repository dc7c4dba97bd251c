"""A loopback static file server for the sample, so fetch and image stages run against real HTTP.

It serves files only (GET, HEAD), with single-range requests (the fetch stage resumes downloads), keep-alive
(the image crawler reuses connections), no directory listings and no way out of the root. It lives for one
``with`` block and closes its open connections on exit, so no thread outlives it.

With ``renditions=True`` it behaves like Amazon's image CDN for size modifiers: ``<id>._AC_SL1500_.jpg`` is the
stored file resized so its longest side is 1500 (SX: width, SY: height, SS/US: a square side, UL like SL), up or
down, re-encoded as a quality-90 JPEG; a name without a size modifier, a file already that size, or bytes that do
not decode (the sample's corrupt images) are served as stored. Renditions are made once per file and kept in memory
(``RENDITION_CACHE_BYTES``), as a CDN keeps them; Range requests get the whole rendition.
"""

from __future__ import annotations

import contextlib
import io
import re
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CONTENT_TYPES = {
    ".gz": "application/gzip",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".txt": "text/plain; charset=utf-8",
}
CHUNK = 64 * 1024
IDLE_TIMEOUT_S = 30  # an idle keep-alive connection is closed after this long
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
RENDITION_CACHE_BYTES = 512 * 1024 * 1024
RENDITION_QUALITY = 90  # the sample generator's JPEG quality
_MODIFIERS = re.compile(r"\._([A-Za-z0-9_,]+)_\.jpe?g$", re.IGNORECASE)
_SIZE_TOKEN = re.compile(r"^(SL|UL|SX|UX|SY|UY|SS|US)(\d+)$")


def rendition_size(name: str, width: int, height: int) -> tuple[int, int] | None:
    """The (width, height) the size modifier in file `name` asks of a `width` x `height` image, or None."""
    match = _MODIFIERS.search(name)
    tokens = [m.groups() for token in match.group(1).split("_") if (m := _SIZE_TOKEN.match(token))] if match else []
    if not tokens:
        return None
    kind, value = tokens[-1][0], int(tokens[-1][1])
    if kind in ("SX", "UX"):
        scale = value / width
    elif kind in ("SY", "UY"):
        scale = value / height
    else:  # SL, UL, SS, US: the longest side
        scale = value / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def render_rendition(data: bytes, name: str) -> bytes | None:
    """`data` resized as the modifier in `name` asks, or None when it needs no resize or does not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            size = rendition_size(name, *image.size)
            if size is None or size == image.size:
                return None
            resized = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    except (OSError, ValueError, SyntaxError):
        return None
    out = io.BytesIO()
    resized.save(out, "JPEG", quality=RENDITION_QUALITY)
    return out.getvalue()


class _Server(ThreadingHTTPServer):
    """Threaded server that remembers its open connections, so closing it can end them."""

    daemon_threads = False  # only non-daemon handler threads are tracked, and so joined by server_close()
    block_on_close = True
    # socketserver's default listen backlog is 5: a crawler opening 64 connections at once would see SYNs dropped
    # and retried after 1 s, 3 s, ... (the stalls would be the server's, not the client's).
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address: tuple[str, int], root: Path, family: socket.AddressFamily,
                 renditions: bool = False) -> None:
        self.address_family = family
        self.root = root
        self.renditions = renditions
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Path, int], bytes | None] = OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()
        super().__init__(address, _Handler)

    def rendition(self, path: Path) -> bytes | None:
        """The resized rendition the file name asks for (cached), or None to serve the file as stored."""
        if not self.renditions or not _MODIFIERS.search(path.name):
            return None
        key = (path, path.stat().st_mtime_ns)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = render_rendition(path.read_bytes(), path.name)  # outside the lock: other requests go on
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = data
                self._cache_bytes += len(data or b"")
            while self._cache_bytes > RENDITION_CACHE_BYTES and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= len(old or b"")
        return data

    def process_request(self, request, client_address) -> None:
        with self._lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        """Clients that hang up mid-transfer are normal here (interrupted downloads); stay quiet."""

    def close_connections(self) -> None:
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "slip-sample"
    # The head and the body go out in separate writes: with Nagle's algorithm the body would wait for the client's
    # (possibly delayed, 40 ms) ACK of the head. Production servers set TCP_NODELAY too.
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT_S
    server: _Server

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args) -> None:
        """Quiet: tests and the pipeline have their own logs."""

    def _serve(self, send_body: bool) -> None:
        path = self._resolve()
        if path is None:
            self._reply_status(HTTPStatus.NOT_FOUND, send_body)
            return
        rendition = self.server.rendition(path)
        if rendition is not None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(rendition)))
            self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
            self.end_headers()
            if send_body:
                self.wfile.write(rendition)
            return
        size = path.stat().st_size
        byte_range = _parse_range(self.headers.get("Range"), size)
        if byte_range == "unsatisfiable":
            self._reply_status(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, send_body,
                               {"Content-Range": f"bytes */{size}"})
            return
        start, end = byte_range if byte_range else (0, size - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if byte_range else HTTPStatus.OK)
        self.send_header("Content-Type", CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"))
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if byte_range:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
        self.end_headers()
        if send_body:
            with path.open("rb") as source:
                source.seek(start)
                _copy(source, self.wfile, end - start + 1)

    def _resolve(self) -> Path | None:
        """The regular file the request names inside the root, or None (missing, a folder, or outside)."""
        raw = unquote(urlsplit(self.path).path)
        parts = [part for part in raw.split("/") if part]
        if "\x00" in raw or "\\" in raw or any(part in (".", "..") for part in parts):
            return None
        root = self.server.root
        candidate = root.joinpath(*parts).resolve() if parts else root
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
        return candidate

    def _reply_status(self, status: HTTPStatus, send_body: bool, headers: dict[str, str] | None = None) -> None:
        """A short plain-text reply with a Content-Length, so the connection stays usable (keep-alive)."""
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """Inclusive (start, end) for a satisfiable single range, "unsatisfiable", or None to serve it all.

    Malformed and multi-range headers are ignored (the full file is sent), as RFC 9110 allows.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end


def _copy(source, sink, length: int) -> None:
    while length > 0:
        chunk = source.read(min(CHUNK, length))
        if not chunk:
            return
        sink.write(chunk)
        length -= len(chunk)


@contextlib.contextmanager
def serve_directory(root: Path, host: str = "127.0.0.1", renditions: bool = False) -> Iterator[str]:
    """Serve ``root`` over HTTP on a free port of ``host`` for the ``with`` block; yields the base URL.

    The base URL ends with "/" (``http://127.0.0.1:PORT/``); a file's URL is the base + its relative path.
    ``renditions``: resize JPEGs as their names' CDN size modifiers ask (the module docstring).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"cannot serve {root}: not a folder")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = _Server((host, 0), root, family, renditions)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"sample-server-{server.server_address[1]}", daemon=True)
    thread.start()
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    try:
        yield f"http://{shown_host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join()
