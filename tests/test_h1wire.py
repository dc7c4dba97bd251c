"""HTTP/1.1 parsing without sockets: heads, body framing precedence, the chunked decoder, request heads."""
from __future__ import annotations

import pytest

from etl.net.wire import (
    MAX_HEAD_BYTES,
    ChunkedDecoder,
    ProtocolError,
    body_framing,
    head_end,
    parse_head,
    request_head,
)


def head(*lines: str) -> bytes:
    return "\r\n".join(lines).encode("latin-1")


def test_parse_head_keeps_header_order_and_repeats() -> None:
    reply = parse_head(head("HTTP/1.1 200 OK", "Content-Type: image/jpeg", "X-Robots-Tag: noai",
                            "x-robots-tag:  noindex ", "Empty:"))
    assert (reply.status, reply.reason, reply.http_version) == (200, b"OK", b"HTTP/1.1")
    assert reply.headers == [(b"Content-Type", b"image/jpeg"), (b"X-Robots-Tag", b"noai"),
                             (b"x-robots-tag", b"noindex"), (b"Empty", b"")]
    assert reply.values(b"x-robots-tag") == [b"noai", b"noindex"]
    assert parse_head(head("HTTP/1.0 404")).reason == b""  # the reason phrase may be missing


@pytest.mark.parametrize("bad", [
    head("HTTP/2 200 OK"), head("HTTP/1.1 20 OK"), head("ICY 200 OK"), head("HTTP/1.1 200 OK", "No colon here"),
    head("HTTP/1.1 200 OK", "Bad Name: x"), head("HTTP/1.1 200 OK", "A: 1", " folded continuation"),
    head("HTTP/1.1 200 OK", "A: nul\x00inside"), b"",
])
def test_malformed_heads_are_refused(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_head(bad)


def test_head_end_and_its_size_limit() -> None:
    buffer = bytearray(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nBODY")
    assert head_end(buffer) == buffer.index(b"\r\n\r\n")
    assert head_end(bytearray(b"HTTP/1.1 200 OK\r\nA: b\r\n")) == -1  # not complete yet
    with pytest.raises(ProtocolError, match="larger than"):
        head_end(bytearray(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES))


@pytest.mark.parametrize(("lines", "method", "expected"), [
    (["HTTP/1.1 200 OK", "Content-Length: 10"], b"GET", ("length", 10, True)),
    (["HTTP/1.1 200 OK", "Content-Length: 10, 10", "Content-Length: 10"], b"GET", ("length", 10, True)),
    (["HTTP/1.1 200 OK", "Content-Length: 10"], b"HEAD", ("length", 0, True)),
    (["HTTP/1.1 204 No Content"], b"GET", ("length", 0, True)),
    (["HTTP/1.1 304 Not Modified", "Content-Length: 99"], b"GET", ("length", 0, True)),
    (["HTTP/1.1 200 OK", "Transfer-Encoding: gzip, chunked"], b"GET", ("chunked", 0, True)),
    (["HTTP/1.1 200 OK", "Transfer-Encoding: chunked", "Content-Length: 5"], b"GET", ("chunked", 0, False)),
    (["HTTP/1.1 200 OK", "Transfer-Encoding: gzip"], b"GET", ("close", 0, False)),
    (["HTTP/1.1 200 OK"], b"GET", ("close", 0, False)),
    (["HTTP/1.1 200 OK", "Connection: keep-alive, Close", "Content-Length: 1"], b"GET", ("length", 1, False)),
    (["HTTP/1.0 200 OK", "Content-Length: 1"], b"GET", ("length", 1, False)),
])
def test_body_framing_follows_rfc9112_precedence(lines: list[str], method: bytes,
                                                 expected: tuple[str, int, bool]) -> None:
    framing = body_framing(parse_head(head(*lines)), method)
    assert (framing.kind, framing.length, framing.reusable) == expected


@pytest.mark.parametrize("value", ["10, 11", "-1", "0x10", "1e3", "99999999999999999999"])
def test_invalid_or_conflicting_content_length_is_refused(value: str) -> None:
    with pytest.raises(ProtocolError, match="Content-Length"):
        body_framing(parse_head(head("HTTP/1.1 200 OK", f"Content-Length: {value}")), b"GET")


CHUNKED = b"5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nExpires: never\r\n\r\n"


@pytest.mark.parametrize("step", [1, 2, 3, 7, len(CHUNKED)])
def test_chunked_decoder_gives_the_same_body_however_the_bytes_arrive(step: int) -> None:
    decoder, buffer, body = ChunkedDecoder(), bytearray(), b""
    for i in range(0, len(CHUNKED), step):
        buffer += CHUNKED[i:i + step]
        body += b"".join(decoder.feed(buffer))
    assert decoder.done and body == b"hello, world" and buffer == b""


def test_chunked_decoder_leaves_the_next_message_alone() -> None:
    buffer = bytearray(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK")
    decoder = ChunkedDecoder()
    assert decoder.feed(buffer) == [b"abc"] and decoder.done and buffer == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize(("data", "message"), [
    (b"zz\r\n", "invalid chunk size"), (b"3\r\nabcX\r\n", "not followed by CRLF"),
    (b"1" * 5000, "longer than"), (b"0\r\n" + b"T: " + b"x" * 20_000 + b"\r\n", "longer than"),
    (b"0\r\n" + b"T: xxxxxxxx\r\n" * 2000, "trailers larger"),
])
def test_chunked_decoder_refuses_malformed_input(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        ChunkedDecoder().feed(bytearray(data))


def test_request_head_and_header_injection() -> None:
    assert request_head(b"GET", b"/a?b=1", [(b"Host", b"x.test"), (b"User-Agent", b"slip-kit")]) == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: x.test\r\nUser-Agent: slip-kit\r\n\r\n")
    for method, target, headers in [(b"GET", b"/a\r\nX: y", []), (b"GET", b"/a b", []),
                                    (b"GET", b"/", [(b"X", b"1\r\nEvil: 2")]), (b"GE T", b"/", []),
                                    (b"GET", b"/", [(b"Bad Name", b"1")])]:
        with pytest.raises(ValueError):
            request_head(method, target, headers)
