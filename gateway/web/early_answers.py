"""Answers the listener gives before the application sees a request.

aiohttp's HTTP parser refuses malformed requests itself (a header line too long, both
``Content-Length`` and ``Transfer-Encoding``, an obs-fold, a bad chunk size, ...). Its
own answer is ``text/plain`` HTTP/1.0 quoting the offending bytes back, which may hold the
caller's key. :func:`parse_refusal` turns the parser's exception into a problem with a
fixed detail instead: the parser's reason when it is one of llhttp's fixed phrases, never
a byte of the request.

:func:`problem_bytes` writes a complete HTTP/1.1 problem answer for the moments there is
no request to answer through aiohttp: a refused connection, a request head that did not
arrive in time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus

import orjson
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    InvalidURLError,
    LineTooLong,
)

from gateway.errors import ProblemError
from gateway.web.responses import NO_STORE, NOSNIFF

#: aiohttp's limits, made explicit: the request target (URL) and one header line (name
#: and value) in bytes, and the number of header fields. The request-target limit is
#: one more than a header line's, so a :class:`LineTooLong` tells which one it was.
MAX_HEADER_LINE_BYTES = 8190
MAX_REQUEST_TARGET_BYTES = 8191
MAX_HEADER_FIELDS = 128
SERVER = "agent-gateway"

#: what llhttp reasons look like: a short English phrase (they are fixed C strings; the
#: pattern keeps anything else out of an answer)
_REASON = re.compile(r"[A-Z][A-Za-z0-9 '`,._-]{2,79}")
_LLHTTP_SEPARATOR = ":\n\n  "


def parse_refusal(exc: BaseException) -> ProblemError:
    """The problem answering a request the HTTP parser refused: 400, or 431 for a header
    line or section too large (RFC 6585). An over-long request target is a 400 too:
    every route documents 400 for a malformed request, and clients treat it so."""
    if isinstance(exc, LineTooLong):
        limit = str(exc.args[1]) if len(exc.args) > 1 else ""
        if limit == str(MAX_REQUEST_TARGET_BYTES):
            return ProblemError(
                "invalid_request", f"the request target is longer than {limit} bytes"
            )
        return ProblemError(
            "header_fields_too_large", f"a header line is longer than {limit or '?'} bytes"
        )
    if isinstance(exc, BadHttpMethod):
        return ProblemError("invalid_request", "the request method is not valid")
    if isinstance(exc, BadStatusLine):
        return ProblemError("invalid_request", "the request line is not valid HTTP/1.1")
    if isinstance(exc, InvalidURLError):
        return ProblemError("invalid_request", "the request target is not valid")
    if isinstance(exc, BadHttpMessage):
        message = exc.message
        if message.startswith("Too many headers"):
            return ProblemError(
                "header_fields_too_large", f"more than {MAX_HEADER_FIELDS} header fields"
            )
        if message.startswith("Missing 'Host' header"):
            return ProblemError("invalid_request", "the Host header is missing")
        if message.startswith("Duplicate '"):
            return ProblemError("invalid_request", "a header that may appear once is repeated")
        reason, separator, _ = message.partition(_LLHTTP_SEPARATOR)
        if separator and _REASON.fullmatch(reason):
            return ProblemError("invalid_request", f"the request is malformed: {reason}")
    return ProblemError("invalid_request", "the request is malformed")


def problem_bytes(
    err: ProblemError, request_id: str, headers: Mapping[str, str] | None = None
) -> bytes:
    """A whole ``Connection: close`` HTTP/1.1 answer carrying ``err``."""
    body = orjson.dumps(err.body())
    fields = {
        "Content-Type": "application/problem+json",
        "Content-Length": str(len(body)),
        **NO_STORE,
        "Connection": "close",
        "Date": formatdate(usegmt=True),
        "Server": SERVER,
        "X-Request-Id": request_id,
        **NOSNIFF,
        **(headers or {}),
    }
    lines = [f"HTTP/1.1 {err.status} {HTTPStatus(err.status).phrase}"]
    lines.extend(f"{name}: {value}" for name, value in fields.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
