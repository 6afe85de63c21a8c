"""The Redis key store: changes announced on a channel, and key ids missing from a replica's
snapshot read through (bounded), so a key reported as created is served everywhere."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from pytest_redis.executor import RedisExecutor

from gateway.config import Config
from gateway.core import agent_keys
from gateway.core.key_hash import make_hasher
from gateway.core.miss_budget import MissBudget
from gateway.keystore.admin import create_key
from gateway.keystore.base import KeyRecord, utcnow
from gateway.keystore.factory import open_keystore
from gateway.keystore.redis import RedisKeyStore
from gateway.redis_connect import connect
from tests.support.harness import FAST_ARGON2, TOKEN_URL, Gateway, make_config
from tests.support.redis_servers import dedicated_redis

#: replicas that would look for changes only this rarely: whatever arrives sooner came
#: through the change channel or a read-through
NO_POLL = 3600.0


def keys_config(tmp_path: Path, url: str, **keys: Any) -> Config:
    section = {"type": "redis", "redis_url": url, "argon2": FAST_ARGON2, **keys}
    return make_config(tmp_path, "http://127.0.0.1:1", keys=section)


def replica_store(url: str, misses: MissBudget | None = None) -> RedisKeyStore:
    client = connect(url, socket_timeout=2.0, max_connections=8)
    return RedisKeyStore(client, prefix="gwkeys", sync_seconds=NO_POLL, misses=misses)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not true in time"
        await asyncio.sleep(0.01)


@pytest.fixture(params=["redis", "cluster"])
def shared_url(request: pytest.FixtureRequest) -> str:
    """A standalone Redis (flushed) or the session's Redis Cluster."""
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url"))


@pytest.fixture
async def running_replica(shared_url: str) -> AsyncIterator[RedisKeyStore]:
    """A replica's key store, loaded and listening, whose poll never fires in a test."""
    store = replica_store(shared_url)
    await store.refresh()
    stop = asyncio.Event()
    task = asyncio.create_task(store.run(stop))
    await asyncio.wait_for(store.subscribed.wait(), 10)
    yield store
    stop.set()
    await task
    await store.close()


async def gets_served(url: str) -> int:
    """How many GET commands this Redis has served so far."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_get", {}).get("calls", 0))
    finally:
        await client.aclose()


async def test_changes_reach_a_running_replica_through_the_channel(
    tmp_path: Path, shared_url: str, running_replica: RedisKeyStore
) -> None:
    config = keys_config(tmp_path, shared_url)
    _, record = await create_key(config, ["demo"])
    await eventually(lambda: running_replica.lookup(record.key_id) is not None)

    writer = open_keystore(config)
    try:
        await writer.revoke(record.key_id, utcnow())
    finally:
        await writer.close()

    def revoked() -> bool:
        found = running_replica.lookup(record.key_id)
        return found is not None and not found.active

    await eventually(revoked)


async def test_a_missing_id_is_read_through_once_then_bounded(
    tmp_path: Path, redis_url: str
) -> None:
    replica = replica_store(redis_url, MissBudget(0.001, burst=3))  # not listening
    try:
        await replica.refresh()
        _, record = await create_key(keys_config(tmp_path, redis_url), ["demo"])
        assert replica.lookup(record.key_id) is None  # the snapshot lags

        found = await replica.find(record.key_id)
        assert found.outcome == "found" and found.record == record
        assert replica.lookup(record.key_id) == record  # it joined the snapshot
        assert (await replica.find(record.key_id)).outcome == "snapshot"

        ghost = agent_keys.generate().key_id  # well formed, never created
        reads = await gets_served(redis_url)
        assert (await replica.find(ghost)) == (None, "not_found")
        for _ in range(20):
            assert (await replica.find(ghost)) == (None, "known_missing")
        assert await gets_served(redis_url) == reads + 1

        others = [agent_keys.generate().key_id for _ in range(5)]
        outcomes = [(await replica.find(key_id)).outcome for key_id in others]
        assert outcomes == ["not_found"] * 1 + ["over_budget"] * 4  # a burst of 3 in all
        assert await gets_served(redis_url) == reads + 2
    finally:
        await replica.close()


async def test_concurrent_misses_of_one_id_share_one_read(tmp_path: Path, redis_url: str) -> None:
    replica = replica_store(redis_url, MissBudget(0.001, burst=1))
    try:
        await replica.refresh()
        _, record = await create_key(keys_config(tmp_path, redis_url), ["demo"])
        found = await asyncio.gather(*(replica.find(record.key_id) for _ in range(30)))
        assert {f.record for f in found} == {record}
        assert {f.outcome for f in found} == {"found"}
    finally:
        await replica.close()


async def test_a_revoked_record_is_not_revived_by_an_older_read(
    tmp_path: Path, shared_url: str, running_replica: RedisKeyStore
) -> None:
    config = keys_config(tmp_path, shared_url)
    _, record = await create_key(config, ["demo"])
    await eventually(lambda: running_replica.lookup(record.key_id) is not None)
    revoked = record.model_copy(update={"revoked_at": utcnow()})
    running_replica._put(record.key_id, revoked)
    running_replica._put(record.key_id, record)  # a read that started before the revocation
    assert running_replica.lookup(record.key_id) == revoked


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[RedisExecutor]:
    datadir = tmp_path / "redis"
    datadir.mkdir()
    executor = dedicated_redis(datadir)
    yield executor
    if executor.running():
        executor.stop()


async def test_the_replica_subscribes_again_after_a_redis_restart(
    tmp_path: Path, restartable: RedisExecutor
) -> None:
    url = f"redis://{restartable.host}:{restartable.port}/0"
    replica = replica_store(url)
    await replica.refresh()
    stop = asyncio.Event()
    task = asyncio.create_task(replica.run(stop))
    try:
        await asyncio.wait_for(replica.subscribed.wait(), 10)
        restartable.stop()
        await eventually(lambda: not replica.subscribed.is_set(), timeout=20)
        restartable.start()  # the same port, empty
        await asyncio.wait_for(replica.subscribed.wait(), 30)
        _, record = await create_key(keys_config(tmp_path, url), ["demo"])
        await eventually(lambda: replica.lookup(record.key_id) is not None)
    finally:
        stop.set()
        await task
        await replica.close()


def unstored_key() -> tuple[str, KeyRecord]:
    key = agent_keys.generate()
    hasher = make_hasher(FAST_ARGON2["time_cost"], FAST_ARGON2["memory_kib"], 1)
    record = KeyRecord(
        key_id=key.key_id, hash=hasher.hash(key.key), models=("demo",), created_at=utcnow()
    )
    return key.key, record


async def raw_create(url: str, record: KeyRecord) -> None:
    """A key stored the way the key store stores it, with no change announced (a writer
    whose notification was lost)."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.set(f"{{gwkeys}}:key:{record.key_id}", record.model_dump_json())
        await client.sadd("{gwkeys}:ids", record.key_id)
        await client.incr("{gwkeys}:version")
    finally:
        await client.aclose()


