"""Which addresses a webhook may be sent to: checked when an endpoint is registered and again on
every connection, on the very address connected to (DNS can change between the two).

Link-local addresses (169.254.0.0/16, fe80::/10) and the cloud metadata services are always
refused, as are multicast, unspecified and reserved addresses. Loopback, private and other
non-public ranges are refused unless ``CANDOR_WEBHOOK_ALLOW_PRIVATE`` is set.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class RefusedAddress(Exception):
    """A webhook URL that must not be called; the message says which address and why."""


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refusal(ip: IPAddress, allow_private: bool) -> str | None:
    """Why ``ip`` may not be called (a phrase such as "a link-local address"), or None."""
    inner = _embedded_v4(ip)
    if inner is not None:
        return refusal(inner, allow_private)
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast or ip.is_unspecified:
        return "not a unicast address"
    if ip.is_loopback:  # before is_reserved, which ::1 is too
        return None if allow_private else "a loopback address"
    if ip.is_reserved:
        return "not a unicast address"
    if ip.is_global or allow_private:
        return None
    return "a private address"


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal is its own address)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RefusedAddress(f"host {host} does not resolve") from exc
    # getaddrinfo may return an IPv6 address with a zone ("fe80::1%eth0")
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))


def check_host(host: str, port: int, allow_private: bool) -> list[IPAddress]:
    """The addresses of ``host``, all of them allowed; RefusedAddress when any one is not."""
    addresses = resolve(host, port)
    for ip in addresses:
        why = refusal(ip, allow_private)
        if why is not None:
            hint = "" if "private" not in why and "loopback" not in why else " (CANDOR_WEBHOOK_ALLOW_PRIVATE allows it)"
            shown = host if host.strip("[]") == str(ip) else f"{host} resolves to {ip}, which"
            raise RefusedAddress(f"{shown} is {why}{hint}")
    if not addresses:
        raise RefusedAddress(f"host {host} does not resolve")
    return addresses


def target(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; RefusedAddress for any other URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedAddress("the URL is malformed") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedAddress("the URL must be http:// or https:// with a host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def check_url(url: str, allow_private: bool) -> None:
    """RefusedAddress unless ``url`` is http(s) with a host whose every address is allowed now."""
    check_host(*target(url), allow_private)
