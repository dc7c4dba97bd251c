"""URL safety: which URLs a download may touch (schemes, internal addresses, metadata services, allow-list)."""
from __future__ import annotations

import asyncio
import socket

import pytest

from etl.net import urlsafety
from etl.net.urlsafety import BlockedURL, UnresolvableHost, check_url, check_url_async

REFUSED = [
    ("ftp://example.com/x", "scheme ftp not allowed"),
    ("file:///etc/passwd", "scheme file not allowed"),
    ("javascript:alert(1)", "scheme javascript not allowed"),
    ("//example.com/x", "scheme (none) not allowed"),
    ("http:///path-only", "no host"),
    ("http://127.0.0.1/", "loopback address 127.0.0.1"),
    ("http://127.9.9.9:8080/x", "loopback address 127.9.9.9"),
    ("http://[::1]/", "loopback address ::1"),
    ("http://10.0.0.1/", "private address 10.0.0.1"),
    ("http://172.16.5.4/", "private address 172.16.5.4"),
    ("https://192.168.1.1/", "private address 192.168.1.1"),
    ("http://[fc00::1]/", "private address fc00::1"),
    ("http://169.254.10.10/", "link-local address 169.254.10.10"),
    ("http://[fe80::1]/", "link-local address fe80::1"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata address 169.254.169.254"),
    ("http://[fd00:ec2::254]/", "cloud metadata address fd00:ec2::254"),
    ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata host"),
    ("http://METADATA.google.internal./", "cloud metadata host"),
    ("http://100.64.0.1/", "CGNAT address 100.64.0.1"),
    ("http://224.0.0.1/", "multicast address 224.0.0.1"),
    ("http://[ff02::1]/", "multicast address ff02::1"),
    ("http://0.0.0.0/", "unspecified address 0.0.0.0"),
    ("http://[::]/", "unspecified address ::"),
    ("http://240.0.0.1/", "address 240.0.0.1"),
    ("http://[::ffff:127.0.0.1]/", "loopback address 127.0.0.1 (embedded in ::ffff:7f00:1)"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata address 169.254.169.254 (embedded"),
    ("http://[64:ff9b::a00:1]/", "private address 10.0.0.1 (embedded"),
    ("http://[2002:c0a8:101::1]/", "private address 192.168.1.1 (embedded"),
    # spellings the resolver turns into 127.0.0.1: caught because the resolved address is checked
    ("http://2130706433/", "host resolves to loopback address 127.0.0.1"),
    ("http://0x7f.1/", "host resolves to loopback address 127.0.0.1"),
    ("http://localhost:9/", "host resolves to loopback address"),
    ("http://1.2.3.4:99999/", "malformed URL"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused(url: str, reason: str) -> None:
    with pytest.raises(BlockedURL) as info:
        check_url(url)
    assert reason in info.value.reason
    assert info.value.url == url


@pytest.mark.parametrize(("url", "reason"), REFUSED[:12:3] + REFUSED[-4:-1])
def test_refused_async(url: str, reason: str) -> None:
    with pytest.raises(BlockedURL) as info:
        asyncio.run(check_url_async(url))
    assert reason in info.value.reason


@pytest.mark.parametrize("url", ["http://93.184.215.14/img.jpg", "https://[2606:4700:4700::1111]/",
                                 "HTTPS://8.8.8.8:8443/a?b=c", "http://[::ffff:8.8.8.8]/"])
def test_public_literals_pass(url: str) -> None:
    check_url(url)
    asyncio.run(check_url_async(url))


@pytest.mark.parametrize(("url", "allow"), [
    ("http://127.0.0.1:8000/x", ["127.0.0.1"]),
    ("http://[::1]:8000/", ["::1"]),
    ("http://[::1]:8000/", ["[::1]"]),
    ("http://LocalHost/", ["localhost"]),
    ("http://metadata.google.internal/", ["metadata.google.internal"]),
    ("http://10.1.2.3/", ["10.1.2.3"]),
])
def test_allowed_hosts_pass(url: str, allow: list[str]) -> None:
    check_url(url, allow_hosts=allow)
    asyncio.run(check_url_async(url, allow_hosts=allow))


@pytest.mark.parametrize(("url", "allow"), [
    ("http://localhost/", ["127.0.0.1"]),      # the allow-list names hosts exactly, not what they resolve to
    ("http://127.0.0.2/", ["127.0.0.1"]),
    ("http://10.1.2.3/", ["10.1.2.0/24"]),
    ("ftp://127.0.0.1/", ["127.0.0.1"]),        # the scheme rule holds for allowed hosts too
])
def test_allow_list_is_exact(url: str, allow: list[str]) -> None:
    with pytest.raises(BlockedURL):
        check_url(url, allow_hosts=allow)


def test_unresolvable_host_is_not_a_block() -> None:
    for check in (check_url, lambda u: asyncio.run(check_url_async(u))):
        with pytest.raises(UnresolvableHost) as info:
            check("http://no-such-host.invalid/x")
        assert not isinstance(info.value, BlockedURL)
        assert info.value.host == "no-such-host.invalid"


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    """Make chosen names resolve to chosen addresses (the resolver is the input here, not the code under test)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kw):  # type: ignore[no-untyped-def]
        if host in answers:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                    for a in answers[host]]
        return real(host, port, *args, **kw)

    monkeypatch.setattr(urlsafety.socket, "getaddrinfo", getaddrinfo)


def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"mixed.example": ["93.184.215.14", "10.0.0.7"],
                            "v6.example": ["2606:4700::1", "fe80::3"],
                            "public.example": ["93.184.215.14", "2606:4700::1"]})
    with pytest.raises(BlockedURL, match="host resolves to private address 10.0.0.7"):
        check_url("https://mixed.example/a.jpg")
    with pytest.raises(BlockedURL, match="link-local address fe80::3"):
        asyncio.run(check_url_async("https://v6.example/a.jpg"))
    check_url("https://public.example/a.jpg")
    assert urlsafety.resolve_checked("public.example", 443) == ["93.184.215.14", "2606:4700::1"]


def test_passed_hosts_skip_repeat_lookups_but_never_remember_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    answers = {"cdn.example": ["93.184.215.14"], "inner.example": ["10.0.0.7"]}

    def getaddrinfo(host, port, *args, **kw):  # type: ignore[no-untyped-def]
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(urlsafety.socket, "getaddrinfo", getaddrinfo)
    passed = urlsafety.PassedHosts(ttl_s=60.0)
    for i in range(5):
        asyncio.run(check_url_async(f"https://cdn.example/{i}.jpg", passed=passed))
    assert lookups == ["cdn.example"]
    with pytest.raises(BlockedURL):  # the scheme rule is checked on every URL, remembered host or not
        asyncio.run(check_url_async("ftp://cdn.example/x.jpg", passed=passed))
    for _ in range(2):
        with pytest.raises(BlockedURL):
            asyncio.run(check_url_async("https://inner.example/x.jpg", passed=passed))
    assert lookups == ["cdn.example", "inner.example", "inner.example"]
    expired = urlsafety.PassedHosts(ttl_s=0.0)
    asyncio.run(check_url_async("https://cdn.example/a.jpg", passed=expired))
    asyncio.run(check_url_async("https://cdn.example/b.jpg", passed=expired))
    assert lookups.count("cdn.example") == 3
