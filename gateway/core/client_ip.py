"""The client's IP address, believing ``X-Forwarded-For`` only through trusted proxies.

Walk the chain from the nearest hop outwards: the TCP peer first, then the
``X-Forwarded-For`` entries right to left. The first address that is not a trusted proxy is
the client. Entries left of it were written by the client and are ignored, so a client
cannot choose its own address by sending the header itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

Network = IPv4Network | IPv6Network


class ForwardedForError(ValueError):
    """A trusted proxy passed a malformed ``X-Forwarded-For``."""


#: parsing and printing addresses costs microseconds; the same peers come back all the time
CACHED_ADDRESSES = 4096


@lru_cache(maxsize=CACHED_ADDRESSES)
def _parse(value: str) -> IPv4Address | IPv6Address:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "203.0.113.7:5000"
        value = value.split(":", 1)[0]
    ip = ip_address(value)
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=CACHED_ADDRESSES)
def _text(ip: IPv4Address | IPv6Address) -> str:
    return str(ip)


def _trusted(ip: IPv4Address | IPv6Address, networks: Sequence[Network]) -> bool:
    return any(ip in net for net in networks)


def is_trusted_peer(peer: str | None, trusted: Sequence[Network]) -> bool:
    """Is the TCP peer one of the trusted proxies (IPv4-mapped addresses included)?"""
    if not peer or not trusted:
        return False
    try:
        return _trusted(_parse(peer), trusted)
    except ValueError:
        return False


def resolve_client_ip(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str:
    """``forwarded_for`` holds every ``X-Forwarded-For`` header value in order."""
    if not peer:
        return "unknown"
    try:
        current = _parse(peer)
    except ValueError:
        return peer
    if not trusted or not _trusted(current, trusted):
        return _text(current)
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            current = _parse(hop)
        except ValueError:
            raise ForwardedForError(
                f"malformed X-Forwarded-For entry {hop.strip()[:64]!r}"
            ) from None
        if not _trusted(current, trusted):
            return _text(current)
    return _text(current)
