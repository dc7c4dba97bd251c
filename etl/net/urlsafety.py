"""Which URLs a download may touch: http(s) only, and never an internal address unless the user allowed the host.

Metadata files and image URLs come from third parties, so a URL (or a redirect) pointing at 127.0.0.1, a private
network or a cloud metadata service must not be fetched: that would let a dataset probe the machine building it.

Rules, in order:
1. scheme http or https, and a host;
2. a host in `allow_hosts` (exact host name or IP literal, case-insensitive) passes without further checks;
3. the metadata host names (`metadata.google.internal`, ...) are refused by name;
4. an IP literal is checked directly; a name is resolved (getaddrinfo, every address) and refused if ANY address is
   loopback, private, link-local, multicast, reserved, unspecified, CGNAT (100.64/10), a cloud metadata address, or
   otherwise not globally routable; IPv6 addresses embedding an IPv4 one (IPv4-mapped, 6to4, NAT64) are judged by
   the embedded address as well.

DNS rebinding: `check_url` alone has the usual gap (a name may resolve to a public address when checked and to
127.0.0.1 when the client connects). `etl.net.http` closes it: its clients connect through `resolve_checked`, which
resolves once, checks every address and connects to exactly those checked addresses, so the address vetted is the
address used.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Collection
from urllib.parse import urlsplit

import anyio.to_thread

ALLOWED_SCHEMES = ("http", "https")
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
METADATA_ADDRESSES = frozenset({
    ipaddress.ip_address("169.254.169.254"),   # AWS, GCP, Azure, OpenStack, ...
    ipaddress.ip_address("169.254.170.2"),     # AWS ECS task metadata
    ipaddress.ip_address("100.100.100.200"),   # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),     # AWS IMDS over IPv6
})
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedURL(Exception):
    """A URL the safety rules refuse; `.reason` is short text for a status column or a log line."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"refused {url}: {reason}")
        self.url = url
        self.reason = reason


class UnresolvableHost(Exception):
    """The host name does not resolve: a connection problem (retriable, maybe offline), not a refusal."""

    def __init__(self, host: str, detail: str) -> None:
        super().__init__(f"cannot resolve host {host!r}: {detail}")
        self.host = host
        self.detail = detail


def normalize_host(host: str) -> str:
    """Lower-case, no IPv6 brackets, no trailing dot: the form `allow_hosts` entries are compared in."""
    return host.strip().strip("[]").rstrip(".").lower()


def address_problem(ip: IPAddress) -> str | None:
    """Why connecting to `ip` is refused ("loopback address 127.0.0.1", ...), or None when it is fine."""
    if ip in METADATA_ADDRESSES:
        return f"cloud metadata address {ip}"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        if embedded is not None:
            problem = address_problem(embedded)
            return f"{problem} (embedded in {ip})" if problem else None
    for kind, hit in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                      ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                      ("CGNAT", ip in CGNAT), ("private", ip.is_private), ("reserved", ip.is_reserved),
                      ("non-global", not ip.is_global)):
        if hit:
            return f"{kind} address {ip}"
    return None


def _parse(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL, or BlockedURL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BlockedURL(url, f"malformed URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise BlockedURL(url, f"scheme {scheme or '(none)'} not allowed")
    host = normalize_host(parts.hostname or "")
    if not host:
        raise BlockedURL(url, "no host")
    return host, port or (443 if scheme == "https" else 80)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _allowed(host: str, allow_hosts: Collection[str]) -> bool:
    return host in {normalize_host(h) for h in allow_hosts}


def resolve_checked(host: str, port: int, allow_hosts: Collection[str] = (), url: str | None = None) -> list[str]:
    """Resolve `host` and return its addresses, all vetted; raise BlockedURL if any is refused.

    An allowed host is returned as is (the system resolver connects to it). The HTTP clients connect to exactly
    the returned addresses, which is what closes the DNS-rebinding gap.
    """
    host = normalize_host(host)
    url = url or host
    if _allowed(host, allow_hosts):
        return [host]
    if host in METADATA_HOSTS:
        raise BlockedURL(url, "cloud metadata host")
    literal = _literal(host)
    if literal is not None:
        problem = address_problem(literal)
        if problem:
            raise BlockedURL(url, problem)
        return [str(literal)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise UnresolvableHost(host, str(exc)) from None
    addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    if not addresses:
        raise UnresolvableHost(host, "no addresses")
    for addr in addresses:
        problem = address_problem(ipaddress.ip_address(addr))
        if problem:
            raise BlockedURL(url, f"host resolves to {problem}")
    return addresses


def check_url(url: str, allow_hosts: Collection[str] = ()) -> None:
    """Raise BlockedURL if `url` may not be fetched, UnresolvableHost if its host does not resolve."""
    host, port = _parse(url)
    resolve_checked(host, port, allow_hosts, url=url)


async def resolve_checked_async(host: str, port: int, allow_hosts: Collection[str] = (),
                                url: str | None = None) -> list[str]:
    """`resolve_checked` without blocking the event loop (getaddrinfo runs in a worker thread)."""
    host = normalize_host(host)
    if _allowed(host, allow_hosts) or _literal(host) is not None or host in METADATA_HOSTS:
        return resolve_checked(host, port, allow_hosts, url)
    return await anyio.to_thread.run_sync(resolve_checked, host, port, allow_hosts, url)


async def check_url_async(url: str, allow_hosts: Collection[str] = (), passed: PassedHosts | None = None) -> None:
    """`check_url` for async code; with `passed`, a host that passed within its TTL is not resolved again."""
    host, port = _parse(url)
    if passed is not None and passed.fresh(host, port):
        return
    await resolve_checked_async(host, port, allow_hosts, url=url)
    if passed is not None:
        passed.add(host, port)


class PassedHosts:
    """Hosts whose check passed in the last `ttl_s` seconds (refusals are never remembered).

    A crawl sends thousands of requests to one CDN host over keep-alive connections; checking each URL would cost
    a DNS lookup in a thread per image. Skipping the repeat is safe because the check before a request is only the
    early, clearly-worded refusal: every new connection is still resolved and checked when it is opened
    (`etl.net.http`), so a host that starts resolving to an internal address is refused there.
    """

    def __init__(self, ttl_s: float = 60.0, max_hosts: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_hosts = max_hosts
        self._until: dict[tuple[str, int], float] = {}

    def fresh(self, host: str, port: int) -> bool:
        return self._until.get((host, port), 0.0) > time.monotonic()

    def add(self, host: str, port: int) -> None:
        if len(self._until) >= self.max_hosts:
            self._until.clear()
        self._until[(host, port)] = time.monotonic() + self.ttl_s
