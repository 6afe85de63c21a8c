"""The access line: one per answered request, written without the generic processor chain.

Every request writes this line, and the generic structlog chain (context merge, level,
ISO timestamp, redaction walking every field, rendering) costs several microseconds per
line. With the JSON format (:func:`gateway.observability.logging.configure`) the line is
built here instead: the same fields in the same order, the same level and timestamp
format, one ``orjson.dumps``, written through the same loop-batched writer. With any other
set-up (the console format, or another configuration in force: tests reset structlog or
capture its events) the line goes through structlog as every other event does.

Redaction stays: each field either cannot hold a secret by construction (see
:func:`emit`) or goes through :data:`~gateway.observability.redaction.REDACTOR` like every
other field of every other line. No context variable is merged into this line: the only
one the gateway binds is the request id, which the line carries anyway (and which is
unbound before the line is written, as it always was).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import orjson
import structlog

from gateway.observability.labels import METHODS
from gateway.observability.logging import access_writer
from gateway.observability.redaction import REDACTOR

EVENT = "request"
_structlog_access = structlog.get_logger("gateway.access")


class _Second:
    """The formatted date and time of the last whole second seen (lines come in bursts)."""

    number = -1
    text = ""


def iso_utc_now(now_ns: int | None = None) -> str:
    """``datetime.now(UTC).isoformat()`` with ``Z`` for ``+00:00``, as structlog's
    ``TimeStamper(fmt="iso", utc=True)`` writes it (no fraction on a whole second), with
    the date formatted once per second rather than once per line."""
    second, rest = divmod(time.time_ns() if now_ns is None else now_ns, 1_000_000_000)
    if second != _Second.number:
        _Second.text = datetime.fromtimestamp(second, UTC).isoformat()[: -len("+00:00")]
        _Second.number = second
    micros = rest // 1000  # datetime.now() floors to the microsecond as well
    if micros:
        return f"{_Second.text}.{micros:06d}Z"
    return _Second.text + "Z"


def emit(
    *,
    request_id: str,
    request_id_generated: bool,
    method: str,
    route: str,
    status: int,
    duration_ms: float,
    client_ip: str | None,
    key_id: str | None,
    token_hash: str | None,
    error: str | None,
) -> None:
    """Write the access line of one request.

    On the fast path these fields are written as they are, because none can carry a
    secret: a request id the gateway generated (random hex), a standard method name, the
    route (a template from the code or the configuration, never the request's path),
    numbers, the key id (always one matching the key id pattern: from a key record, a
    well-formed key or a token this gateway signed), the token hash (12 hex digits) and
    the error (a problem code). A request id taken from a trusted proxy, any other
    method and the client address go through the redactor.
    """
    sink = access_writer()
    if sink is None:  # console format, or another configuration in force (tests)
        _structlog_access.info(
            EVENT,
            request_id=request_id,
            method=method,
            route=route,
            status=status,
            duration_ms=duration_ms,
            client_ip=client_ip,
            key_id=key_id,
            token_hash=token_hash,
            error=error,
        )
        return
    text = REDACTOR.text
    line = {
        "request_id": request_id if request_id_generated else text(request_id),
        "method": method if method in METHODS else text(method),
        "route": route,
        "status": status,
        "duration_ms": duration_ms,
        "client_ip": text(client_ip) if client_ip is not None else None,
        "key_id": key_id,
        "token_hash": token_hash,
        "error": error,
        "event": EVENT,
        "level": "info",
        "timestamp": iso_utc_now(),
    }
    sink.msg(orjson.dumps(line))
