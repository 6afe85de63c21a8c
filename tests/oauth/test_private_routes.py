"""OAuth2-protected private routes, end to end: a local identity provider, the gateway and
the reference backend's private API, each on a real socket."""

import asyncio
import time
from typing import Any

import pytest
from aiohttp import ClientResponse
from yarl import URL

from tests.oauth.conftest import PRIVATE, oauth_section, with_jwks_clock
from tests.support.clock import FixedClock
from tests.support.harness import Gateway
from tests.support.identity_provider import IdentityProvider, SigningKey, tampered

BARE_CHALLENGE = 'Bearer realm="agent-gateway"'


async def call(
    gateway: Gateway,
    method: str,
    path: str,
    token: str | None = None,
    *,
    json: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[ClientResponse, Any]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with gateway.http.request(method, gateway.url + path, headers=sent, json=json) as resp:
        body = await resp.json(content_type=None) if await resp.read() else None
        return resp, body


async def assert_invalid(gateway: Gateway, token: str, reason: str) -> None:
    resp, body = await call(gateway, "GET", "/v1/whoami", token)
    assert resp.status == 401, (reason, body)
    assert body["code"] == "invalid_token"
    assert reason in body["detail"]
    challenge = resp.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="agent-gateway", error="invalid_token"')
    assert "error_description=" in challenge


async def eventually(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not true in time"
        await asyncio.sleep(0.02)


async def test_valid_rsa_and_ec_tokens_reach_the_upstream_as_identity_headers(
    private_gateway: Gateway,
    idp: IdentityProvider,
    key_pool: dict[str, SigningKey],
    jwks_clock: FixedClock,
) -> None:
    for key in (idp.key("rsa-1"), idp.key("ec-1")):
        resp, body = await call(
            private_gateway,
            "GET",
            "/v1/whoami",
            idp.sign(key),
            headers={"Cookie": "session=secret", "X-Auth-Subject": "admin"},
        )
        assert resp.status == 200, body
        assert body == {
            "subject": "user-42",
            "scopes": ["chat:read", "chat:write"],
            "client_id": "shop-backoffice",
            "received_authorization": False,
            "received_cookie": False,
        }
        assert resp.headers["X-Request-Id"]
    idp.keys.append(key_pool["ps-1"])  # RSASSA-PSS, published later: found by a refetch
    jwks_clock.advance(1.05)  # jwks_min_refresh_seconds
    resp, body = await call(private_gateway, "GET", "/v1/whoami", idp.sign(key_pool["ps-1"]))
    assert resp.status == 200, body


async def test_a_private_conversation_through_the_gateway(
    private_gateway: Gateway, idp: IdentityProvider
) -> None:
    token = idp.sign()
    path = PRIVATE + "/c-1/messages"
    resp, body = await call(
        private_gateway, "POST", path, token, json={"model_id": "demo", "message": "hi"}
    )
    assert resp.status == 200, body
    assert body["message"]["content"] == "You said: hi"
    assert resp.headers["Cache-Control"] == "private, no-store"

    async with private_gateway.http.post(
        private_gateway.url + path,
        json={"model_id": "demo", "message": "and stream it", "stream": True},
        headers={"Authorization": f"Bearer {token}"},
    ) as streamed:
        assert streamed.status == 200
        assert streamed.headers["Content-Type"].startswith("text/event-stream")
        assert streamed.headers["X-Accel-Buffering"] == "no"
        chunks = [chunk async for chunk in streamed.content.iter_any()]
    assert b"event: done" in b"".join(chunks)

    resp, body = await call(private_gateway, "GET", PRIVATE + "/c-1/messages?verbose=1", token)
    assert resp.status == 200
    assert [m["content"] for m in body["messages"]][-1] == "You said: and stream it"
    other = idp.sign(sub="someone-else")
    resp, _ = await call(private_gateway, "GET", PRIVATE + "/c-1/messages", other)
    assert resp.status == 404  # the backend keeps subjects apart
    resp, body = await call(private_gateway, "GET", PRIVATE, token)
    assert body["conversations"][0]["conversation_id"] == "c-1"


async def test_missing_credentials_get_a_bare_challenge(private_gateway: Gateway) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}):
        resp, body = await call(private_gateway, "GET", "/v1/whoami", headers=headers)
        assert resp.status == 401
        assert body["code"] == "missing_credentials"
        assert resp.headers["WWW-Authenticate"] == BARE_CHALLENGE  # RFC 6750 section 3.1


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (lambda idp: idp.sign(exp=int(time.time()) - 60), "expired"),
        (lambda idp: idp.sign(nbf=int(time.time()) + 120), "not valid yet"),
        (lambda idp: idp.sign(iss="https://evil.example"), "issuer"),
        (lambda idp: idp.sign(aud="another-api"), "aud"),
        (lambda idp: idp.sign(sub=None), "'sub'"),
        (lambda idp: idp.sign(exp=None), "'exp'"),
        (lambda idp: idp.unsigned(), "algorithm is not accepted"),
        (lambda idp: idp.hmac_with_public_key(), "algorithm is not accepted"),
        (lambda idp: idp.sign(headers={"kid": "forged"}), "unknown key"),
        (lambda idp: tampered(idp.sign(), sub="admin"), "signature"),
        (lambda idp: tampered(idp.sign(idp.key("ec-1")), scope="chat:admin"), "signature"),
        (lambda idp: idp.sign(headers={"crit": ["exp"]}), "header"),
        (lambda idp: idp.sign(sub="user\r\nX-Injected: 1"), "'sub'"),
        (lambda idp: "not.a.jwt", "malformed"),
        (lambda idp: "abc", "compact"),
    ],
    ids=[
        "expired",
        "nbf",
        "issuer",
        "audience",
        "no-sub",
        "no-exp",
        "alg-none",
        "hs256-public-key",
        "unknown-kid",
        "tampered-rsa",
        "tampered-ec",
        "crit",
        "header-injection",
        "garbage",
        "not-jws",
    ],
)
async def test_each_kind_of_invalid_token_gets_401(
    private_gateway: Gateway, idp: IdentityProvider, forge: Any, reason: str
) -> None:
    await assert_invalid(private_gateway, forge(idp), reason)