async def get_token(gateway: Gateway, key: str) -> tuple[int, dict[str, Any]]:
    async with gateway.http.get(
        gateway.url + TOKEN_URL.format(model="demo"),
        headers=gateway.headers({"Authorization": f"Bearer {key}"}),
    ) as resp:
        return resp.status, await resp.json()


async def test_a_key_created_on_one_replica_is_served_at_once_by_another(
    gateway_factory: Any, redis_url: str
) -> None:
    keys = {"type": "redis", "redis_url": redis_url, "sync_seconds": 5}
    one = await gateway_factory(store="redis", keys=keys)
    two = await gateway_factory(store="redis", keys=keys)
    key, record = await create_key(one.config, ["demo"])
    status, body = await get_token(two, key)  # no wait of any kind
    assert status == 200, body
    status, body = await get_token(one, key)
    assert status == 200, body
    async with two.send(body["token"], "issued by one, sent to two") as resp:
        assert resp.status == 200, await resp.text()

    # keys whose announcement was lost are read through: on the token route, and on the
    # message routes when a token names a key the replica does not know yet
    lost, lost_record = unstored_key()
    await raw_create(redis_url, lost_record)
    status, body = await get_token(two, lost)
    assert status == 200, body
    lost, lost_record = unstored_key()
    await raw_create(redis_url, lost_record)
    status, body = await get_token(one, lost)
    assert status == 200, body
    async with two.send(body["token"], "a key two has not heard of") as resp:
        assert resp.status == 200, await resp.text()

    for gateway in (one, two):  # none of this looked like a guessed key
        assert gateway.sample("gateway_suspicious_events_total", reason="invalid_key") == 0
        assert gateway.sample("gateway_key_verifications_total", result="unknown") == 0
    assert two.sample("gateway_key_lookups_total", outcome="found") >= 1  # the lost ones

    # a revocation still reaches every replica within seconds
    await one.services.keys.store.revoke(record.key_id, utcnow())
    deadline = time.monotonic() + 5
    while (await get_token(two, key))[0] != 404:
        assert time.monotonic() < deadline, "the revocation did not arrive"
        await asyncio.sleep(0.05)


async def test_a_random_well_formed_key_still_counts_as_invalid(
    gateway_factory: Any, redis_url: str
) -> None:
    keys = {"type": "redis", "redis_url": redis_url}
    gateway = await gateway_factory(store="redis", keys=keys)
    status, body = await get_token(gateway, agent_keys.generate().key)
    assert status == 404 and body["code"] == "key_not_found"
    assert gateway.sample("gateway_suspicious_events_total", reason="invalid_key") == 1
    assert gateway.sample("gateway_key_lookups_total", outcome="not_found") == 1


async def test_the_file_store_reads_its_file_again_on_a_miss(tmp_path: Path) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:1", keys={"argon2": FAST_ARGON2})
    replica = open_keystore(config)  # loaded, not watching
    await replica.refresh()
    _, record = await create_key(config, ["demo"])
    assert replica.lookup(record.key_id) is None
    assert await replica.find(record.key_id) == (record, "found")
    ghost = agent_keys.generate().key_id
    assert (await replica.find(ghost)).outcome == "not_found"
    assert (await replica.find(ghost)).outcome == "known_missing"
