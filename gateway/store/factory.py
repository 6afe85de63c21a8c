"""Building the configured state store."""

from __future__ import annotations

from gateway.config import StoreSettings
from gateway.redis_connect import connect
from gateway.store.base import StateStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore


def open_store(settings: StoreSettings) -> StateStore:
    if settings.type == "memory":
        return MemoryStore()
    client = connect(
        settings.url,
        socket_timeout=max(settings.timeout_ms / 1000, 0.5),
        max_connections=settings.max_connections,
    )
    return RedisStore(client, prefix=settings.prefix)
