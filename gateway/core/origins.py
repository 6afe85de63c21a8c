"""Web origins as browsers send them, and the per-key allow-lists they are matched against.

A browser's ``Origin`` header is the ASCII serialisation of a tuple origin (RFC 6454
section 6.2, the Fetch standard): ``scheme "://" host [":" port]``, lower case, with the
default port left out, or the opaque ``null``. Keys store origins as operators typed
them, so both sides are brought to that serialisation before they are compared; nothing
else (paths, wildcards, ``null``) ever matches.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

DEFAULT_PORTS = {"http": 80, "https": 443}
_ORIGIN = re.compile(
    r"^(?P<scheme>https?)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?/?$"
)


def normalise_origin(value: str) -> str | None:
    """The serialised origin of ``value``, or None when it is not an http(s) origin.

    ``HTTPS://Shop.Example:443/`` -> ``https://shop.example``; ``null``, paths, user
    info, other schemes and out-of-range ports give None.
    """
    match = _ORIGIN.fullmatch(value.strip().lower())
    if match is None:
        return None
    scheme, host, port = match["scheme"], match["host"], match["port"]
    if not host.strip(".") or ".." in host:
        return None
    if port is None:
        return f"{scheme}://{host}"
    number = int(port)
    if not 0 < number < 65536:
        return None
    if number == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{number}"


def origin_set(origins: Iterable[str]) -> frozenset[str]:
    """The normalised form of each stored origin; unusable entries are dropped."""
    out = (normalise_origin(origin) for origin in origins)
    return frozenset(origin for origin in out if origin is not None)


@functools.lru_cache(maxsize=1024)
def stored_origin_set(origins: tuple[str, ...]) -> frozenset[str]:
    """:func:`origin_set` of a key record's origins, remembered: records are immutable and
    their origins are checked on every request of their key."""
    return origin_set(origins)


def origin_allowed(origin: str, allowed: frozenset[str]) -> bool:
    """Whether the ``Origin`` header value ``origin`` is one of ``allowed`` (normalised)."""
    normalised = normalise_origin(origin)
    return normalised is not None and normalised in allowed
