"""Killing Redis under traffic: fail closed quickly, or fail open to local limits; then
recover shared enforcement when Redis returns, without restarting the gateways."""

import asyncio
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
from pytest_redis.executor import RedisExecutor

from tests.support.redis_servers import dedicated_redis, frozen
from tests.support.replicas import SEND, Replicas, burst, replicas

pytestmark = pytest.mark.slow  # replicas as processes

N = 5
POLICIES = f"""
on_store_error: {{mode}}
policies:
  - name: send-per-token
    match: {{{{routes: [send]}}}}
    partition: [token]
    limit: {{{{rate: {N}, per: 1h, burst: {N}}}}}
"""


@pytest.fixture
def dedicated(tmp_path: Path) -> Iterator[RedisExecutor]:
    datadir = tmp_path / "redis"
    datadir.mkdir()
    executor = dedicated_redis(datadir)
    yield executor
    if executor.running():
        executor.stop()


async def timed_send(client: httpx.AsyncClient, url: str, token: str) -> tuple[int, float, str]:
    started = time.monotonic()
    resp = await client.post(url + SEND, json={"client_token": token, "message": "hi"})
    code = resp.json().get("code", "") if resp.status_code >= 400 else ""
    return resp.status_code, time.monotonic() - started, code


async def wait_until_shared_again(group: Replicas, timeout: float = 10.0) -> None:
    """Send traffic (a new token each time, so no limit is spent) until every replica has
    closed its circuit to the store again; a fail-open replica answers 200 either way, so
    its log is what tells."""
    key = group.create_key()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = await burst([(url, group.token(key, i)) for i, url in enumerate(group.urls)])
        closed = all("store_circuit_closed" in log.read_text() for log in group.logs)
        if closed and statuses == [200] * len(group.urls):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the gateways did not use the store again after it returned")


async def assert_exactly_n_shared(group: Replicas) -> None:
    token = group.token(group.create_key())
    statuses = await burst([(group.urls[i % 2], token) for i in range(5 * N)])
    assert statuses.count(200) == N, statuses
    assert statuses.count(429) == 4 * N, statuses


def two_replicas(
    tmp_path: Path, redis_server: RedisExecutor, upstream: str, mode: str
) -> AbstractContextManager[Replicas]:
    """Two gateways on the test's own Redis, with the default 50 ms store deadline."""
    return replicas(
        tmp_path,
        2,
        store_url=f"redis://127.0.0.1:{redis_server.port}/0",
        upstream=upstream,
        policies=POLICIES.format(mode=mode),
        store={"timeout_ms": 50},
    )


async def test_fail_closed_refuses_fast_then_recovers(
    tmp_path: Path, dedicated: RedisExecutor, backend_process: str
) -> None:
    with two_replicas(tmp_path, dedicated, backend_process, "fail_closed") as group:
        key = group.create_key()
        tokens = [group.token(key, i) for i in range(2)]
        assert await burst(list(zip(group.urls, tokens, strict=True))) == [200, 200]

        dedicated.kill()
        async with httpx.AsyncClient(timeout=10) as client:
            results = [
                await timed_send(client, group.urls[i % 2], tokens[i % 2]) for i in range(20)
            ]
        assert {(status, code) for status, _, code in results} == {(503, "store_unavailable")}
        slowest = max(elapsed for _, elapsed, _ in results)
        assert slowest < 1.0, f"a request waited {slowest:.3f}s for a dead store"

        dedicated.start()
        await wait_until_shared_again(group)
        await assert_exactly_n_shared(group)


async def test_fail_open_keeps_flowing_under_local_limits_then_recovers(
    tmp_path: Path, dedicated: RedisExecutor, backend_process: str
) -> None:
    with two_replicas(tmp_path, dedicated, backend_process, "fail_open") as group:
        token = group.token(group.create_key())
        assert await burst([(group.urls[0], token)]) == [200]

        dedicated.kill()
        async with httpx.AsyncClient(timeout=10) as client:
            results = [await timed_send(client, group.urls[i % 2], token) for i in range(5 * N)]
        statuses = [status for status, _, _ in results]
        assert set(statuses) <= {200, 429}, statuses
        # each replica now limits on its own: N each, from a fresh local count
        assert statuses.count(200) == 2 * N, statuses
        assert "store_fail_open" in group.log_text()

        dedicated.start()
        await wait_until_shared_again(group)
        await assert_exactly_n_shared(group)
        assert "store_recovered" in group.log_text()


REVOKE_ON_REUSE = """
on_store_error: fail_open
binding: {bind_at: first_use, components: [user_agent], action: revoke}
"""
OWNER, THIEF = {"User-Agent": "owner/1.0"}, {"User-Agent": "thief/1.0"}


async def send_as(
    client: httpx.AsyncClient, url: str, token: str, headers: dict[str, str]
) -> tuple[int, str]:
    resp = await client.post(
        url + SEND, json={"client_token": token, "message": "hi"}, headers=headers
    )
    return resp.status_code, resp.json().get("code", "") if resp.status_code >= 400 else ""


@pytest.mark.parametrize("sharding", ["off", "key"])
async def test_fail_open_still_refuses_tokens_revoked_before_the_outage(
    tmp_path: Path, dedicated: RedisExecutor, backend_process: str, sharding: str
) -> None:
    """Redis frozen (SIGSTOP: connections open, no answer) under fail-open policies: the
    local limiter admits, but a token revoked for reuse before the freeze stays refused
    on the replica that caught the reuse and on the one the store told it was revoked
    (with each key's state under its own tag too)."""
    with replicas(
        tmp_path,
        2,
        store_url=f"redis://127.0.0.1:{dedicated.port}/0",
        upstream=backend_process,
        policies=REVOKE_ON_REUSE,
        store={"timeout_ms": 50, "sharding": sharding},
    ) as group:
        key = group.create_key()
        stolen, other = group.token(key), group.token(key)
        async with httpx.AsyncClient(timeout=10) as client:
            first, second = group.urls
            assert await send_as(client, first, stolen, OWNER) == (200, "")
            assert await send_as(client, first, stolen, THIEF) == (403, "token_reuse_suspected")
            assert await send_as(client, second, stolen, OWNER) == (403, "token_revoked")
            assert await send_as(client, second, other, OWNER) == (200, "")

            with frozen(dedicated):
                for url in group.urls:
                    for who in (THIEF, OWNER):
                        assert await send_as(client, url, stolen, who) == (403, "token_revoked")
                # the replicas do fail open meanwhile: a token in good standing passes
                assert await send_as(client, second, other, OWNER) == (200, "")
            assert "store_fail_open" in group.log_text()
