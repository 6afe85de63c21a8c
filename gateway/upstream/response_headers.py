"""Which of the upstream's response headers reach clients: an allow-list.

The gateway answers on its own origin, so any header the upstream sets would be the
gateway's: ``Strict-Transport-Security: max-age=0``, ``WWW-Authenticate``, ``Location``,
``Set-Cookie``, ``X-Accel-Redirect``, CORS fields. Only the fields that describe the
relayed body, and those a conditional or retried request needs, pass; everything else is
dropped, on the public and the private routes alike. Operators may name more
(``upstream.relay_headers``), never one the gateway must own.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, MultiMapping

#: relayed to clients as the upstream sent them
RELAYED_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Content-Language",
    "ETag",
    "Last-Modified",
    "Retry-After",
)
#: never relayed, whatever the configuration says: framing and connection management,
#: what the gateway decides itself, and what would act on the gateway's origin
NEVER_RELAYED = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "set-cookie",
        "set-cookie2",
        "server",
        "date",
        "x-request-id",
        "cache-control",
        "vary",
        "strict-transport-security",
        "www-authenticate",
        "x-accel-redirect",
        "ratelimit",
        "ratelimit-policy",
    }
)
NEVER_RELAYED_PREFIXES = ("access-control-", "x-accel-")


def never_relayed(name: str) -> bool:
    lowered = name.lower()
    return lowered in NEVER_RELAYED or lowered.startswith(NEVER_RELAYED_PREFIXES)


class ResponseHeaderPolicy:
    """The allow-list, with the operator's additions."""

    __slots__ = ("_allowed",)

    def __init__(self, extra: Iterable[str] = ()) -> None:
        names = [*RELAYED_RESPONSE_HEADERS, *extra]
        bad = [name for name in names if never_relayed(name)]
        if bad:
            raise ValueError(f"never relayed: {', '.join(bad)}")
        self._allowed = frozenset(name.lower() for name in names)

    @property
    def allowed(self) -> frozenset[str]:
        return self._allowed

    def relayable(self, headers: MultiMapping[str]) -> CIMultiDict[str]:
        """The fields of ``headers`` that clients may see, in their order; a field the
        ``Connection`` header names is hop-by-hop (RFC 9110 section 7.6.1), never one."""
        allowed = self._allowed
        if "Connection" in headers:
            allowed = allowed - {
                token.strip().lower()
                for value in headers.getall("Connection")
                for token in value.split(",")
            }
        return CIMultiDict(
            [(name, value) for name, value in headers.items() if name.lower() in allowed]
        )
