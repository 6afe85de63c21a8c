"""A Redis that answers with an error is named for what it is: out of memory (``maxmemory``
reached under ``noeviction``) or a read-only replica (a failover that left the gateway on
the old primary), in the error metric and the log, on either client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog
from pytest_redis.executor import RedisExecutor
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from structlog.testing import capture_logs

from gateway.config import StoreSettings
from gateway.core.breaker import CircuitBreaker
from gateway.core.gcra import LimitSpec
from gateway.redis_connect import connect
from gateway.store.base import AdmitRequest, PenaltyRule, StoreUnavailable
from gateway.store.errors import error_kind
from gateway.store.factory import open_store
from gateway.store.guarded import GuardedStore
from gateway.store.redis import RedisStore
from tests.support.harness import SEND_URL, make_config, start_gateway, stop_gateway
from tests.support.redis_servers import dedicated_redis

pytestmark = pytest.mark.slow  # fault injection: Redis out of memory, read-only

REQUEST = AdmitRequest(limits=(LimitSpec("errors", interval_us=1_000, burst=1_000),))
RULE = PenaltyRule(window_ms=60_000, threshold=20, cooldown_ms=60_000)


def _client(executor: RedisExecutor) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=executor.port)


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[str]:
    """A real Redis past its ``maxmemory`` under ``noeviction``: it refuses every write."""
    executor = dedicated_redis(tmp_path)
    with _client(executor) as client:
        client.set("ballast", b"x" * 2_000_000)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1mb")
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("probe", "1")
    yield f"redis://127.0.0.1:{executor.port}/0"
    executor.stop()


@pytest.fixture
def replica_redis(tmp_path: Path) -> Iterator[str]:
    """A real read-only replica (``REPLICAOF`` a real primary)."""
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary = dedicated_redis(tmp_path / "primary")
    replica = dedicated_redis(tmp_path / "replica")
    with _client(replica) as client:
        client.replicaof("127.0.0.1", primary.port)
        with pytest.raises(redis.exceptions.ReadOnlyError):
            client.set("probe", "1")
    yield f"redis://127.0.0.1:{replica.port}/0"
    replica.stop()
    primary.stop()


def guarded(url: str, client: str) -> GuardedStore:
    """As deployed (``pipe``: the per-request call on the pipelined connection) or on
    redis-py alone (the path of Cluster, Sentinel and TLS URLs, and of every call but
    ``admit``)."""
    if client == "pipe":
        store = open_store(StoreSettings(type="redis", url=url, prefix="test", timeout_ms=2000))
        assert isinstance(store, GuardedStore)
        return store
    redis_py = connect(url, socket_timeout=2, max_connections=4, retry=Retry(NoBackoff(), 0))
    return GuardedStore(
        RedisStore(redis_py, prefix="test"), timeout=2.0, breaker=CircuitBreaker(100, 1.0)
    )


async def failure_kind(call: Any) -> str:
    with pytest.raises(StoreUnavailable) as caught:
        await call
    return error_kind(caught.value)


@pytest.mark.parametrize("client", ["pipe", "redis-py"])
async def test_out_of_memory_is_its_own_error_kind(full_redis: str, client: str) -> None:
    store = guarded(full_redis, client)
    try:
        assert await failure_kind(store.admit(REQUEST)) == "oom"
        assert await failure_kind(store.record_failure("203.0.113.7", RULE)) == "oom"
        assert await failure_kind(store.reserve_attempt("203.0.113.7", RULE)) == "oom"
    finally:
        await store.close()


@pytest.mark.parametrize("client", ["pipe", "redis-py"])
async def test_a_read_only_replica_is_its_own_error_kind(replica_redis: str, client: str) -> None:
    store = guarded(replica_redis, client)
    try:
        assert await failure_kind(store.admit(REQUEST)) == "readonly"
        assert await failure_kind(store.record_failure("203.0.113.7", RULE)) == "readonly"
    finally:
        await store.close()


@pytest.mark.parametrize("fixture", ["full_redis", "replica_redis"])
async def test_the_gateway_counts_and_logs_the_kind(
    tmp_path: Path, backend_url: str, request: pytest.FixtureRequest, fixture: str
) -> None:
    url = request.getfixturevalue(fixture)
    kind = {"full_redis": "oom", "replica_redis": "readonly"}[fixture]
    (tmp_path / "gw").mkdir()
    config = make_config(tmp_path / "gw", backend_url, redis_url=url)
    gw = await start_gateway(config)
    try:
        await gw.create_key()
        # a token as the token route would issue it (that route needs the store too)
        token = gw.services.codec.issue(
            key_id=next(iter(gw.keys)), model_id="demo", now=gw.services.admissions.now()
        ).token
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
            async with gw.http.post(
                gw.url + SEND_URL, json={"client_token": token, "message": "hi"}
            ) as resp:
                body = await resp.json(content_type=None)
        assert (resp.status, body["code"]) == (503, "store_unavailable")
        assert gw.sample("gateway_store_errors_total", operation="admit", error=kind) == 1
        assert gw.sample("gateway_store_errors_total", operation="admit", error="other") == 0
        logged = [e for e in events if e["event"] == "store_error"]
        assert [(e["error"], e["operation"]) for e in logged] == [(kind, "admit")]
    finally:
        await stop_gateway(gw)
