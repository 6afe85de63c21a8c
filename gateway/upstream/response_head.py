"""What a final response head must satisfy before its answer is delivered: exact framing
(RFC 9112 section 6) and, when the upstream echoes it, the request's own ``X-Request-Id``.

Pure functions over the status and the parsed headers, shared by every transport.
"""

from __future__ import annotations

from multidict import MultiMapping

from gateway.upstream.base import RequestIdMismatch, RequestIdMissing, UpstreamProtocolError

#: statuses whose response never has a body, whatever its headers say
BODILESS_STATUSES = frozenset({204, 304})
#: a length of 19 digits would not fit in 64 bits: no answer the gateway takes is near it
_MAX_LENGTH_DIGITS = 18


def transfer_codings(values: list[str]) -> list[str]:
    """The codings of every ``Transfer-Encoding`` field in order: comma-separated,
    case-insensitive, empty list elements ignored (RFC 9110 section 5.6.1)."""
    return [
        coding.strip().lower() for value in values for coding in value.split(",") if coding.strip()
    ]


def check_framing(status: int, headers: MultiMapping[str]) -> bool:
    """Raise :class:`UpstreamProtocolError` for framing the gateway refuses; return true
    when a bodiless status (204, 304) declares a length anyway (its connection must not
    be reused: whatever body follows would be read as the next answer).

    The gateway never sends ``TE``, so the only transfer coding it accepts is ``chunked``,
    alone; both ``Transfer-Encoding`` and ``Content-Length`` is the smuggling pattern
    (RFC 9112 section 6.3) and refused, as is more than one ``Content-Length`` field or
    one that is not a plain decimal number."""
    te = headers.getall("Transfer-Encoding", ())
    lengths = headers.getall("Content-Length", ())
    if te:
        codings = transfer_codings(te)
        if codings != ["chunked"]:
            raise UpstreamProtocolError(
                f"Transfer-Encoding {', '.join(codings) or '(empty)'}: only chunked, once, "
                "is accepted"
            )
        if lengths:
            raise UpstreamProtocolError("both Transfer-Encoding and Content-Length")
    if lengths:
        if len(lengths) > 1:
            raise UpstreamProtocolError("more than one Content-Length field")
        value = lengths[0]
        if not (value.isascii() and value.isdigit()) or len(value) > _MAX_LENGTH_DIGITS:
            raise UpstreamProtocolError("Content-Length is not a decimal number")
    return status in BODILESS_STATUSES and bool(te or lengths)


def check_echo(headers: MultiMapping[str], request_id: str | None, *, required: bool) -> bool:
    """True when the answer echoes ``request_id`` as its one ``X-Request-Id``: proof that
    it answers that request. An echo of anything else raises :class:`RequestIdMismatch`;
    no echo raises :class:`RequestIdMissing` when ``required``, else proves nothing.
    A request sent without an id can be proved by nothing; an id echoed to it is some
    other request's."""
    echoed = headers.getall("X-Request-Id", ())
    if not echoed:
        if required and request_id is not None:
            raise RequestIdMissing("the answer does not echo the request's X-Request-Id")
        return False
    # a field value never has leading or trailing whitespace (RFC 9110 section 5.5)
    if request_id is None or len(echoed) != 1 or echoed[0].strip(" \t") != request_id:
        raise RequestIdMismatch("the answer echoes another request's X-Request-Id")
    return True
