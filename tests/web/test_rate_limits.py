"""Rate-limit policies and the penalty box, through the real gateway."""

import asyncio
from typing import Any

import pytest

from tests.support.harness import TOKEN_URL, Gateway

SEND_LIMIT = """
policies:
  - name: send-per-token
    match: {routes: [send]}
    partition: [token]
    limit: {rate: 1, per: 1s, burst: 2}
"""


async def problem(resp: Any) -> dict[str, Any]:
    return dict(await resp.json(content_type=None))


async def test_burst_then_429_with_headers_then_admitted_after_retry_after(
    gateway_factory: Any, store_kind: str
) -> None:
    gw: Gateway = await gateway_factory(store=store_kind, policies=SEND_LIMIT)
    token = await gw.new_token()
    for expected_remaining in (1, 0):
        async with gw.send(token) as resp:
            assert resp.status == 200
            assert resp.headers["RateLimit-Policy"] == '"send-per-token";q=1;w=1'
            assert resp.headers["RateLimit"].startswith(f'"send-per-token";r={expected_remaining};')
    async with gw.send(token) as resp:
        assert resp.status == 429
        body = await problem(resp)
        assert body["code"] == "rate_limited"
        assert "send-per-token" in body["detail"]
        retry_after = int(resp.headers["Retry-After"])
        assert retry_after == 1
        assert resp.headers["RateLimit"].startswith('"send-per-token";r=0;')
    await asyncio.sleep(retry_after)
    async with gw.send(token) as resp:
        assert resp.status == 200
    decisions = "gateway_ratelimit_decisions_total"
    assert gw.sample(decisions, policy="send-per-token", outcome="allowed") == 3
    assert gw.sample(decisions, policy="send-per-token", outcome="limited") == 1