async def test_expiry_and_not_before_allow_the_configured_leeway(
    private_gateway: Gateway, idp: IdentityProvider
) -> None:
    now = int(time.time())
    for token in (idp.sign(exp=now - 2), idp.sign(nbf=now + 2)):  # leeway_seconds: 5
        resp, body = await call(private_gateway, "GET", "/v1/whoami", token)
        assert resp.status == 200, body


async def test_typ_at_jwt_can_be_required(gateway_factory, idp: IdentityProvider) -> None:
    gateway = await gateway_factory(oauth=oauth_section(idp, require_typ_at_jwt=True))
    resp, _ = await call(gateway, "GET", "/v1/whoami", idp.sign())
    assert resp.status == 200
    resp, _ = await call(
        gateway, "GET", "/v1/whoami", idp.sign(headers={"typ": "application/at+JWT"})
    )
    assert resp.status == 200
    await assert_invalid(gateway, idp.sign(headers={"typ": None}), "at+jwt")
    await assert_invalid(gateway, idp.sign(headers={"typ": "JWT"}), "at+jwt")  # an ID token


async def test_missing_scopes_get_403_insufficient_scope(
    private_gateway: Gateway, idp: IdentityProvider
) -> None:
    reader = idp.sign(scope="chat:read")
    resp, _ = await call(private_gateway, "GET", PRIVATE, reader)
    assert resp.status == 200
    resp, body = await call(
        private_gateway,
        "POST",
        PRIVATE + "/c/messages",
        reader,
        json={"model_id": "demo", "message": "x"},
    )
    assert resp.status == 403 and body["code"] == "insufficient_scope"
    assert resp.headers["WWW-Authenticate"] == (
        'Bearer realm="agent-gateway", error="insufficient_scope", scope="chat:read chat:write"'
    )
    resp, body = await call(private_gateway, "DELETE", PRIVATE + "/c", reader)
    assert resp.status == 403 and "chat:admin" in body["detail"]
    admin = idp.sign(scp=["chat:admin"], scope=None)  # the "scp" array form
    resp, _ = await call(private_gateway, "DELETE", PRIVATE + "/c", admin)
    assert resp.status == 404  # authorised; the backend has no such conversation


async def test_methods_not_routed_get_405(private_gateway: Gateway, idp: IdentityProvider) -> None:
    resp, body = await call(private_gateway, "PUT", PRIVATE + "/c", idp.sign())
    assert resp.status == 405 and body["code"] == "method_not_allowed"
    assert resp.headers["Allow"] == "DELETE,GET,POST"


