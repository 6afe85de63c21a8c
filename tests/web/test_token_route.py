"""GET /v1/chat/conversation/public/message/token/{modelId}: every status."""

import asyncio
from datetime import UTC, datetime

import jwt
from multidict import CIMultiDict

from gateway.keystore.base import utcnow
from tests.support.harness import TOKEN_URL, Gateway


async def get(
    gateway: Gateway, model: str = "demo", **headers: str
) -> tuple[int, dict, CIMultiDict[str]]:
    async with gateway.http.get(
        gateway.url + TOKEN_URL.format(model=model), headers=gateway.headers(headers)
    ) as resp:
        return resp.status, await resp.json(content_type=None), CIMultiDict(resp.headers)


async def test_issues_a_token(gateway: Gateway) -> None:
    key = await gateway.create_key()
    status, body, headers = await get(gateway, Authorization=f"Bearer {key}")
    assert status == 200
    assert set(body) == {"token", "expires_in", "expires_at"}
    assert body["expires_in"] == 900
    expires = datetime.fromisoformat(body["expires_at"])
    assert expires.tzinfo is not None
    assert 890 <= (expires - datetime.now(UTC)).total_seconds() <= 901
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["mid"] == "demo" and claims["akid"] in gateway.keys
    assert headers["Cache-Control"] == "no-store"
    assert len(headers["X-Request-Id"]) >= 16
    assert key not in str(headers) and key not in str(body)


async def test_missing_or_non_bearer_credentials_get_401(gateway: Gateway) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}):
        status, body, resp_headers = await get(gateway, **headers)
        assert status == 401, headers
        assert body["code"] == "missing_credentials"
        assert resp_headers["Content-Type"] == "application/problem+json"
        assert resp_headers["WWW-Authenticate"].startswith("Bearer")
        assert set(body) == {"type", "title", "status", "detail", "code"}


async def test_bad_keys_get_the_same_404(gateway: Gateway) -> None:
    key = await gateway.create_key()
    wrong_secret = key[:20] + ("x" if key[20] != "x" else "y") + key[21:]
    # keep the checksum valid so the store lookup and argon2 are reached
    from gateway.core import agent_keys

    body = wrong_secret[: -agent_keys.CHECKSUM_LEN]
    wrong_secret = body + agent_keys._checksum(body)
    unknown = agent_keys.generate().key
    bodies = []
    for candidate in ("garbage", key[:-1] + "!", unknown, wrong_secret):
        status, problem, _ = await get(gateway, Authorization=f"Bearer {candidate}")
        assert status == 404, candidate
        assert problem["code"] == "key_not_found"
        bodies.append(problem["detail"])
    assert len(set(bodies)) == 1  # never says which part was wrong


async def test_revoked_key_gets_404_even_with_a_cached_verification(gateway: Gateway) -> None:
    key = await gateway.create_key()
    assert (await get(gateway, Authorization=f"Bearer {key}"))[0] == 200
    assert len(gateway.services.keys.cache) == 1
    key_id = next(iter(gateway.keys))
    await gateway.services.keys.store.revoke(key_id, utcnow())
    status, body, _ = await get(gateway, Authorization=f"Bearer {key}")
    assert status == 404 and body["code"] == "key_not_found"


async def test_model_not_on_the_key_gets_404(gateway: Gateway) -> None:
    key = await gateway.create_key(("demo",))
    status, body, _ = await get(gateway, "other", Authorization=f"Bearer {key}")
    assert status == 404 and body["code"] == "model_not_found"
    status, body, _ = await get(gateway, "unheard-of", Authorization=f"Bearer {key}")
    assert status == 404 and body["code"] == "model_not_found"


async def test_verified_keys_are_cached_by_hmac_not_by_key(gateway: Gateway) -> None:
    key = await gateway.create_key()
    verifier = gateway.services.keys
    for _ in range(5):
        assert (await get(gateway, Authorization=f"Bearer {key}"))[0] == 200
    assert verifier.hash_verifications == 1
    entries = list(verifier.cache._entries)
    assert len(entries) == 1 and key.encode() not in entries[0]


async def test_unknown_routes_and_methods_are_problems(gateway: Gateway) -> None:
    async with gateway.http.get(gateway.url + "/nope") as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 404 and body["code"] == "not_found"
        assert "X-Request-Id" in resp.headers
    async with gateway.http.delete(gateway.url + TOKEN_URL.format(model="demo")) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 405 and body["code"] == "method_not_allowed"
        assert resp.headers["Allow"] == "GET,OPTIONS"  # OPTIONS: CORS preflights


async def test_concurrent_requests_with_one_new_key_share_one_verification(
    gateway: Gateway,
) -> None:
    key = await gateway.create_key()
    verifier = gateway.services.keys
    before = verifier.hash_verifications
    answers = await asyncio.gather(*(get(gateway, Authorization=f"Bearer {key}") for _ in range(8)))
    assert [a[0] for a in answers] == [200] * 8
    assert verifier.hash_verifications == before + 1
    assert not verifier._running  # nothing left behind
