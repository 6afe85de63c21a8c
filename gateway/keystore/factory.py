"""Building the configured key store."""

from __future__ import annotations

from gateway.config import Config
from gateway.core.miss_budget import MissBudget
from gateway.keystore.base import KeyStore
from gateway.keystore.file import FileKeyStore
from gateway.keystore.redis import RedisKeyStore
from gateway.redis_connect import connect


def open_keystore(config: Config) -> KeyStore:
    settings = config.keys
    misses = MissBudget(settings.miss_lookups_per_second)
    if settings.type == "file":
        return FileKeyStore(settings.path, poll_seconds=settings.sync_seconds, misses=misses)
    client = connect(config.key_store_redis_url, socket_timeout=2.0, max_connections=8)
    return RedisKeyStore(
        client, prefix=settings.prefix, sync_seconds=settings.sync_seconds, misses=misses
    )
