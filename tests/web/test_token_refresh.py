"""``POST /v1/chat/conversation/public/token/refresh`` on a real gateway (memory store and
Redis) in front of the reference backend: each rule of docs/browser.md's renewal contract
and each of its problem codes."""

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from gateway.core import agent_keys
from gateway.core.token_codec import ClientToken, TokenCodec, log_hash
from gateway.keystore.base import utcnow
from tests.support.dpop import ProofKey
from tests.support.harness import (
    REFRESH_URL,
    SEND_URL,
    TOKEN_URL,
    Gateway,
    make_config,
    start_gateway,
    stop_gateway,
)
from tests.support.redis_servers import running_redis

#: tokens.rotation_overlap_seconds 0: a retired token is reuse as soon as the clock moves
NO_OVERLAP = {"tokens": {"rotation_overlap_seconds": 0}}


async def answer(resp: Any) -> tuple[int, dict[str, Any]]:
    return resp.status, await resp.json(content_type=None)


async def renewed(gateway: Gateway, token: str, **headers: str) -> str:
    async with gateway.refresh(token, **headers) as resp:
        status, body = await answer(resp)
    assert status == 200, body
    return str(body["token"])


async def refused(gateway: Gateway, token: str, **headers: str) -> tuple[int, str]:
    async with gateway.refresh(token, **headers) as resp:
        status, body = await answer(resp)
    return status, str(body.get("code"))


def claims(gateway: Gateway, token: str) -> ClientToken:
    return gateway.services.codec.decode(token, time.time())


def key_id_of(key: str) -> str:
    parsed = agent_keys.parse(key)
    assert parsed is not None
    return parsed.key_id


async def test_a_renewed_token_keeps_the_conversation(gateway: Gateway) -> None:
    first = await gateway.new_token()
    async with gateway.send(first, "remember me") as resp:
        assert resp.status == 200
    async with gateway.refresh(first) as resp:
        status, body = await answer(resp)
        assert resp.headers["Cache-Control"].startswith("no-store")
    assert status == 200 and set(body) == {"token", "expires_in", "expires_at"}
    assert 0 < body["expires_in"] <= gateway.config.tokens.ttl_seconds
    second = body["token"]
    old, new = claims(gateway, first), claims(gateway, second)
    assert new.jti != old.jti
    assert (new.conversation_id, new.model_id, new.key_id) == (
        old.conversation_id,
        old.model_id,
        old.key_id,
    )
    assert new.started_at == old.issued_at  # the lifetime counts from the first token
    async with gateway.messages(second) as resp:  # the history is the same conversation
        status, history = await answer(resp)
    assert status == 200 and "remember me" in str(history)
    third = await renewed(gateway, second)
    assert claims(gateway, third).conversation_id == old.conversation_id
    assert gateway.sample("gateway_token_renewals_total", outcome="renewed") == 2


async def test_renewals_within_the_overlap_get_the_same_token(gateway: Gateway) -> None:
    first = await gateway.new_token()
    tokens = await asyncio.gather(*(renewed(gateway, first) for _ in range(4)))
    assert len(set(tokens)) == 1
    async with gateway.send(first) as resp:  # in flight with the old token: still passes
        assert resp.status == 200
    async with gateway.send(tokens[0]) as resp:
        assert resp.status == 200
    assert gateway.sample("gateway_token_renewals_total", outcome="renewed") == 1
    assert gateway.sample("gateway_token_renewals_total", outcome="repeated") == 3


async def test_a_retired_token_after_the_overlap_revokes_the_conversation(
    gateway_factory: Any, store_kind: str
) -> None:
    gw: Gateway = await gateway_factory(store=store_kind, **NO_OVERLAP)
    first = await gw.new_token()
    second = await renewed(gw, first)
    await asyncio.sleep(0.05)  # past the overlap (0 s)
    with capture_logs() as events:
        async with gw.send(first) as resp:  # someone kept a copy of the old token
            status, body = await answer(resp)
    assert (status, body["code"]) == (403, "token_reuse_suspected")
    (revoked,) = [e for e in events if e["event"] == "token_family_revoked"]
    conversation = claims(gw, second).conversation_id
    assert revoked["conversation_hash"] == log_hash(conversation)
    assert conversation not in str(events)  # logs name a conversation by hash only
    # every token of the conversation is refused, the newest too, on every route
    async with gw.messages(second) as resp:
        assert (await answer(resp))[1]["code"] == "token_reuse_suspected"
    assert await refused(gw, second) == (403, "token_reuse_suspected")
    assert gw.sample("gateway_token_family_revocations_total", reason="replayed") == 1
    assert gw.sample("gateway_suspicious_events_total", reason="token_reuse") >= 1


