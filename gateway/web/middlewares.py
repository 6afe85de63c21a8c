"""Middlewares: request context, problem+json errors, the access log and request metrics.

Order (outermost first): :func:`context_middleware` gives every request an id and a
client IP, writes the access event and records the request's metrics (a request the
client abandons, or that shutdown cancels, is logged with status 499);
:func:`problem_middleware` turns every error into
``application/problem+json``. ``X-Request-Id`` is added by an ``on_response_prepare``
signal, so streamed and error responses carry it too.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence

import orjson
import structlog
from aiohttp import web

from gateway.core.client_ip import (
    ForwardedForError,
    Network,
    is_trusted_peer,
    resolve_client_ip,
)
from gateway.errors import ProblemError
from gateway.observability.metrics import Metrics
from gateway.web.state import (
    CLIENT_IP,
    ERROR_CODE,
    KEY_ID,
    REQUEST_ID,
    REQUEST_STARTED,
    ROUTE,
    TOKEN_HASH,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: the status logged for a request whose handler was cancelled (client gone, shutdown)
CLIENT_CLOSED = 499

access_log = structlog.get_logger("gateway.access")
log = structlog.get_logger("gateway")


def problem_response(err: ProblemError) -> web.Response:
    return web.Response(
        status=err.status,
        body=orjson.dumps(err.body()),
        content_type="application/problem+json",
        headers={"Cache-Control": "no-store", **err.headers},
    )


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    400: "invalid_request",
}


def new_request_id() -> str:
    """96 random bits as 24 hex digits. Not a secret (every answer carries it), so the
    process's PRNG does: no system call per request."""
    return f"{random.getrandbits(96):024x}"


def make_context_middleware(
    trusted: Sequence[Network], metrics: Metrics
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request[REQUEST_STARTED] = started
        metrics.http_in_flight.inc()
        peer = request.remote
        incoming = request.headers.get("X-Request-Id", "")
        if incoming and is_trusted_peer(peer, trusted) and REQUEST_ID_PATTERN.match(incoming):
            request_id = incoming
        else:
            request_id = new_request_id()
        request[REQUEST_ID] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        route = request.match_info.route.resource
        request[ROUTE] = route.canonical if route is not None else "unmatched"
        status = 500
        try:
            try:
                request[CLIENT_IP] = resolve_client_ip(
                    peer, request.headers.getall("X-Forwarded-For", []), trusted
                )
            except ForwardedForError as exc:
                request[CLIENT_IP] = peer or "unknown"
                request[ERROR_CODE] = "invalid_request"
                status = 400
                return problem_response(ProblemError("invalid_request", str(exc)))
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
            elapsed = time.perf_counter() - started
            metrics.http_in_flight.dec()
            metrics.observe_request(
                request[ROUTE], request.method, status, elapsed, request.get(ERROR_CODE)
            )
            access_log.info(
                "request",
                request_id=request_id,
                method=request.method,
                route=request[ROUTE],
                status=status,
                duration_ms=round(elapsed * 1000, 2),
                client_ip=request.get(CLIENT_IP),
                key_id=request.get(KEY_ID),
                token_hash=request.get(TOKEN_HASH),
                error=request.get(ERROR_CODE),
            )

    return context_middleware


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProblemError as err:
        request[ERROR_CODE] = err.code
        return problem_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status)
        if code is None:
            code = "internal_error" if exc.status >= 500 else "invalid_request"
        detail = exc.reason or exc.text or ""
        if exc.status == 413:
            detail = "the request body is too large"
        headers = {}
        if exc.status == 405 and "Allow" in exc.headers:
            headers["Allow"] = exc.headers["Allow"]
        request[ERROR_CODE] = code
        response = problem_response(ProblemError(code, detail, headers))
        response.set_status(exc.status)
        return response
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        log.exception("unhandled_error", route=request.get(ROUTE))
        request[ERROR_CODE] = "internal_error"
        return problem_response(ProblemError("internal_error", "an unexpected error occurred"))


async def add_request_id(request: web.BaseRequest, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers["X-Request-Id"] = request_id
    response.headers["Server"] = "agent-gateway"
