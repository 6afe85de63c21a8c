"""The penalty box against parallel floods: every argon2 run is counted before it starts,
so wrong keys sent all at once cost at most the threshold in verifications; subjects by
IPv6 prefix; and a legitimate client behind the same address is not refused for nothing."""

import asyncio
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.core import agent_keys
from tests.support.harness import TOKEN_URL, Gateway, make_config, start_gateway, stop_gateway
from tests.support.processes import free_port

THRESHOLD = 20
#: a window and cool-down far longer than any test run: nothing expires under load
BOX = f"penalty_box: {{subject: client_ip, window: 10m, threshold: {THRESHOLD}, cooldown: 10m}}\n"
PROXIED = {"trusted_proxies": ["127.0.0.0/8"]}
ATTACKER, LEGIT = "198.51.100.7", "203.0.113.5"


def wrong_secret(key: str) -> str:
    """The key's id with a random secret and a valid checksum: a lookup hit that reaches
    argon2, every time with another secret (so no two share a verification)."""
    parsed = agent_keys.parse(key)
    assert parsed is not None
    secret = "".join(secrets.choice(agent_keys.ALPHABET) for _ in range(agent_keys.SECRET_LEN))
    body = f"{agent_keys.PREFIX}{parsed.key_id}_{secret}"
    return body + agent_keys._checksum(body)


async def token_status(
    http: aiohttp.ClientSession, gw: Gateway, key: str, client_ip: str
) -> tuple[int, str]:
    async with http.get(
        gw.url + TOKEN_URL.format(model="demo"),
        headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": client_ip},
    ) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body.get("code", "") if resp.status >= 400 else ""


async def test_parallel_wrong_keys_cost_at_most_the_threshold_in_argon2(
    gateway_factory: Any, store_kind: str
) -> None:
    """100 wrong secrets at once from one client: only THRESHOLD of them are verified
    (each counted before its argon2 run starts), the rest are refused with 429 without
    any hashing, and a right key from another client in the same burst is served."""
    gw: Gateway = await gateway_factory(store=store_kind, policies=BOX, server=PROXIED)
    await flood_then_check(gw)


async def test_failing_open_the_local_store_counts_before_argon2_too(
    tmp_path: Path, backend_url: str
) -> None:
    """Redis unreachable, fail-open policies: the replica's own store reserves the places."""
    (tmp_path / "gw").mkdir()
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    config = make_config(
        tmp_path / "gw",
        backend_url,
        redis_url=dead,
        policies=BOX + "on_store_error: fail_open\n",
        server=PROXIED,
        keys={"path": str(tmp_path / "keys.yaml")},
    )
    gw = await start_gateway(config)
    try:
        await flood_then_check(gw)
        assert gw.sample("gateway_store_fail_open_total", operation="reserve_attempt") > 0
    finally:
        await stop_gateway(gw)


async def flood_then_check(gw: Gateway) -> None:
    victim_key = await gw.create_key()
    cold_key = await gw.create_key()  # never verified yet: it needs an argon2 run too
    verifier = gw.services.keys
    before = verifier.hash_verifications
    attempts = [(wrong_secret(victim_key), ATTACKER) for _ in range(100)]
    attempts.insert(50, (cold_key, LEGIT))
    connector = aiohttp.TCPConnector(limit=0)  # all of them open at once
    async with aiohttp.ClientSession(connector=connector) as http:
        answers = await asyncio.gather(*(token_status(http, gw, k, ip) for k, ip in attempts))
    legit = answers.pop(50)
    assert legit == (200, "")
    assert answers.count((404, "key_not_found")) == THRESHOLD, answers
    assert answers.count((429, "rate_limited")) == 100 - THRESHOLD, answers
    assert verifier.hash_verifications - before == THRESHOLD + 1  # the right key's own run
    # the attacker is boxed now; the other client is not
    async with aiohttp.ClientSession() as http:
        assert (await token_status(http, gw, victim_key, ATTACKER))[0] == 429
        assert (await token_status(http, gw, victim_key, LEGIT))[0] == 200


async def test_a_success_gives_its_attempt_back(gateway_factory: Any, store_kind: str) -> None:
    """Behind one address (a NAT), right keys never count towards the box, however many
    arrive between wrong ones: an attempt that verifies is released, not kept."""
    gw: Gateway = await gateway_factory(
        store=store_kind,
        policies="penalty_box: {subject: client_ip, window: 10m, threshold: 3, cooldown: 10m}\n",
        server=PROXIED,
    )
    keys = [await gw.create_key() for _ in range(6)]
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            assert (await token_status(http, gw, wrong_secret(keys[0]), ATTACKER))[0] == 404
        for key in keys:  # six cold keys, each its own argon2 run
            assert await token_status(http, gw, key, ATTACKER) == (200, "")
        # the third failure still boxes
        assert (await token_status(http, gw, wrong_secret(keys[0]), ATTACKER))[0] == 404
        assert (await token_status(http, gw, keys[1], ATTACKER))[0] == 429


@pytest.mark.parametrize("subject", ["client_ip", "ip_prefix"])
async def test_many_addresses_of_one_ipv6_64_share_one_box(
    gateway_factory: Any, store_kind: str, subject: str
) -> None:
    """A client holding a /64 cannot rotate addresses to escape the box: the subject is
    the prefix (`ip_prefix.ipv6`), for `subject: client_ip` as for `ip_prefix`."""
    gw: Gateway = await gateway_factory(
        store=store_kind,
        policies=f"penalty_box: {{subject: {subject}, window: 10m, threshold: 3, cooldown: 10m}}\n",
        server=PROXIED,
    )
    key = await gw.create_key()
    async with aiohttp.ClientSession() as http:
        for address in ("2001:db8:1:2::1", "2001:db8:1:2:a:b:c:d", "2001:db8:1:2:ffff::fffe"):
            assert (await token_status(http, gw, "garbage", address))[0] == 404
        assert (await token_status(http, gw, key, "2001:db8:1:2:9:9:9:9"))[0] == 429
        # the next /64 is another client
        assert await token_status(http, gw, key, "2001:db8:1:3::1") == (200, "")
