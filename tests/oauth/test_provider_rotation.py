"""A key rotation at the identity provider is not a forgery: callers with tokens signed by a
key the gateway has not fetched yet are refused without being boxed, and served once the
refetch interval has passed. A bad signature under a known key still counts."""

import asyncio
import time
from typing import Any

from tests.oauth.conftest import oauth_section
from tests.oauth.test_private_routes import call, eventually
from tests.support.identity_provider import IdentityProvider, SigningKey, tampered

#: the refetch interval of these tests: long enough for 25 calls on a loaded machine
WINDOW = 6
BOX = "penalty_box: {threshold: 3, window: 1m, cooldown: 5m}\n"


async def until(check: Any, timeout: float) -> None:
    """Until the coroutine function ``check`` returns true."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not true in time"
        await asyncio.sleep(0.2)


async def test_a_genuine_token_under_a_new_key_is_not_boxed_and_served_after_the_window(
    gateway_factory: Any, idp: IdentityProvider
) -> None:
    gateway = await gateway_factory(
        oauth=oauth_section(idp, jwks_min_refresh_seconds=WINDOW), policies=BOX
    )
    await eventually(lambda: idp.fetches == 1, timeout=10)  # fetched at start
    idp.rotate("rsa-next")  # the provider signs with a key the gateway has not seen
    token = idp.sign()

    results = await asyncio.gather(*(call(gateway, "GET", "/v1/whoami", token) for _ in range(25)))
    assert idp.fetches == 1  # all inside the refetch interval
    for resp, body in results:
        assert resp.status == 401, body
        assert body["code"] == "invalid_token"
        assert "unknown key" in body["detail"] and "fetched again in at most" in body["detail"]
        assert resp.headers["WWW-Authenticate"].startswith(
            'Bearer realm="agent-gateway", error="invalid_token", error_description="'
        )
    assert gateway.sample("gateway_penalty_box_events_total", event="entered") == 0
    assert gateway.sample("gateway_penalty_box_events_total", event="refused") == 0

    async def served() -> bool:
        resp, body = await call(gateway, "GET", "/v1/whoami", token)
        assert resp.status in (200, 401), body  # never 429: the caller is not boxed
        return resp.status == 200

    await until(served, timeout=WINDOW + 10)
    assert idp.fetches == 2  # the first token after the interval fetched the new set


async def test_a_bad_signature_under_a_known_key_still_counts(
    gateway_factory: Any, idp: IdentityProvider, key_pool: dict[str, SigningKey]
) -> None:
    gateway = await gateway_factory(oauth=oauth_section(idp), policies=BOX)
    genuine = idp.sign()
    forged = [
        tampered(genuine, sub="admin"),  # the signature does not verify under rsa-1
        idp.sign(key_pool["rsa-2"], headers={"kid": "rsa-1"}),  # another key, rsa-1's kid
        idp.sign(idp.key("ec-1"), headers={"kid": "rsa-1"}),  # rsa-1's kid for ES256
    ]
    for token in forged:
        resp, body = await call(gateway, "GET", "/v1/whoami", token)
        assert resp.status == 401 and body["code"] == "invalid_token", body
    resp, body = await call(gateway, "GET", "/v1/whoami", genuine)
    assert resp.status == 429 and body["code"] == "rate_limited", body
    assert gateway.sample("gateway_penalty_box_events_total", event="entered") == 1


async def test_sprayed_kids_cost_one_fetch_per_window_and_box_no_one(
    gateway_factory: Any, idp: IdentityProvider
) -> None:
    gateway = await gateway_factory(
        oauth=oauth_section(idp, jwks_min_refresh_seconds=WINDOW), policies=BOX
    )
    await eventually(lambda: idp.fetches == 1, timeout=10)
    sprayed = [idp.sign(headers={"kid": f"made-up-{i}"}) for i in range(50)]
    results = await asyncio.gather(
        *(call(gateway, "GET", "/v1/whoami", token) for token in sprayed)
    )
    assert {resp.status for resp, _ in results} == {401}
    assert idp.fetches == 1  # inside the interval: none at all
    resp, _ = await call(gateway, "GET", "/v1/whoami", idp.sign())
    assert resp.status == 200  # the sprayer's address is not boxed; nothing was verified