async def test_renewing_a_retired_token_after_the_overlap_is_reuse(
    gateway_factory: Any, store_kind: str
) -> None:
    gw: Gateway = await gateway_factory(store=store_kind, **NO_OVERLAP)
    first = await gw.new_token()
    second = await renewed(gw, first)
    await asyncio.sleep(0.05)
    assert await refused(gw, first) == (403, "token_reuse_suspected")
    async with gw.send(second) as resp:
        assert (await answer(resp))[1]["code"] == "token_reuse_suspected"
    assert gw.sample("gateway_token_renewals_total", outcome="token_reuse_suspected") == 1


async def test_a_family_revoked_on_one_replica_is_refused_on_another(
    gateway_factory: Any, redis_url: str
) -> None:
    keys = {"type": "redis", "redis_url": redis_url}
    one: Gateway = await gateway_factory(store="redis", keys=keys, **NO_OVERLAP)
    two: Gateway = await gateway_factory(store="redis", keys=keys, **NO_OVERLAP)
    first = await one.new_token()
    second = await renewed(one, first)
    await asyncio.sleep(0.05)
    async with one.messages(first) as resp:
        assert (await answer(resp))[1]["code"] == "token_reuse_suspected"
    await two.services.keys.store.refresh()
    async with two.send(second) as resp:
        assert (await answer(resp))[1]["code"] == "token_reuse_suspected"


async def test_the_binding_carries_over(gateway: Gateway) -> None:
    first = await gateway.new_token()
    async with gateway.send(first) as resp:
        assert resp.status == 200
    second = await renewed(gateway, first)
    # the successor is bound to the client that renewed: another one is reuse
    async with gateway.send(second, **{"User-Agent": "thief/1"}) as resp:
        assert (await answer(resp))[1]["code"] == "token_reuse_suspected"


async def test_a_renewal_from_another_client_is_reuse(gateway: Gateway) -> None:
    first = await gateway.new_token()
    async with gateway.send(first) as resp:
        assert resp.status == 200
    assert await refused(gateway, first, **{"User-Agent": "thief/1"}) == (
        403,
        "token_reuse_suspected",
    )
    assert await refused(gateway, first) == (403, "token_revoked")
    assert gateway.sample("gateway_token_family_revocations_total", reason="binding") == 1


async def test_an_expired_token_renews_within_the_grace(gateway: Gateway) -> None:
    key = await gateway.create_key()
    codec: TokenCodec = gateway.services.codec
    ttl = gateway.config.tokens.ttl_seconds
    grace = gateway.config.tokens.refresh_grace_seconds
    within = codec.issue(key_id=key_id_of(key), model_id="demo", now=time.time() - ttl - 60)
    async with gateway.send(within.token) as resp:  # expired for every other use
        assert (await answer(resp))[1]["code"] == "token_expired"
    new = claims(gateway, await renewed(gateway, within.token))
    assert new.conversation_id == within.claims.conversation_id
    past = codec.issue(key_id=key_id_of(key), model_id="demo", now=time.time() - ttl - grace - 30)
    assert await refused(gateway, past.token) == (403, "token_expired")


async def test_past_the_conversation_lifetime_renewal_is_refused(gateway: Gateway) -> None:
    key = await gateway.create_key()
    codec: TokenCodec = gateway.services.codec
    now = int(time.time())
    lifetime = gateway.config.tokens.max_conversation_seconds
    first = codec.issue(key_id=key_id_of(key), model_id="demo", now=now)
    old = first.claims._replace(conversation_started_at=now - lifetime - 1)
    late = codec.renew(old, jti=first.claims.jti, issued_at=now, fingerprint=None)
    assert await refused(gateway, late.token) == (403, "conversation_expired")
    young = first.claims._replace(conversation_started_at=now - lifetime + 60)
    fine = codec.renew(young, jti=first.claims.jti + "x", issued_at=now, fingerprint=None)
    assert claims(gateway, await renewed(gateway, fine.token)).started_at == now - lifetime + 60


async def test_a_revoked_key_refuses_renewal(gateway: Gateway) -> None:
    key = await gateway.create_key()
    token = await gateway.get_token(key)
    await gateway.services.keys.store.revoke(key_id_of(key), utcnow())
    assert await refused(gateway, token) == (403, "token_revoked")


