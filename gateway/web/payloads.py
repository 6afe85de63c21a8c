"""Reading and validating request input; every refusal is a precise 4xx problem."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http import HttpVersion11

from gateway.admission import Client, ProofRequest
from gateway.core.client_ip import Network, is_trusted_peer
from gateway.errors import ProblemError
from gateway.web.state import CLIENT_IP

JSON_TYPES = frozenset({"application/json"})
SEND_FIELDS = frozenset({"client_token", "message", "stream"})
REFRESH_FIELDS = frozenset({"client_token"})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def client_of(request: web.Request) -> Client:
    """The requester: its address (through trusted proxies) and its User-Agent."""
    return Client(ip=request[CLIENT_IP], user_agent=request.headers.get("User-Agent", ""))


def proof_of(
    request: web.Request, public_url: str | None, trusted: Sequence[Network]
) -> ProofRequest:
    """The request's DPoP proof and the URL it must name: ``public_url`` and the path
    when configured, else the scheme and host the client called (a trusted proxy's
    ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` believed, the first of each)."""
    proofs = request.headers.getall("DPoP", ())
    header = ",".join(proofs) if proofs else None  # several: malformed, as RFC 9449 says
    path = request.raw_path.partition("?")[0]
    if public_url is not None:
        return ProofRequest(header, request.method, public_url + path)
    scheme, host = request.scheme, request.host
    if is_trusted_peer(request.remote, trusted):
        headers = request.headers
        scheme = headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
        host = headers.get("X-Forwarded-Host", host).split(",")[0].strip() or host
    return ProofRequest(header, request.method, f"{scheme}://{host}{path}")


#: the ``WWW-Authenticate`` challenge of a request without a bearer credential
BEARER_CHALLENGE = 'Bearer realm="agent-gateway"'
#: what a request for a client token must send
AGENT_KEY_HINT = "send the public agent key as 'Authorization: Bearer <key>'"


def bearer(request: web.Request) -> str | None:
    """The credential of ``Authorization: Bearer <credential>``, or None."""
    scheme, _, credential = request.headers.get("Authorization", "").strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential


def missing_credentials(hint: str, challenge: str = BEARER_CHALLENGE) -> ProblemError:
    """401: the request has no bearer credential; ``hint`` says which to send."""
    return ProblemError("missing_credentials", hint, {"WWW-Authenticate": challenge})


def bearer_credential(
    request: web.Request, hint: str = AGENT_KEY_HINT, challenge: str = BEARER_CHALLENGE
) -> str:
    """The credential of ``Authorization: Bearer <credential>``, else 401 with ``hint``."""
    credential = bearer(request)
    if credential is None:
        raise missing_credentials(hint, challenge)
    return credential


async def defer_continue(request: web.Request) -> None:
    """The routes' ``Expect`` handler: answer nothing yet. aiohttp's default sends
    ``100 Continue`` before any check; here the body reader sends it once the checks that
    need no body (content type, declared length) have passed, so a refused request gets
    its 413 or 415 without its body ever being sent."""


async def continue_if_expected(request: web.Request) -> None:
    """Send ``100 Continue`` when the client waits for it (RFC 9110, section 10.1.1)."""
    if request.version != HttpVersion11:  # HTTP/1.0 has no interim answers
        return
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        raise ProblemError("expectation_failed", "the only expectation supported is 100-continue")
    writer = request.writer
    await writer.write(CONTINUE)
    writer.output_size = 0  # the answer proper has not started


async def read_json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    if request.content_type not in JSON_TYPES and not request.content_type.endswith("+json"):
        raise ProblemError(
            "unsupported_media_type", "the body must be JSON ('Content-Type: application/json')"
        )
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise ProblemError("unsupported_media_type", "JSON bodies must be UTF-8")
    if request.content_length is not None and request.content_length > max_bytes:
        raise ProblemError("payload_too_large", f"the body is larger than {max_bytes} bytes")
    if "Expect" in request.headers:
        await continue_if_expected(request)
    raw = await request.read()  # bounded by the application's client_max_size
    if len(raw) > max_bytes:
        raise ProblemError("payload_too_large", f"the body is larger than {max_bytes} bytes")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProblemError("invalid_request", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProblemError("invalid_request", "the body must be a JSON object")
    return data


@dataclass(frozen=True, slots=True)
class SendMessage:
    client_token: str
    message: str
    stream: bool

    def __repr__(self) -> str:  # the token must not end up in a log by accident
        return f"SendMessage(message_chars={len(self.message)}, stream={self.stream})"


def _client_token(data: dict[str, Any], fields: frozenset[str]) -> str:
    """The body's ``client_token``, once every field is one of ``fields``."""
    if not fields.issuperset(data):
        unknown = sorted(set(data) - fields)
        raise ProblemError("invalid_request", f"unknown field {unknown[0]!r}")
    token = data.get("client_token")
    if token is None:
        raise ProblemError("invalid_request", "'client_token' is required")
    if not isinstance(token, str) or not token:
        raise ProblemError("invalid_request", "'client_token' must be a non-empty string")
    return token


def parse_refresh(data: dict[str, Any]) -> str:
    """The token a renewal presents (``{"client_token": ...}``)."""
    return _client_token(data, REFRESH_FIELDS)


def parse_send_message(data: dict[str, Any], max_message_chars: int) -> SendMessage:
    token = _client_token(data, SEND_FIELDS)
    message = data.get("message")
    if message is None:
        raise ProblemError("invalid_request", "'message' is required")
    if not isinstance(message, str):
        raise ProblemError("invalid_request", "'message' must be a string")
    if not message.strip():
        raise ProblemError("invalid_request", "'message' must not be empty")
    if len(message) > max_message_chars:
        raise ProblemError(
            "invalid_request", f"'message' is longer than {max_message_chars} characters"
        )
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise ProblemError("invalid_request", "'stream' must be true or false")
    return SendMessage(client_token=token, message=message, stream=stream)
