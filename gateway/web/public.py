"""The public agent API: its four handlers (token issuance and renewal, reading and
sending messages). Token issuance is :class:`~gateway.web.token_issuer.TokenIssuer`'s,
renewal :class:`~gateway.web.token_renewer.TokenRenewer`'s, streams are relayed by
:mod:`gateway.web.relay`; what the message handlers still do themselves is the check of a
client token (decode, key origins, admission)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from aiohttp import web

from gateway.admission import ProofBinding, ProofRequest
from gateway.core.token_codec import ClientToken, IssuedToken, log_hash
from gateway.errors import ProblemError
from gateway.upstream import ForwardContext
from gateway.web.cors import admit_origin
from gateway.web.overload import enter_stream
from gateway.web.payloads import (
    bearer,
    client_of,
    defer_continue,
    parse_refresh,
    parse_send_message,
    proof_of,
    read_json_object,
)
from gateway.web.relay import EVENT_STREAM, relay, response_for
from gateway.web.responses import NO_STORE, json_response
from gateway.web.state import (
    CLIENT_IP,
    KEY_ID,
    REQUEST_ID,
    SERVICES,
    TOKEN_HASH,
)
from gateway.web.token_issuer import TokenRequest
from gateway.web.token_renewer import RenewalRequest

TOKEN_PATH = "/v1/chat/conversation/public/message/token/{model_id}"
MESSAGES_PATH = "/v1/chat/conversation/public/messages/{token}"
SEND_PATH = "/v1/chat/conversation/public/message"
REFRESH_PATH = "/v1/chat/conversation/public/token/refresh"
PATHS = (TOKEN_PATH, MESSAGES_PATH, SEND_PATH, REFRESH_PATH)


def _token_answer(issued: IssuedToken, expires_in: int, headers: dict[str, str]) -> web.Response:
    """``{"token", "expires_in", "expires_at"}`` with the RateLimit headers."""
    expires_at = datetime.fromtimestamp(issued.claims.expires_at, UTC)
    response = json_response(
        {
            "token": issued.token,
            "expires_in": expires_in,
            "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
        }
    )
    response.headers.update(headers)
    return response


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
            proof=_proof(request),
        )
    )
    return _token_answer(grant.issued, grant.expires_in, grant.headers)


def _proof(request: web.Request) -> ProofRequest:
    server = request.app[SERVICES].config.server
    return proof_of(request, server.public_url, server.trusted_proxies)


async def refresh_token(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        data = await read_json_object(request, services.config.server.max_body_bytes)
        token = parse_refresh(data)
    except ProblemError as err:
        services.metrics.token_renewal(err.code)
        raise
    grant = await services.renewals.renew(
        RenewalRequest(
            token=token,
            method=request.method,
            client=client_of(request),
            note_token=functools.partial(request.__setitem__, TOKEN_HASH),
            note_key=functools.partial(request.__setitem__, KEY_ID),
            admit_origins=functools.partial(admit_origin, request),
            proof=_proof(request),
        )
    )
    return _token_answer(grant.issued, grant.expires_in, grant.headers)


async def _admit_token(
    request: web.Request, token: str, route: str
) -> tuple[ClientToken, dict[str, str]]:
    """Decode and admit the client token; the claims and the RateLimit headers."""
    services = request.app[SERVICES]
    admissions = services.admissions
    client = client_of(request)
    try:
        admissions.refuse_if_penalized(client)
        verified = admissions.verify(token)
        request[TOKEN_HASH] = verified.log_hash  # kept with the claims: computed once
        claims = verified.claims
        request[KEY_ID] = claims.key_id
        record = services.keys.store.lookup(claims.key_id)
        if record is None:  # issued by a replica that knows a key newer than this snapshot
            record = await services.keys.find_record(claims.key_id)
        admit_origin(request, record.origins if record is not None else ())
        proof = ProofBinding(_proof(request), token) if claims.jkt is not None else None
        headers = await admissions.use_token(claims, client, route, request.method, proof)
    except ProblemError as err:
        if TOKEN_HASH not in request:  # refused before or by the token's checks
            request[TOKEN_HASH] = log_hash(token)
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
    if message.stream:  # a stream place, before any token work (gateway.web.overload)
        enter_stream(request)
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
        if resp.content_type == EVENT_STREAM:
            out = response_for(request, resp, limits)
            out.headers["Cache-Control"] = "no-cache, no-store"
            return await relay(request, resp, out, operation="send_message", error_event=True)
        answer = await upstream.buffer(resp)
        response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        response.headers.update(NO_STORE)
        response.headers.update(limits)
        return response


def add_routes(app: web.Application) -> None:
    # no route sends 100 Continue before its checks (payloads.defer_continue)
    expect = defer_continue
    app.router.add_get(TOKEN_PATH, issue_token, allow_head=False, expect_handler=expect)
    app.router.add_get(MESSAGES_PATH, read_messages, allow_head=False, expect_handler=expect)
    app.router.add_post(SEND_PATH, send_message, expect_handler=expect)
    app.router.add_post(REFRESH_PATH, refresh_token, expect_handler=expect)
