"""GET messages/{token} and POST message against the reference backend: every status."""

from typing import Any

import jwt
import pytest

from tests.support.harness import MESSAGES_URL, SEND_URL, SIGNING_KEY, Gateway
from tests.support.upstreams import Script


async def problem(resp: object) -> dict:
    from aiohttp import ClientResponse

    assert isinstance(resp, ClientResponse)
    assert resp.headers["Content-Type"] == "application/problem+json"
    body = await resp.json(content_type=None)
    assert body["status"] == resp.status
    return dict(body)


async def test_send_then_read_history(gateway: Gateway) -> None:
    token = await gateway.new_token()
    async with gateway.send(token, "bonjour") as resp:
        assert resp.status == 200
        body = await resp.json()
        assert body["message"]["content"] == "You said: bonjour"
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Request-Id"]
    async with gateway.messages(token) as resp:
        assert resp.status == 200
        history = await resp.json()
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
    assert history["messages"][0]["content"] == "bonjour"


async def test_reading_before_any_message_is_404(gateway: Gateway) -> None:
    token = await gateway.new_token()
    async with gateway.messages(token) as resp:
        assert resp.status == 404
        assert (await problem(resp))["code"] == "conversation_not_found"


async def test_tokens_keep_conversations_apart(gateway: Gateway) -> None:
    first, second = await gateway.new_token(), await gateway.new_token()
    async with gateway.send(first, "one"):
        pass
    async with gateway.messages(second) as resp:
        assert resp.status == 404


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("not-a-token", "token_invalid"),
        ("x" * 5000, "token_invalid"),
    ],
)
async def test_invalid_tokens_get_403(gateway: Gateway, token: str, code: str) -> None:
    async with gateway.messages(token) as resp:
        assert resp.status == 403
        assert (await problem(resp))["code"] == code
    async with gateway.send(token) as resp:
        assert resp.status == 403
        assert (await problem(resp))["code"] == code


async def test_expired_and_foreign_tokens_get_403(gateway: Gateway) -> None:
    token = await gateway.new_token()
    claims = jwt.decode(token, options={"verify_signature": False})
    secret = SIGNING_KEY.split(":", 1)[1]
    expired = jwt.encode(
        {**claims, "iat": 1000, "nbf": 1000, "exp": 2000}, secret, headers={"kid": "k1"}
    )
    foreign = jwt.encode(claims, "f" * 48, headers={"kid": "k1"})
    for bad, code in ((expired, "token_expired"), (foreign, "token_invalid")):
        async with gateway.send(bad) as resp:
            assert resp.status == 403
            assert (await problem(resp))["code"] == code


@pytest.mark.parametrize(
    "claims",
    [
        {"cid": "c0ffee00-0000-4000-8000-000000000000\r\nX-Injected: 1"},
        {"mid": "demo\r\nX-Injected: 1"},
        {"akid": "KKKKKKKKKKKK\r\n"},
        {"jti": "A" * 22 + "\r\nX: y"},
    ],
    ids=["cid", "mid", "akid", "jti"],
)
async def test_a_signed_token_with_a_line_break_in_a_claim_is_invalid_and_never_forwarded(
    gateway_factory: Any, scripted: tuple[Script, str], claims: dict[str, str]
) -> None:
    """Signed with the gateway's real key: only the claims' shape can refuse it."""
    script, url = scripted
    gw = await gateway_factory(upstream={"url": url})
    token = await gw.new_token()
    payload = {**jwt.decode(token, options={"verify_signature": False}), **claims}
    kid, secret = SIGNING_KEY.split(":", 1)
    forged = jwt.encode(payload, secret, headers={"kid": kid})
    async with gw.send(forged) as resp:
        assert resp.status == 403
        assert (await problem(resp))["code"] == "token_invalid"
    async with gw.messages(forged) as resp:
        assert resp.status == 403
        assert (await problem(resp))["code"] == "token_invalid"
    assert script.seen_headers == []
    assert gw.sample("gateway_token_uses_refused_total", reason="token_invalid") == 2


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"message": "hi"}', "'client_token' is required"),
        (b'{"client_token": 5, "message": "hi"}', "'client_token' must be a non-empty string"),
        (b'{"client_token": "t"}', "'message' is required"),
        (b'{"client_token": "t", "message": 3}', "'message' must be a string"),
        (b'{"client_token": "t", "message": "   "}', "'message' must not be empty"),
        (b'{"client_token": "t", "message": "hi", "stream": "yes"}', "'stream' must be"),
        (b'{"client_token": "t", "message": "hi", "admin": true}', "unknown field 'admin'"),
    ],
)
async def test_malformed_bodies_get_400(gateway: Gateway, body: bytes, detail: str) -> None:
    async with gateway.http.post(
        gateway.url + SEND_URL, data=body, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
        problem_body = await problem(resp)
        assert problem_body["code"] == "invalid_request"
        assert detail in problem_body["detail"]


async def test_over_long_message_gets_400(gateway_factory: object) -> None:
    assert callable(gateway_factory)
    gw: Gateway = await gateway_factory(server={"max_message_chars": 10})
    token = await gw.new_token()
    async with gw.send(token, "x" * 11) as resp:
        assert resp.status == 400
        assert "longer than 10 characters" in (await problem(resp))["detail"]


async def test_oversized_body_gets_413(gateway: Gateway) -> None:
    big = b'{"client_token": "t", "message": "' + b"x" * 70_000 + b'"}'
    async with gateway.http.post(
        gateway.url + SEND_URL, data=big, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 413
        assert (await problem(resp))["code"] == "payload_too_large"

    async def chunked() -> object:
        for _ in range(20):
            yield b"x" * 5000

    async with gateway.http.post(
        gateway.url + SEND_URL, data=chunked(), headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 413
        assert (await problem(resp))["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
async def test_wrong_content_type_gets_415(gateway: Gateway, content_type: str) -> None:
    async with gateway.http.post(
        gateway.url + SEND_URL,
        data=b'{"client_token": "t", "message": "hi"}',
        headers={"Content-Type": content_type},
    ) as resp:
        assert resp.status == 415
        assert (await problem(resp))["code"] == "unsupported_media_type"


async def test_token_in_url_path_is_never_logged(
    gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    token = await gateway.new_token()
    async with gateway.messages(token):
        pass
    async with gateway.send(token):
        pass
    out = capsys.readouterr()
    assert token not in out.out and token not in out.err
    assert MESSAGES_URL.split("{")[0] in out.out  # the access log did run
