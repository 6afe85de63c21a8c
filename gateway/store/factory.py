"""Building the configured state store."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.config import StoreSettings
from gateway.core.breaker import BreakerState, CircuitBreaker
from gateway.core.sharding import Sharding
from gateway.redis_connect import connect
from gateway.store.base import StateStore
from gateway.store.guarded import GuardedStore
from gateway.store.memory import MemoryStore
from gateway.store.pipeline import SCHEMES, RedisPipe
from gateway.store.redis import RedisStore


def sharding_of(settings: StoreSettings) -> Sharding:
    """``store.sharding``: how new conversations lay out their state."""
    return Sharding(settings.prefix, dict(settings.hot_keys), settings.sharding == "key")


def open_store(
    settings: StoreSettings,
    *,
    on_deadline_extended: Callable[[], None] | None = None,
    on_breaker_change: Callable[[BreakerState], None] | None = None,
) -> StateStore:
    """The memory store, or a Redis store behind a deadline and a circuit breaker
    (``on_deadline_extended``, ``on_breaker_change``: see :class:`GuardedStore`)."""
    if settings.type == "memory":
        return MemoryStore()
    socket_timeout = max(settings.timeout_ms / 1000, 0.5)
    client = connect(
        settings.url,
        socket_timeout=socket_timeout,
        max_connections=settings.max_connections,
        # the deadline and the breaker decide; a retry would only make requests wait
        retry=Retry(NoBackoff(), 0),
    )
    pipe = None
    if urlsplit(settings.url).scheme in SCHEMES:  # standalone: the per-request call pipelined
        pipe = RedisPipe.from_url(
            settings.url, connect_timeout=socket_timeout, stale_after=socket_timeout
        )
    return GuardedStore(
        RedisStore(client, prefix=settings.prefix, pipe=pipe, max_calls=settings.max_connections),
        timeout=settings.timeout_ms / 1000,
        breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_open_seconds),
        on_deadline_extended=on_deadline_extended,
        on_state_change=on_breaker_change,
    )