@pytest.mark.parametrize(
    "path", [PRIVATE + "/%2e%2e/%2e%2e/conversations/x/messages", PRIVATE + "/a%2Fb/messages"]
)
async def test_paths_cannot_escape_the_upstream_prefix(
    private_gateway: Gateway, idp: IdentityProvider, path: str
) -> None:
    async with private_gateway.http.get(
        URL(private_gateway.url + path, encoded=True),  # sent as written, not normalised
        headers={"Authorization": f"Bearer {idp.sign()}"},
    ) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 400, body
        assert body["code"] == "invalid_request"


async def test_key_rotation_at_the_provider(
    private_gateway: Gateway,
    idp: IdentityProvider,
    key_pool: dict[str, SigningKey],
    jwks_clock: FixedClock,
) -> None:
    old_token = idp.sign(idp.key("rsa-1"))
    resp, _ = await call(private_gateway, "GET", "/v1/whoami", old_token)
    assert resp.status == 200
    withdrawn = idp.rotate(key_pool["rsa-2"])
    assert withdrawn.kid == "rsa-1"
    jwks_clock.advance(1.05)  # jwks_min_refresh_seconds
    resp, _ = await call(private_gateway, "GET", "/v1/whoami", idp.sign(key_pool["rsa-2"]))
    assert resp.status == 200  # the new kid made the gateway refetch
    await assert_invalid(private_gateway, old_token, "unknown key")  # the old key is gone


async def test_forged_kids_do_not_hammer_the_provider(
    private_gateway: Gateway, idp: IdentityProvider, jwks_clock: FixedClock
) -> None:
    await eventually(lambda: idp.fetches == 1)  # fetched once at start
    forged_now = idp.sign(headers={"kid": "forged-early"})
    resp, _ = await call(private_gateway, "GET", "/v1/whoami", forged_now)
    assert resp.status == 401 and idp.fetches == 1  # within the interval: no refetch
    jwks_clock.advance(1.05)  # jwks_min_refresh_seconds
    forged = [idp.sign(headers={"kid": f"forged-{i}"}) for i in range(30)]
    results = await asyncio.gather(
        *(call(private_gateway, "GET", "/v1/whoami", token) for token in forged)
    )
    assert {resp.status for resp, _ in results} == {401}
    assert idp.fetches == 2  # one refetch for the first unknown kid, then throttled


async def test_provider_down_is_503_not_401(
    gateway_factory, idp: IdentityProvider, jwks_clock: FixedClock
) -> None:
    idp.status = 500
    gateway = await gateway_factory(oauth=oauth_section(idp), prepare=with_jwks_clock(jwks_clock))
    await eventually(lambda: idp.fetches == 1)
    resp, body = await call(gateway, "GET", "/v1/whoami", idp.sign())
    assert resp.status == 503 and body["code"] == "identity_provider_unavailable"
    assert resp.headers["Retry-After"]
    idp.status = 200
    jwks_clock.advance(1.05)  # jwks_min_refresh_seconds
    resp, _ = await call(gateway, "GET", "/v1/whoami", idp.sign())
    assert resp.status == 200


async def test_public_routes_and_widget_stay_public(private_gateway: Gateway) -> None:
    token = await private_gateway.new_token()
    async with private_gateway.send(token, "hello") as resp:
        assert resp.status == 200
    async with private_gateway.http.get(private_gateway.url + "/widget.js") as resp:
        assert resp.status == 200


async def test_private_routes_have_rate_limits_and_a_penalty_box(
    gateway_factory: Any, idp: IdentityProvider
) -> None:
    gateway = await gateway_factory(
        oauth=oauth_section(idp),
        policies="""
penalty_box: {threshold: 3, window: 1m, cooldown: 1m}
policies:
  - {name: private-per-ip, match: {routes: [private]}, partition: [client_ip], limit: {rate: 2, per: 1m, burst: 2}}
""",
    )
    token = idp.sign()
    for remaining in (1, 0):
        resp, _ = await call(gateway, "GET", "/v1/whoami", token)
        assert resp.status == 200
        assert (
            resp.headers["RateLimit"] == f'"private-per-ip";r={remaining};t={30 * (2 - remaining)}'
        )
    resp, body = await call(gateway, "GET", "/v1/whoami", token)
    assert resp.status == 429
    assert body["code"] == "rate_limited"
    # forged tokens count towards the penalty box like forged client tokens
    other = await gateway_factory(
        oauth=oauth_section(idp), policies="penalty_box: {threshold: 3}\n"
    )
    for _ in range(3):
        resp, _ = await call(other, "GET", "/v1/whoami", tampered(token, sub="admin"))
        assert resp.status == 401
    resp, _ = await call(other, "GET", "/v1/whoami", token)
    assert resp.status == 429
