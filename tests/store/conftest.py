from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from gateway.redis_connect import connect
from gateway.store.base import StateStore
from gateway.store.memory import MemoryStore
from gateway.store.pipeline import RedisPipe
from gateway.store.redis import RedisStore


@pytest.fixture(params=["memory", "redis", "redis-pool", "cluster"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """The store tests run on memory, on Redis as deployed (the per-request call on one
    pipelined connection), on Redis through redis-py alone, and on a three-master Cluster."""
    return str(request.param)


@pytest.fixture
async def store(store_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    """The same tests run against the memory store, a real Redis and a real Cluster."""
    if store_kind == "memory":
        yield MemoryStore()
        return
    if store_kind == "cluster":
        client = connect(
            request.getfixturevalue("cluster_url"), socket_timeout=2, max_connections=8
        )
        redis_store = RedisStore(client, prefix="test", max_calls=8)
    else:
        url = request.getfixturevalue("redis_url")
        client = redis.asyncio.Redis.from_url(url)
        pipe = RedisPipe.from_url(url) if store_kind == "redis" else None
        redis_store = RedisStore(client, prefix="test", pipe=pipe)
    # as the gateway does before serving: the cluster client learns the layout once (its
    # lazy initialisation is not safe under concurrent first commands), scripts are loaded
    await redis_store.start()
    yield redis_store
    await redis_store.close()
