"""Token binding to the client fingerprint, through trusted proxies or not."""

from typing import Any

import structlog
from structlog.testing import capture_logs

from gateway.core import agent_keys
from tests.support.harness import TOKEN_URL, Gateway


async def status_and_code(resp: Any) -> tuple[int, str | None]:
    body = await resp.json(content_type=None)
    return resp.status, body.get("code") if resp.status >= 400 else None


async def test_reuse_from_another_user_agent_is_refused_and_revokes(gateway: Gateway) -> None:
    token = await gateway.new_token()
    async with gateway.send(token) as resp:
        assert resp.status == 200
    async with gateway.messages(token, **{"User-Agent": "curl/8"}) as resp:
        assert await status_and_code(resp) == (403, "token_reuse_suspected")
    async with gateway.messages(token) as resp:  # the original client is cut off too
        assert await status_and_code(resp) == (403, "token_revoked")


async def test_deny_action_keeps_the_token_for_its_owner(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(policies="binding: {action: deny}\n")
    token = await gw.new_token()
    async with gw.send(token) as resp:
        assert resp.status == 200
    async with gw.send(token, **{"User-Agent": "other"}) as resp:
        assert await status_and_code(resp) == (403, "token_reuse_suspected")
    async with gw.send(token) as resp:
        assert resp.status == 200


async def test_same_prefix_passes_other_prefix_is_reuse(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(server={"trusted_proxies": ["127.0.0.0/8"]})
    token = await gw.new_token()
    async with gw.send(token, **{"X-Forwarded-For": "203.0.113.10"}) as resp:
        assert resp.status == 200
    async with gw.messages(token, **{"X-Forwarded-For": "203.0.113.99"}) as resp:
        assert resp.status == 200  # same /24
    async with gw.messages(token, **{"X-Forwarded-For": "198.51.100.1"}) as resp:
        assert await status_and_code(resp) == (403, "token_reuse_suspected")


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(gateway: Gateway) -> None:
    token = await gateway.new_token()
    async with gateway.send(token, **{"X-Forwarded-For": "203.0.113.10"}) as resp:
        assert resp.status == 200
    # a client cannot change its apparent address by sending the header itself
    async with gateway.messages(token, **{"X-Forwarded-For": "198.51.100.1"}) as resp:
        assert resp.status == 200


async def test_malformed_forwarded_for_from_a_trusted_proxy_is_400(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(server={"trusted_proxies": ["127.0.0.0/8"]})
    token = await gw.new_token()
    async with gw.messages(token, **{"X-Forwarded-For": "definitely-not-an-ip"}) as resp:
        assert await status_and_code(resp) == (400, "invalid_request")


async def test_bound_at_issue(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(policies="binding: {bind_at: issue}\n")
    key = await gw.create_key()
    token = await gw.get_token(key)
    # someone else got hold of the token before its owner used it
    async with gw.send(token, **{"User-Agent": "thief"}) as resp:
        assert await status_and_code(resp) == (403, "token_reuse_suspected")
    async with gw.send(token) as resp:
        assert await status_and_code(resp) == (403, "token_revoked")
    fresh = await gw.get_token(key)
    async with gw.send(fresh) as resp:
        assert resp.status == 200


async def test_binding_can_be_switched_off(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(policies="binding: {components: []}\n")
    token = await gw.new_token()
    for agent in ("a", "b", "c"):
        async with gw.send(token, **{"User-Agent": agent}) as resp:
            assert resp.status == 200


async def test_trusted_proxy_may_pass_a_request_id(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(server={"trusted_proxies": ["127.0.0.0/8"]})
    async with gw.http.get(gw.url + "/nope", headers={"X-Request-Id": "edge-123"}) as resp:
        assert resp.headers["X-Request-Id"] == "edge-123"


async def test_untrusted_clients_cannot_choose_the_request_id(gateway: Gateway) -> None:
    async with gateway.http.get(gateway.url + "/nope", headers={"X-Request-Id": "mine"}) as resp:
        assert resp.headers["X-Request-Id"] != "mine"


async def test_log_lines_written_during_a_request_carry_its_id(gateway: Gateway) -> None:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
        headers = {"Authorization": "Bearer " + agent_keys.generate().key}
        async with gateway.http.get(
            gateway.url + TOKEN_URL.format(model="demo"), headers=headers
        ) as resp:
            assert resp.status == 404
        structlog.get_logger("gateway").info("after_the_request")
    (refused,) = [e for e in events if e["event"] == "invalid_key"]
    assert refused["request_id"] == resp.headers["X-Request-Id"]
    (after,) = [e for e in events if e["event"] == "after_the_request"]
    assert "request_id" not in after  # unbound once the request is answered


async def test_flag_action_admits_and_keeps_the_token(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(policies="binding: {action: flag}\n")
    token = await gw.new_token()
    async with gw.send(token) as resp:
        assert resp.status == 200
    async with gw.send(token, **{"User-Agent": "other"}) as resp:
        assert resp.status == 200
    async with gw.send(token) as resp:
        assert resp.status == 200
    assert gw.sample("gateway_tokens_flagged_total", binding="fingerprint") == 1
    assert gw.sample("gateway_tokens_flagged_total", binding="proof") == 0


async def test_several_fingerprints_per_token(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(policies="binding: {max_fingerprints: 2}\n")
    token = await gw.new_token()
    for agent in ("phone", "laptop", "phone"):
        async with gw.send(token, **{"User-Agent": agent}) as resp:
            assert resp.status == 200
    async with gw.send(token, **{"User-Agent": "third"}) as resp:
        assert await status_and_code(resp) == (403, "token_reuse_suspected")


async def test_a_revoked_token_stays_revoked_through_the_expiry_leeway(
    gateway_factory: Any, store_kind: str
) -> None:
    gw: Gateway = await gateway_factory(
        store=store_kind, tokens={"ttl_seconds": 30, "leeway_seconds": 30}
    )
    token = await gw.new_token()
    async with gw.send(token) as resp:
        assert resp.status == 200
    async with gw.send(token, **{"User-Agent": "thief"}) as resp:
        assert resp.status == 403
    claims = gw.services.admissions.decode(token)
    use_ttl_ms = (claims.remaining(gw.services.admissions.now()) + 30 + 1) * 1000
    store = gw.services.store
    if store_kind == "redis":
        inner = store.inner  # type: ignore[attr-defined]
        pttl = await inner.redis.pttl(inner.token_key(claims.jti))
        assert pttl > 55_000  # past exp + leeway, not just exp
        assert pttl <= use_ttl_ms + 1000
    else:
        expires = store.tokens.expires_at(claims.jti)  # type: ignore[attr-defined]
        assert expires - store._clock() > 55_000  # type: ignore[attr-defined]


async def test_a_revocation_seen_here_is_refused_without_asking_the_store(
    gateway_factory: Any, redis_url: str
) -> None:
    """The replica remembers what it saw revoked (a reuse it caught, a revoked verdict):
    the next use is refused at once, by the replica alone."""
    import redis

    gw: Gateway = await gateway_factory(store="redis")
    token = await gw.new_token()
    async with gw.send(token) as resp:
        assert resp.status == 200
    async with gw.messages(token, **{"User-Agent": "curl/8"}) as resp:
        assert await status_and_code(resp) == (403, "token_reuse_suspected")
    assert gw.sample("gateway_local_revocations") == 2  # the token and its conversation
    with redis.Redis.from_url(redis_url) as client:
        client.config_resetstat()
        for agent in ("curl/8", gw.user_agent):
            async with gw.messages(token, **{"User-Agent": agent}) as resp:
                assert await status_and_code(resp) == (403, "token_revoked")
        assert "cmdstat_evalsha" not in client.info("commandstats")