async def test_the_key_must_still_hold_the_model(gateway: Gateway) -> None:
    key = await gateway.create_key(("demo",))
    codec: TokenCodec = gateway.services.codec
    other = codec.issue(key_id=key_id_of(key), model_id="other", now=time.time())
    assert await refused(gateway, other.token) == (404, "model_not_found")


async def test_origins_are_checked_as_on_the_message_routes(gateway: Gateway) -> None:
    key = await gateway.create_key(origins=("https://shop.example",))
    token = await gateway.get_token(key, Origin="https://shop.example")
    assert await refused(gateway, token, Origin="https://evil.example") == (
        403,
        "origin_not_allowed",
    )
    async with gateway.refresh(token, Origin="https://shop.example") as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example"


async def test_a_forged_token_is_invalid(gateway: Gateway) -> None:
    token = await gateway.new_token()
    head, body, _ = token.split(".")
    assert await refused(gateway, f"{head}.{body}.AAAA") == (403, "token_invalid")
    assert await refused(gateway, "x" * 5000) == (403, "token_invalid")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b"{}", "'client_token' is required"),
        (b'{"client_token": 7}', "non-empty string"),
        (b'{"client_token": ""}', "non-empty string"),
        (b'{"client_token": "t", "message": "hi"}', "unknown field 'message'"),
    ],
)
async def test_a_malformed_body_is_400(gateway: Gateway, body: bytes, detail: str) -> None:
    async with gateway.http.post(
        gateway.url + REFRESH_URL,
        data=body,
        headers=gateway.headers({"Content-Type": "application/json"}),
    ) as resp:
        status, problem = await answer(resp)
    assert (status, problem["code"]) == (400, "invalid_request")
    assert detail in problem["detail"]
    assert resp.content_type == "application/problem+json"


async def test_other_media_types_and_large_bodies(gateway: Gateway) -> None:
    token = await gateway.new_token()
    async with gateway.http.post(
        gateway.url + REFRESH_URL,
        data=token,
        headers=gateway.headers({"Content-Type": "text/plain"}),
    ) as resp:
        assert (await answer(resp))[1]["code"] == "unsupported_media_type"
        assert resp.status == 415
    big = b'{"client_token": "' + b"x" * gateway.config.server.max_body_bytes + b'"}'
    async with gateway.http.post(
        gateway.url + REFRESH_URL,
        data=big,
        headers=gateway.headers({"Content-Type": "application/json"}),
    ) as resp:
        assert resp.status == 413
        assert (await answer(resp))[1]["code"] == "payload_too_large"
    assert gateway.sample("gateway_token_renewals_total", outcome="other") == 2


REFRESH_POLICIES = """
binding: {bind_at: first_use, components: [ip_prefix, user_agent]}
policies:
  - name: refresh-per-ip
    match: {routes: [refresh]}
    partition: [client_ip]
    limit: {rate: 1, per: 1h, burst: 2}
"""


async def test_the_refresh_route_kind_is_rate_limited(
    gateway_factory: Any, store_kind: str
) -> None:
    gw: Gateway = await gateway_factory(store=store_kind, policies=REFRESH_POLICIES)
    token = await gw.new_token()
    for _ in range(2):
        async with gw.refresh(token) as resp:
            status, body = await answer(resp)
            assert status == 200, body
            assert resp.headers["RateLimit-Policy"].startswith('"refresh-per-ip"')
            assert "RateLimit" in resp.headers
        token = body["token"]
    async with gw.refresh(token) as resp:
        status, body = await answer(resp)
        assert (status, body["code"]) == (429, "rate_limited")
        assert int(resp.headers["Retry-After"]) > 0
    # refused by a limit, the family did not rotate: the token presented still works
    async with gw.send(token) as resp:
        assert resp.status == 200
    assert gw.sample("gateway_token_renewals_total", outcome="rate_limited") == 1


async def test_the_access_line_names_tokens_by_their_hash_only(gateway: Gateway) -> None:
    first = await gateway.new_token()
    junk = "x" * 300
    with capture_logs() as events:
        second = await renewed(gateway, first)
        assert await refused(gateway, junk) == (403, "token_invalid")
    access = [e for e in events if e.get("route") == REFRESH_URL]
    assert [e["token_hash"] for e in access] == [log_hash(first), log_hash(junk)]
    assert first not in str(events) and second not in str(events)


