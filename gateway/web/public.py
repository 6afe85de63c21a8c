"""The public agent API: its three handlers (token issuance, reading and sending
messages) with what they still do themselves: the token issuance, the check of a client
token's claims and the relay of a streamed answer."""

from __future__ import annotations

import functools
import hashlib
import time
from datetime import UTC, datetime

import orjson
import structlog
from aiohttp import web

from gateway.core.token_codec import ClientToken
from gateway.errors import ProblemError
from gateway.observability.metrics import StreamOutcome
from gateway.upstream import ForwardContext, UpstreamResponse, error_reason
from gateway.web.cors import admit_origin
from gateway.web.payloads import (
    bearer,
    client_of,
    defer_continue,
    parse_send_message,
    read_json_object,
)
from gateway.web.state import (
    CLIENT_IP,
    KEY_ID,
    REQUEST_ID,
    REQUEST_STARTED,
    SERVICES,
    TOKEN_HASH,
)
from gateway.web.token_issuer import TokenRequest

TOKEN_PATH = "/v1/chat/conversation/public/message/token/{model_id}"
MESSAGES_PATH = "/v1/chat/conversation/public/messages/{token}"
SEND_PATH = "/v1/chat/conversation/public/message"
PATHS = (TOKEN_PATH, MESSAGES_PATH, SEND_PATH)

NO_STORE = {"Cache-Control": "no-store"}
log = structlog.get_logger("gateway")


def short_hash(token: str) -> str:
    """What logs show instead of a token: enough to correlate, useless to replay."""
    if len(token) <= _REMEMBERED_TOKEN_CHARS:  # ours are about 350 characters
        return _remembered_hash(token)
    return _hash(token)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


#: a client sends many messages with one token: its hash is computed once (bounded)
_remembered_hash = functools.lru_cache(maxsize=8192)(_hash)
_REMEMBERED_TOKEN_CHARS = 1024


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=NO_STORE
    )


async def issue_token(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    grant = await services.tokens.issue(
        TokenRequest(
            model_id=request.match_info["model_id"],
            method=request.method,
            client=client_of(request),
            credential=bearer(request),
            note_key=functools.partial(request.__setitem__, KEY_ID),
            admit_origins=functools.partial(admit_origin, request),
        )
    )
    expires_at = datetime.fromtimestamp(grant.issued.claims.expires_at, UTC)
    response = json_response(
        {
            "token": grant.issued.token,
            "expires_in": grant.expires_in,
            "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
        }
    )
    response.headers.update(grant.headers)
    return response


async def _admit_token(
    request: web.Request, token: str, route: str
) -> tuple[ClientToken, dict[str, str]]:
    """Decode and admit the client token; the claims and the RateLimit headers."""
    request[TOKEN_HASH] = short_hash(token)
    services = request.app[SERVICES]
    admissions = services.admissions
    client = client_of(request)
    try:
        admissions.refuse_if_penalized(client)
        claims = admissions.decode(token)
        request[KEY_ID] = claims.key_id
        record = services.keys.store.lookup(claims.key_id)
        if record is None:  # issued by a replica that knows a key newer than this snapshot
            record = await services.keys.find_record(claims.key_id)
        admit_origin(request, record.origins if record is not None else ())
        headers = await admissions.use_token(claims, client, route, request.method)
    except ProblemError as err:
        await admissions.token_refused(err, client, request.get(KEY_ID))
        raise
    return claims, headers


def _forward_context(request: web.Request, claims: ClientToken) -> ForwardContext:
    return ForwardContext(
        conversation_id=claims.conversation_id,
        model_id=claims.model_id,
        key_id=claims.key_id,
        request_id=request[REQUEST_ID],
        client_ip=request[CLIENT_IP],
    )


def _check_upstream_status(status: int) -> None:
    if status == 404:
        raise ProblemError("conversation_not_found", "no such conversation")
    if status >= 400:
        raise ProblemError("upstream_error", f"the upstream answered {status}")


async def read_messages(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    claims, limits = await _admit_token(request, request.match_info["token"], "messages")
    answer = await services.upstream.get_messages(_forward_context(request, claims))
    _check_upstream_status(answer.status)
    response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
    response.headers.update(NO_STORE)
    response.headers.update(limits)
    return response


async def send_message(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    settings = services.config.server
    data = await read_json_object(request, settings.max_body_bytes)
    message = parse_send_message(data, settings.max_message_chars)
    claims, limits = await _admit_token(request, message.client_token, "send")
    model = services.config.models.get(claims.model_id)
    if model is None:
        raise ProblemError("model_not_found", "the token's model is no longer served")
    payload = {
        "model_id": model.upstream_model or claims.model_id,
        "message": message.message,
        "stream": message.stream,
    }
    upstream = services.upstream
    with await upstream.send_message(_forward_context(request, claims), payload) as resp:
        _check_upstream_status(resp.status)
        if resp.content_type == "text/event-stream":
            return await _relay_stream(request, resp, limits)
        answer = await upstream.buffer(resp)
        response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        response.headers.update(NO_STORE)
        response.headers.update(limits)
        return response


async def _relay_stream(
    request: web.Request, upstream: UpstreamResponse, limits: dict[str, str]
) -> web.StreamResponse:
    services = request.app[SERVICES]
    metrics = services.metrics
    out = web.StreamResponse(
        status=upstream.status, headers=services.upstream.relayable(upstream.headers)
    )
    out.headers.update(limits)
    out.headers["Cache-Control"] = "no-cache, no-store"
    out.headers["X-Accel-Buffering"] = "no"
    outcome: StreamOutcome = "client_disconnected"  # unless the relay gets further
    with metrics.stream():
        try:
            await out.prepare(request)
            outcome = await _relay_chunks(request, upstream, out)
            if outcome != "truncated":
                await out.write_eof()
        finally:
            metrics.stream_ended(outcome)
    return out


async def _relay_chunks(
    request: web.Request, upstream: UpstreamResponse, out: web.StreamResponse
) -> StreamOutcome:
    """Copy the upstream's chunks as they arrive; on an upstream failure, end with an
    ``error`` event when between events, else cut the connection."""
    services = request.app[SERVICES]
    metrics = services.metrics
    tail = b"\n\n"
    first = True
    try:
        async for chunk in services.upstream.chunks(upstream):
            await out.write(chunk)
            if first:
                first = False
                metrics.stream_first_byte(time.perf_counter() - request[REQUEST_STARTED])
            tail = (tail + chunk)[-2:]
    except ProblemError as err:
        log.warning("upstream_stream_failed", code=err.code)
        metrics.upstream_error("send_message", error_reason(err.code))
        if tail.endswith(b"\n\n") or tail.endswith(b"\r\n"):
            event = orjson.dumps({"code": err.code, "detail": err.detail})
            await out.write(b"event: error\ndata: " + event + b"\n\n")
            return "upstream_error"
        # mid-event: a truncated response is the only honest signal
        if request.transport is not None:
            request.transport.close()
        return "truncated"
    return "completed"


def add_routes(app: web.Application) -> None:
    # no route sends 100 Continue before its checks (payloads.defer_continue)
    expect = defer_continue
    app.router.add_get(TOKEN_PATH, issue_token, allow_head=False, expect_handler=expect)
    app.router.add_get(MESSAGES_PATH, read_messages, allow_head=False, expect_handler=expect)
    app.router.add_post(SEND_PATH, send_message, expect_handler=expect)
