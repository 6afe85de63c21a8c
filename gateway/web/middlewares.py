"""The request middleware: context, problem+json errors, the access line and metrics.

:func:`make_context_middleware` is the application's only middleware. It gives every
request an id (bound for the request's log lines) and a client IP, asks the load shedding
(:mod:`gateway.web.overload`) for a place before the handler, turns every error into
``application/problem+json``, writes the access line and records the request's metrics
(a request the client abandons, or that shutdown cancels, is logged with status 499).
``X-Request-Id`` is added by the ``on_response_prepare`` hook
(:func:`make_response_hook`), so streamed and error responses carry it too.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from gateway.core.client_ip import (
    ForwardedForError,
    Network,
    is_trusted_peer,
    resolve_client_ip,
)
from gateway.errors import ProblemError
from gateway.observability import access_log
from gateway.observability.decision_log import CURRENT as CURRENT_DECISION
from gateway.observability.decision_log import Decision, DecisionLog
from gateway.observability.health import Health
from gateway.observability.logging import context_var
from gateway.observability.metrics import Metrics
from gateway.web.early_answers import SERVER
from gateway.web.overload import Shedder
from gateway.web.responses import problem_response
from gateway.web.state import (
    CLIENT_IP,
    KEY_ID,
    REQUEST_ID,
    REQUEST_STARTED,
    TOKEN_HASH,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ResponseHook = Callable[[web.BaseRequest, web.StreamResponse], Awaitable[None]]
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: the status logged for a request whose handler was cancelled (client gone, shutdown)
CLIENT_CLOSED = 499
#: a body aiohttp could not decode (its Content-Encoding): the connection ends with it
BODY_UNREADABLE = ProblemError(
    "invalid_request", "the request body could not be decoded", {"Connection": "close"}
)

log = structlog.get_logger("gateway")


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    400: "invalid_request",
}


def http_problem(exc: web.HTTPException) -> tuple[str, web.Response]:
    """The problem code and answer for an aiohttp error (404, 405, 413, ...)."""
    code = _HTTP_CODES.get(exc.status)
    if code is None:
        code = "internal_error" if exc.status >= 500 else "invalid_request"
    detail = exc.reason or exc.text or ""
    if exc.status == 413:
        detail = "the request body is too large"
    headers = {}
    if exc.status == 405 and "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    response = problem_response(ProblemError(code, detail, headers))
    response.set_status(exc.status)
    return code, response


#: merged into every structlog line written while a request is being handled
REQUEST_ID_VAR = context_var("request_id")


def new_request_id() -> str:
    """96 random bits as 24 hex digits. Not a secret (every answer carries it), so the
    process's PRNG does: no system call per request."""
    return f"{random.getrandbits(96):024x}"


def make_context_middleware(
    trusted: Sequence[Network],
    metrics: Metrics,
    shedder: Shedder | None = None,
    decisions: DecisionLog | None = None,
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """``shedder``: load shedding (gateway.web.overload), asked for a place right before
    the handler, after the request id and the client address only. ``decisions``: the
    decision log (gateway.observability.decision_log), when on."""

    @web.middleware
    async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request[REQUEST_STARTED] = started
        metrics.request_started()
        if shedder is not None:
            arrived = getattr(request.protocol, "arrived", None)
            if arrived is not None:  # the listener counted it as on its way to the shedding
                arrived()
        peer = request.remote
        headers = request.headers
        incoming = headers.get("X-Request-Id", "")
        if incoming and is_trusted_peer(peer, trusted) and REQUEST_ID_PATTERN.match(incoming):
            request_id, generated = incoming, False
        else:
            request_id, generated = new_request_id(), True
        request[REQUEST_ID] = request_id
        bound = REQUEST_ID_VAR.set(request_id)
        if decisions is not None:
            decision = Decision()
            decided = CURRENT_DECISION.set(decision)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        client_ip: str | None = None
        admitted_at = 0.0  # when the request got its place (0: none taken)
        status = 500
        error: str | None = None
        try:
            try:
                client_ip = resolve_client_ip(peer, headers.getall("X-Forwarded-For", ()), trusted)
            except ForwardedForError as exc:
                client_ip = peer or "unknown"
                request[CLIENT_IP] = client_ip
                error, status = "invalid_request", 400
                return problem_response(ProblemError("invalid_request", str(exc)))
            request[CLIENT_IP] = client_ip
            try:
                if shedder is not None:
                    if shedder.try_enter():
                        admitted_at = started
                    else:  # the latency counts from the place, not from the queue
                        await shedder.wait_for_place()
                        admitted_at = time.perf_counter()
                response = await handler(request)
            except ProblemError as err:
                error, response = err.code, problem_response(err)
            except web.HTTPException as exc:
                if exc.status < 400:
                    status = exc.status
                    raise
                error, response = http_problem(exc)
            except RequestPayloadError:  # a body the parser could not decode
                error, response = "invalid_request", problem_response(BODY_UNREADABLE)
            except ConnectionResetError:  # the client went away
                status = CLIENT_CLOSED
                raise
            except TimeoutError:  # answered 504 by the listener
                status = 504
                raise
            except asyncio.CancelledError:
                status = CLIENT_CLOSED
                raise
            except Exception:
                log.exception("unhandled_error", route=route)
                error = "internal_error"
                response = problem_response(
                    ProblemError("internal_error", "an unexpected error occurred")
                )
            status = response.status
            return response
        finally:
            REQUEST_ID_VAR.reset(bound)
            if decisions is not None:
                CURRENT_DECISION.reset(decided)
                decisions.submit(
                    decision,
                    route,
                    request.method,
                    status,
                    error,
                    client_ip,
                    headers.get("User-Agent"),
                    request.get(KEY_ID),
                )
            ended = time.perf_counter()
            elapsed = ended - started
            if admitted_at and shedder is not None:
                shedder.leave(request, admitted_at, ended)
            metrics.request_ended()
            method = request.method
            metrics.observe_request(route, method, status, elapsed, error)
            access_log.emit(
                request_id=request_id,
                request_id_generated=generated,
                method=method,
                route=route,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                client_ip=client_ip,
                key_id=request.get(KEY_ID),
                token_hash=request.get(TOKEN_HASH),
                error=error,
            )

    return context_middleware


def make_response_hook(health: Health) -> ResponseHook:
    """Headers every answer gets when it is prepared: ``X-Request-Id``, ``Server``,
    ``X-Content-Type-Options: nosniff`` (browsers take each answer for its declared type)
    and, while draining, ``Connection: close`` (the connection ends after this answer, so
    clients and load balancers reconnect to another replica instead of reusing it)."""

    async def on_response_prepare(request: web.BaseRequest, response: web.StreamResponse) -> None:
        headers = response.headers
        request_id = request.get(REQUEST_ID)
        if request_id:
            headers["X-Request-Id"] = request_id
        headers["Server"] = SERVER
        headers["X-Content-Type-Options"] = "nosniff"
        if health.draining:
            response.force_close()
            headers["Connection"] = "close"

    return on_response_prepare
