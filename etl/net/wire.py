"""HTTP/1.1 on the wire, without I/O: request heads out, response heads and body framing in (RFC 9112).

The crawler's transport (`etl.net.transport`) feeds bytes in and gets events out; keeping the parsing here, apart
from sockets and the event loop, lets the tests drive every malformed input directly. Only what a download client
needs: GET/HEAD requests without a body, responses framed by Content-Length, chunked transfer coding, or the end
of the connection; 1xx interim responses are skipped by the caller. Anything malformed raises `ProtocolError`
with what was wrong; nothing here guesses.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024      # status line + headers; CDNs send < 2 KiB
MAX_CHUNK_LINE = 4 * 1024       # "size;extensions" line of a chunk
MAX_TRAILER_BYTES = 16 * 1024   # trailer fields after the last chunk (read and dropped)
HEAD_END = b"\r\n\r\n"

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9]{2})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00\r\n]")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")


class ProtocolError(Exception):
    """The peer sent something that is not HTTP/1.1 (or asked for more than the limits above)."""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: bytes
    http_version: bytes              # b"HTTP/1.1" or b"HTTP/1.0"
    headers: list[tuple[bytes, bytes]]

    def values(self, name: bytes) -> list[bytes]:
        """Every value of header `name` (lower case), comma-separated lists split, in order."""
        return [part.strip() for key, value in self.headers if key.lower() == name
                for part in value.split(b",") if part.strip()]


def request_head(method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The request line and header block; refuses CR, LF and NUL anywhere (no header injection)."""
    if not _TOKEN.fullmatch(method) or not target or _FORBIDDEN_IN_VALUE.search(target) or b" " in target:
        raise ValueError(f"invalid request line: {method!r} {target!r}")
    lines = [method + b" " + target + b" HTTP/1.1"]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _FORBIDDEN_IN_VALUE.search(value):
            raise ValueError(f"invalid request header {name!r}")
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + HEAD_END


def parse_head(block: bytes | bytearray | memoryview) -> ResponseHead:
    """A response head (the bytes before the blank line, without it)."""
    lines = bytes(block).split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise ProtocolError(f"malformed status line {lines[0][:100]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # also refuses obsolete line folding (leading whitespace)
            raise ProtocolError(f"malformed header line {line[:100]!r}")
        value = value.strip(b" \t")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise ProtocolError(f"invalid character in header {name[:100]!r}")
        headers.append((name, value))
    return ResponseHead(int(match.group(2)), match.group(3) or b"", b"HTTP/1." + match.group(1), headers)


def head_end(buffer: bytearray) -> int:
    """Index of the blank line ending the head in `buffer`, or -1; refuses a head over `MAX_HEAD_BYTES`."""
    end = buffer.find(HEAD_END, 0, MAX_HEAD_BYTES + len(HEAD_END))
    if end < 0 and len(buffer) > MAX_HEAD_BYTES:
        raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
    return end


@dataclass(frozen=True)
class Framing:
    """How the body ends: `length` bytes (0 = no body), chunked, or when the server closes the connection."""

    kind: str                 # "length", "chunked" or "close"
    length: int = 0
    reusable: bool = True     # may the connection carry another request after this response?


def body_framing(head: ResponseHead, method: bytes) -> Framing:
    """RFC 9112 section 6.3, in its order of precedence."""
    keep = head.http_version == b"HTTP/1.1" and b"close" not in {v.lower() for v in head.values(b"connection")}
    if method == b"HEAD" or head.status < 200 or head.status in (204, 304):
        return Framing("length", 0, keep)
    codings = [c.lower() for c in head.values(b"transfer-encoding")]
    if codings:
        if codings[-1] == b"chunked":
            # With Content-Length too, the message may have been smuggled past something: do not reuse.
            return Framing("chunked", reusable=keep and not head.values(b"content-length"))
        return Framing("close", reusable=False)
    lengths = set(head.values(b"content-length"))
    if lengths:
        if len(lengths) != 1 or not _DIGITS.fullmatch(next(iter(lengths))):
            raise ProtocolError(f"invalid Content-Length {sorted(lengths)!r}")
        return Framing("length", int(next(iter(lengths))), keep)
    return Framing("close", reusable=False)


class ChunkedDecoder:
    """Decodes the chunked transfer coding from a buffer the caller keeps filling; `done` after the trailers."""

    def __init__(self) -> None:
        self.remaining = 0        # data bytes left in the current chunk
        self.state = "size"       # size -> data -> crlf -> size ... -> trailers
        self.trailer_bytes = 0
        self.done = False

    def feed(self, buffer: bytearray) -> list[bytes]:
        """Take what can be decoded from the front of `buffer` (consumed in place); returns the data pieces."""
        out: list[bytes] = []
        while not self.done:
            if self.state == "data":
                if not buffer:
                    break
                take = min(self.remaining, len(buffer))
                out.append(bytes(buffer[:take]))
                del buffer[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = "crlf"
                continue
            if self.state == "crlf":
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                del buffer[:2]
                self.state = "size"
                continue
            line = self._line(buffer, MAX_CHUNK_LINE if self.state == "size" else MAX_TRAILER_BYTES)
            if line is None:
                break
            if self.state == "size":
                size = line.split(b";", 1)[0].strip(b" \t")
                if not _HEX.fullmatch(size):
                    raise ProtocolError(f"invalid chunk size line {line[:100]!r}")
                self.remaining = int(size, 16)
                self.state = "data" if self.remaining else "trailers"
            elif line:  # a trailer field: counted, dropped
                self.trailer_bytes += len(line) + 2
                if self.trailer_bytes > MAX_TRAILER_BYTES:
                    raise ProtocolError(f"chunked trailers larger than {MAX_TRAILER_BYTES} bytes")
            else:
                self.done = True
        return out

    @staticmethod
    def _line(buffer: bytearray, limit: int) -> bytes | None:
        end = buffer.find(b"\r\n", 0, limit + 2)
        if end < 0:
            if len(buffer) > limit:
                raise ProtocolError(f"chunk line longer than {limit} bytes")
            return None
        line = bytes(buffer[:end])
        del buffer[:end + 2]
        return line
