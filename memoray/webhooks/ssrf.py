"""Which webhook targets may be called (server-side request forgery guard).

Checked twice: when a subscription is created (the URL, and the addresses its host resolves to
then) and again at every delivery, against the addresses the host resolves to *now*; the
delivery then connects to the address that was checked (never a second lookup), so a DNS answer
that changes between the check and the connection (rebinding) cannot reach a refused address.

Refused unless the operator allows them: plain http (except to loopback when loopback is
allowed), loopback, and every address that is not globally routable (private 10/8, 172.16/12,
192.168/16, carrier-grade NAT 100.64/10, link-local 169.254/16 with the cloud metadata address
169.254.169.254, IPv6 unique-local and link-local, multicast, reserved, unspecified). IPv4
addresses mapped into IPv6 are judged as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL = 2048
Resolver = Callable[[str, int], list[str]]


class TargetRefused(ValueError):
    """The URL or the address it resolves to is not allowed."""


@dataclass(frozen=True)
class Policy:
    allow_loopback: bool = False   # tests, and a receiver on the same machine
    allow_http: bool = False       # plain http to any allowed host
    allow_private: bool = False    # private, link-local, CGNAT, unique-local ranges


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str     # as written in the URL (the Host header and TLS server name)
    port: int
    path: str     # path and query


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse(url: str, policy: Policy) -> Target:
    """The URL's parts, or TargetRefused: scheme, credentials, length, host form."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise TargetRefused(f"url: must be 1-{MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"url: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise TargetRefused("url: only https (or http to loopback in tests) is allowed")
    if parts.username or parts.password:
        raise TargetRefused("url: credentials in the URL are not allowed (the signature "
                            "authenticates deliveries)")
    host = (parts.hostname or "").lower()
    if not host:
        raise TargetRefused("url: no host")
    if parts.fragment:
        raise TargetRefused("url: no fragment allowed")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    target = Target(scheme, host, port or (443 if scheme == "https" else 80), path)
    if scheme == "http" and not policy.allow_http:
        ip = _ip(host)
        local = host == "localhost" or (ip is not None and ip.is_loopback)
        if not (local and policy.allow_loopback):
            raise TargetRefused("url: only https targets are allowed (http only to loopback, "
                                "when the operator allows loopback)")
    literal = _ip(host)
    if literal is not None:
        check_address(str(literal), policy)
    return target


def check_address(address: str, policy: Policy) -> None:
    """Raise TargetRefused unless `address` (an IP) is one deliveries may connect to."""
    ip = _ip(address)
    if ip is None:
        raise TargetRefused(f"address {address!r} is not an IP address")
    if ip.is_loopback:
        if policy.allow_loopback:
            return
        raise TargetRefused(f"{ip} is a loopback address (not allowed)")
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        raise TargetRefused(f"{ip} is not a routable address")
    if not ip.is_global:
        if policy.allow_private:
            return
        kind = "link-local/metadata" if ip.is_link_local else "private"
        raise TargetRefused(f"{ip} is a {kind} address (not allowed)")


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def resolve(target: Target, policy: Policy, resolver: Resolver = system_resolver) -> str:
    """The one address to connect to: every address the host resolves to must be allowed (a
    host that also resolves to a refused address is refused whole)."""
    literal = _ip(target.host)
    if literal is not None:
        check_address(str(literal), policy)
        return str(literal)
    try:
        addresses = resolver(target.host, target.port)
    except OSError as exc:
        raise TargetRefused(f"{target.host}: does not resolve ({exc})") from None
    if not addresses:
        raise TargetRefused(f"{target.host}: does not resolve")
    for a in addresses:
        check_address(a, policy)
    return addresses[0]


def pinned_url(target: Target, address: str) -> str:
    """The URL with its host replaced by the checked address (Host header and TLS server name
    stay the original host)."""
    ip = _ip(address)
    host = f"[{address}]" if ip is not None and ip.version == 6 else address
    return f"{target.scheme}://{host}:{target.port}{target.path}"