async def test_under_flag_a_renewal_from_another_client_does_not_rebind_the_conversation(
    gateway_factory: Any,
) -> None:
    """``binding.action: flag`` admits a renewal from another client and flags it; the
    successor keeps the owner's binding, so the other client's later uses are flagged
    too (a renewal bound to the renewer laundered a stolen token in one step)."""
    gw: Gateway = await gateway_factory(policies="binding: {action: flag, bind_at: issue}\n")
    first = await gw.new_token()
    thief = {"User-Agent": "thief/1"}

    async def flags(token: str, **headers: str) -> int:
        with capture_logs() as events:
            async with gw.messages(token, **headers) as resp:
                assert resp.status == 404  # admitted, no message yet
        return sum(e["event"] == "token_reuse_flagged" for e in events)

    with capture_logs() as events:
        second = await renewed(gw, first, **thief)
    assert [e["event"] for e in events].count("token_reuse_flagged") == 1
    assert await flags(second, **thief) == 1  # still not the owner's client
    assert await flags(second) == 0  # the owner's
    assert claims(gw, second).fingerprint == claims(gw, first).fingerprint


async def test_a_renewal_never_fails_open(backend_url: str, tmp_path: Path) -> None:
    """With ``on_store_error: fail_open`` a replica serves reads and sends on local limits
    while Redis is down, but refuses renewals (503): the local store knows no family, so
    a retired token (a thief's copy) would be renewed, and the rotation, unknown to the
    shared store, would revoke the visitor's conversation once Redis is back."""
    with running_redis(tmp_path / "redis") as server:
        config = make_config(
            tmp_path,
            backend_url,
            redis_url=f"redis://127.0.0.1:{server.port}/0",
            policies="on_store_error: fail_open\n",
        )
        gw = await start_gateway(config)
        first = await gw.new_token()
    try:  # Redis is down now
        async with gw.send(first) as resp:
            assert resp.status == 200  # failing open
        async with gw.refresh(first) as resp:
            status, body = await answer(resp)
        assert (status, body["code"]) == (503, "store_unavailable")
        assert resp.headers["Retry-After"] == "1"
    finally:
        await stop_gateway(gw)


async def test_a_family_record_lives_as_long_as_its_tokens_not_the_conversations_day(
    gateway_factory: Any, redis_url: str
) -> None:
    """A family's record is kept from each rotation or revocation as long as a token issued
    then can pass (TTL, leeway, grace, a leeway for clocks), not for the conversation's
    whole lifetime: records of conversations left idle would pile up for a day."""
    gw: Gateway = await gateway_factory(store="redis")
    first = await gw.new_token()
    second = await renewed(gw, first)
    tokens = gw.config.tokens
    span_ms = (tokens.ttl_seconds + 2 * tokens.leeway_seconds + tokens.refresh_grace_seconds) * 1000
    family = f"{{{gw.config.store.prefix}}}:tf:{claims(gw, second).conversation_id}"
    with redis.Redis.from_url(redis_url) as client:
        assert span_ms - 60_000 < client.pttl(family) <= span_ms
    async with gw.messages(second, **{"User-Agent": "thief/1"}) as resp:  # revokes it
        assert (await answer(resp))[1]["code"] == "token_reuse_suspected"
    with redis.Redis.from_url(redis_url) as client:
        assert client.hget(family, "x") == b"1"
        assert span_ms - 60_000 < client.pttl(family) <= span_ms


async def test_without_a_fingerprint_rule_a_renewed_token_works(gateway_factory: Any) -> None:
    """``binding: {components: []}`` (no fingerprint): the successor carries no ``fph``
    at all; an empty one made it malformed, refused (403 ``token_invalid``, counted as a
    bad token) on its first use, for tokens with and without a key."""
    gw: Gateway = await gateway_factory(policies="binding: {components: []}\n")
    key, agent = ProofKey(), await gw.create_key()
    for bound in (False, True):
        proof = {"DPoP": key.proof("GET", gw.url + TOKEN_URL.format(model="demo"))}
        token = await gw.get_token(agent, **(proof if bound else {}))
        proof = {"DPoP": key.proof("POST", gw.url + REFRESH_URL, token=token)}
        successor = await renewed(gw, token, **(proof if bound else {}))
        assert claims(gw, successor).fingerprint is None
        proof = {"DPoP": key.proof("POST", gw.url + SEND_URL, token=successor)}
        async with gw.send(successor, **(proof if bound else {})) as resp:
            assert resp.status == 200, (bound, await resp.text())
