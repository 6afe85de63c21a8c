"""What a store failure was: one bounded word per failure, and the timing of store calls.

:func:`error_kind` names a failure (a timeout, a lost connection, an open circuit, a full
or read-only Redis) for the ``store_error`` log line and the ``error`` label of
``gateway_store_errors_total``; :class:`StoreCall` times one store call and counts its
failure by that word. The words are :data:`~gateway.observability.metrics.StoreErrorKind`.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store.base import CircuitOpen, StoreUnavailable

if TYPE_CHECKING:
    from gateway.observability.metrics import Metrics, StoreErrorKind


def error_kind(exc: BaseException) -> StoreErrorKind:
    """A bounded word for a store failure (the guarded store's cause when it has one):
    ``oom`` is a Redis past its ``maxmemory`` refusing writes (``noeviction``),
    ``readonly`` a replica refusing them (the gateway still talks to a demoted primary)."""
    if isinstance(exc, StoreUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, CircuitOpen):
        return "circuit_open"
    if isinstance(exc, TimeoutError | RedisTimeoutError):
        return "timeout"
    if isinstance(exc, OutOfMemoryError):
        return "oom"
    if isinstance(exc, ReadOnlyError):
        return "readonly"
    if isinstance(exc, RedisConnectionError | StoreUnavailable | OSError):
        return "connection"
    return "other"


class StoreCall:
    """``with StoreCall(metrics, "admit"): ...`` times one store call and counts its
    failure by kind (re-raised unchanged). Wrap it *outside* any ``asyncio.timeout`` so a
    timeout is seen as ``TimeoutError``."""

    __slots__ = ("_metrics", "_operation", "_started")

    def __init__(self, metrics: Metrics, operation: str) -> None:
        self._metrics = metrics
        self._operation = operation
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._metrics.store_call_ended(
            self._operation,
            time.perf_counter() - self._started,
            error_kind(exc) if isinstance(exc, Exception) else None,
        )
