from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from gateway.redis_connect import connect
from gateway.store.base import StateStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """The store tests also run on a three-master Redis Cluster."""
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
    else:
        client = redis.asyncio.Redis.from_url(request.getfixturevalue("redis_url"))
    redis_store = RedisStore(client, prefix="test")
    yield redis_store
    await redis_store.close()
