"""Web origins as browsers send them, and the per-key allow-lists they are matched against.

A browser's ``Origin`` header is the ASCII serialisation of a tuple origin (RFC 6454
section 6.2, the Fetch standard): ``scheme "://" host [":" port]``, lower case, the host
in its ASCII (punycode) form, with the default port left out; or the opaque ``null``.

:func:`parse_origin` is the one validator: ``gateway keys create --origin`` refuses what it
refuses (naming the reason), the key stores report stored values it refuses, and CORS
matches ``Origin`` headers through it, so an origin accepted when a key is created is
exactly the one its browsers send. The rules (docs/browser.md):

- scheme ``http`` or ``https``; the host and scheme are lower-cased; a trailing ``/`` is
  dropped; the default port (80, 443) is dropped, any other port must be 1-65535;
- an internationalised host (``bücher.example``) becomes its punycode form
  (``xn--bcher-kva.example``, UTS 46 non-transitional as browsers do); a punycode label
  must decode;
- host labels are letters, digits, ``-`` and ``_`` (browsers send ``_`` unchanged);
  IPv4 in dotted-decimal form, IPv6 in brackets (written compressed);
- refused, with a reason: ``null``, wildcards, user info, paths, queries, fragments,
  other schemes, ports out of range, empty labels, hosts over 253 characters.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

import idna

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_HOST_CHARS = 253
_LABEL = re.compile(r"^[a-z0-9_-]{1,63}$")
_DIGITS = re.compile(r"^[0-9]+$")
_HEX = re.compile(r"^0x[0-9a-f]*$")
_EXAMPLE = "e.g. https://shop.example or http://127.0.0.1:8081"


class OriginError(ValueError):
    """Why a value is not an origin the gateway can match; ``str()`` is the reason."""


def parse_origin(value: str) -> str:
    """The serialised origin of ``value``; raises :class:`OriginError` naming the reason.

    ``HTTPS://Bücher.Example:443/`` -> ``https://xn--bcher-kva.example``.
    """
    text = value.strip()
    if not text:
        raise OriginError(f"empty; expected scheme://host[:port], {_EXAMPLE}")
    if text.lower() == "null":
        raise OriginError(
            "'null' is the opaque origin of sandboxed frames and local files: any such "
            "page would send it, so it cannot be allowed"
        )
    if "*" in text:
        raise OriginError("wildcards are not supported: list each origin")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise OriginError("contains blanks or control characters")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise OriginError(f"expected scheme://host[:port], {_EXAMPLE}")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise OriginError(f"the scheme must be http or https, not {scheme!r}")
    end = next((i for i, c in enumerate(rest) if c in "/?#\\"), len(rest))
    authority, tail = rest[:end], rest[end:]
    if tail not in ("", "/"):
        if tail[0] in "?#":
            raise OriginError("an origin has no query or fragment")
        raise OriginError(
            f"an origin has no path (browsers send only scheme://host[:port]): "
            f"use {scheme}://{authority}"
        )
    if "@" in authority:
        raise OriginError("an origin has no user info (user@ or user:password@)")
    host, port = _split_authority(authority)
    serialised = f"{scheme}://{_host(host)}"
    number = _port(port)
    if number is None or number == DEFAULT_PORTS[scheme]:
        return serialised
    return f"{serialised}:{number}"


def _split_authority(authority: str) -> tuple[str, str]:
    """``(host, port)``; the port is ``""`` when absent (or written as a bare ``:``)."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise OriginError("an IPv6 address must end with ']'")
        host, after = authority[: close + 1], authority[close + 1 :]
        if after and not after.startswith(":"):
            raise OriginError("expected ':port' after the IPv6 address")
        return host, after[1:]
    host, colon, port = authority.partition(":")
    if colon and ":" in port:
        raise OriginError("an IPv6 address must be written in brackets, e.g. http://[::1]:8080")
    return host, port


def _port(port: str) -> int | None:
    if not port:
        return None
    if not _DIGITS.fullmatch(port):
        raise OriginError(f"the port {port!r} is not a number")
    number = int(port) if len(port) <= 6 else 1 << 20
    if not 0 < number < 65536:
        raise OriginError(f"the port {port} is out of range (1-65535)")
    return number


def _host(host: str) -> str:
    if not host:
        raise OriginError("no host")
    if host.startswith("["):
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise OriginError(f"{host} is not an IPv6 address") from None
        if address.scope_id:
            raise OriginError("an IPv6 zone (%...) is never part of an origin")
        return f"[{address.compressed}]"
    if not host.isascii():
        try:  # the mapping browsers apply: case, full-width dots and letters, ...
            host = idna.uts46_remap(host, std3_rules=False, transitional=False)
        except idna.IDNAError as exc:
            raise OriginError(f"{host!r} is not a valid host name: {exc}") from None
    host = host.lower()
    dot = host.endswith(".")  # a fully qualified name: a distinct origin, kept as written
    labels = (host[:-1] if dot else host).split(".")
    if _DIGITS.fullmatch(labels[-1]) or _HEX.fullmatch(labels[-1]):
        return _ipv4(host)  # what browsers parse as an IPv4 address
    ascii_labels = [_label(label) for label in labels]
    out = ".".join(ascii_labels) + ("." if dot else "")
    if len(out) > MAX_HOST_CHARS + dot:
        raise OriginError(f"the host name is longer than {MAX_HOST_CHARS} characters")
    return out


def _ipv4(host: str) -> str:
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise OriginError(
            f"{host} is not an IPv4 address in dotted-decimal form (e.g. 127.0.0.1)"
        ) from None
    return str(address)


def _label(label: str) -> str:
    if not label:
        raise OriginError("the host name has an empty label ('..' or a leading '.')")
    if not label.isascii():
        try:
            return idna.alabel(label).decode("ascii")
        except idna.IDNAError as exc:
            raise OriginError(f"{label!r} is not a valid internationalised label: {exc}") from None
    if not _LABEL.fullmatch(label):
        raise OriginError(
            f"the host label {label!r} may hold only letters, digits, '-' and '_' "
            "(at most 63 characters)"
        )
    if label.startswith("xn--"):
        try:
            idna.ulabel(label)
        except idna.IDNAError:
            raise OriginError(f"{label!r} is not valid punycode") from None
    return label


def invalid_origins(origins: Iterable[str]) -> list[tuple[str, str]]:
    """``(value, reason)`` for each of ``origins`` that :func:`parse_origin` refuses."""
    out = []
    for origin in origins:
        try:
            parse_origin(origin)
        except OriginError as exc:
            out.append((origin, str(exc)))
    return out


@functools.lru_cache(maxsize=4096)
def normalise_origin(value: str) -> str | None:
    """:func:`parse_origin`, or None when ``value`` is not an origin (an ``Origin`` header
    of ``null``, garbage, ...). Remembered: browsers send the same few values again."""
    try:
        return parse_origin(value)
    except OriginError:
        return None


def origin_set(origins: Iterable[str]) -> frozenset[str]:
    """The normalised form of each stored origin. Values :func:`parse_origin` refuses are
    left out here; the key stores report them when they load them."""
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