async def test_streamed_answers_carry_ratelimit_headers(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(policies=SEND_LIMIT)
    token = await gw.new_token()
    async with gw.send(token, stream=True) as resp:
        assert resp.status == 200
        assert resp.headers["RateLimit"].startswith('"send-per-token";r=1;')
        await resp.read()


async def test_a_429_consumes_nothing_from_other_limits(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(
        policies="""
policies:
  - {name: tight, match: {routes: [send]}, partition: [token], limit: {rate: 1, per: 1m, burst: 1}}
  - {name: per-ip, match: {routes: [send]}, partition: [client_ip], limit: {rate: 1, per: 1m, burst: 3}}
"""
    )
    first, second = await gw.new_token(), await gw.new_token()
    async with gw.send(first) as resp:
        assert resp.status == 200
    for _ in range(5):
        async with gw.send(first) as resp:
            assert resp.status == 429
    # the refused requests did not eat into the per-IP allowance
    async with gw.send(second) as resp:
        assert resp.status == 200
        assert '"per-ip";r=1;' in resp.headers["RateLimit"]


async def test_shadow_policies_never_refuse(gateway_factory: Any, capsys: Any) -> None:
    gw: Gateway = await gateway_factory(
        policies="""
policies:
  - {name: trial, match: {routes: [send]}, partition: [token], limit: {rate: 1, per: 1m, burst: 1}, mode: shadow}
"""
    )
    token = await gw.new_token()
    for _ in range(4):
        async with gw.send(token) as resp:
            assert resp.status == 200
            assert "RateLimit" not in resp.headers
    assert capsys.readouterr().out.count("shadow_limit_exceeded") == 3
    assert (
        gw.sample("gateway_ratelimit_decisions_total", policy="trial", outcome="shadow_limited")
        == 3
    )


async def test_token_creation_limits_per_ip_and_per_key(
    gateway_factory: Any, store_kind: str
) -> None:
    gw: Gateway = await gateway_factory(
        store=store_kind,
        policies="""
policies:
  - {name: token-per-key, match: {routes: [token]}, partition: [api_key], limit: {rate: 1, per: 1m, burst: 2}}
""",
    )
    key, other = await gw.create_key(), await gw.create_key()
    for _ in range(2):
        await gw.get_token(key)
    async with gw.http.get(
        gw.url + TOKEN_URL.format(model="demo"), headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 29
    await gw.get_token(other)  # another key has its own allowance


async def test_per_key_overrides(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory()
    vip = await gw.create_key()
    vip_id = next(k for k, v in gw.keys.items() if v == vip)
    gw2: Gateway = await gateway_factory(
        policies=f"""
policies:
  - name: send-per-token
    match: {{routes: [send]}}
    partition: [token]
    limit: {{rate: 1, per: 1m, burst: 1}}
    overrides:
      - key_ids: [{vip_id}]
        limit: {{rate: 10, per: 1m, burst: 3}}
"""
    )
    token = await gw2.get_token(vip)
    for _ in range(3):
        async with gw2.send(token) as resp:
            assert resp.status == 200
    async with gw2.send(token) as resp:
        assert resp.status == 429


PENALTY = """
penalty_box: {subject: client_ip, window: 1m, threshold: 3, cooldown: 2s}
"""


async def test_penalty_box_refuses_before_any_hashing(
    gateway_factory: Any, store_kind: str
) -> None:
    gw: Gateway = await gateway_factory(store=store_kind, policies=PENALTY)
    key = await gw.create_key()
    wrong = key[:-8] + ("A" * 8 if not key.endswith("A" * 8) else "B" * 8)  # bad checksum
    for _ in range(3):
        async with gw.http.get(
            gw.url + TOKEN_URL.format(model="demo"), headers={"Authorization": f"Bearer {wrong}"}
        ) as resp:
            assert resp.status == 404
    verifications = gw.services.keys.hash_verifications
    # now boxed: even the right key is refused, without any argon2 work
    async with gw.http.get(
        gw.url + TOKEN_URL.format(model="demo"), headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 429
        assert 1 <= int(resp.headers["Retry-After"]) <= 2
    assert gw.services.keys.hash_verifications == verifications
    await asyncio.sleep(2.1)
    assert await gw.get_token(key)


async def test_forged_tokens_count_towards_the_box(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(policies=PENALTY)
    token = await gw.new_token()
    for _ in range(3):
        async with gw.send(token[:-4] + "AAAA") as resp:
            assert resp.status == 403
    async with gw.send(token) as resp:
        assert resp.status == 429


async def test_other_replicas_learn_the_box_from_the_store(gateway_factory: Any) -> None:
    one: Gateway = await gateway_factory(store="redis", policies=PENALTY)
    two: Gateway = await gateway_factory(store="redis", policies=PENALTY)
    token = await one.new_token()
    await two.services.keys.store.refresh()  # the key store's own sync, without the wait
    for _ in range(3):
        async with one.send("garbage") as resp:
            assert resp.status == 403
    async with two.send(token) as resp:  # two never saw the failures
        assert resp.status == 429


async def test_a_client_hanging_up_during_argon2_is_still_counted(gateway_factory: Any) -> None:
    """The failure count must not depend on the attacker waiting for the answer."""
    import aiohttp

    from gateway.core import agent_keys

    slow_argon2 = {"time_cost": 6, "memory_kib": 65536, "parallelism": 1}
    gw: Gateway = await gateway_factory(
        keys={"argon2": slow_argon2},
        policies="penalty_box: {subject: client_ip, window: 1m, threshold: 2, cooldown: 1m}\n",
    )
    key = await gw.create_key()
    body = key[:20] + ("x" if key[20] != "x" else "y") + key[21 : -agent_keys.CHECKSUM_LEN]
    wrong_secret = body + agent_keys._checksum(body)  # well formed: reaches argon2
    impatient = aiohttp.ClientTimeout(total=0.02)
    for _ in range(2):
        with pytest.raises(TimeoutError):
            async with gw.http.get(
                gw.url + TOKEN_URL.format(model="demo"),
                headers={"Authorization": f"Bearer {wrong_secret}"},
                timeout=impatient,
            ):
                pass
    for _ in range(100):  # the verifications finish in the background
        if gw.services.admissions.penalties.remaining_ms("127.0.0.1"):
            break
        await asyncio.sleep(0.05)
    async with gw.http.get(
        gw.url + TOKEN_URL.format(model="demo"), headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 429
