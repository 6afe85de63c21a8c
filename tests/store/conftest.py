from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from gateway.store.base import StateStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore


@pytest.fixture
async def store(store_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    """The same tests run against the memory store and a real Redis."""
    if store_kind == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_url")
    redis_store = RedisStore(redis.asyncio.Redis.from_url(url), prefix="test")
    yield redis_store
    await redis_store.close()
