"""Putting a deadline and a circuit breaker around a remote store.

Every call gets the configured budget (tens of milliseconds); a call that fails or runs
late counts against the breaker, and while the breaker is open calls fail at once, so a
dead Redis never makes requests wait. Failures surface as :class:`StoreUnavailable`;
the caller decides between failing closed and falling back to local limits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis.exceptions import RedisClusterException, RedisError

from gateway.core.breaker import BreakerState, CircuitBreaker
from gateway.core.gcra import LimitSpec, LimitState
from gateway.store.base import Admission, AdmitRequest, PenaltyRule, StateStore, StoreUnavailable

log = structlog.get_logger("gateway.store")
T = TypeVar("T")
#: what a store failure looks like: redis-py's cluster client raises the plain
#: RedisClusterException (not a RedisError) when no node answers
FAILURES = (TimeoutError, RedisError, RedisClusterException, OSError, ConnectionError)


class GuardedStore:
    def __init__(
        self,
        inner: StateStore,
        *,
        timeout: float,
        breaker: CircuitBreaker,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.inner = inner
        self.timeout = timeout
        self.breaker = breaker
        self._clock = clock
        self._on_state_change = on_state_change

    def _changed(self) -> None:
        state = self.breaker.state
        if state is BreakerState.OPEN:
            log.error("store_circuit_open", retry_in_seconds=self.breaker.open_seconds)
        else:
            log.warning("store_circuit_closed")
        if self._on_state_change is not None:
            self._on_state_change(state)

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        if not self.breaker.allow(self._clock()):
            raise StoreUnavailable("circuit open")
        try:
            async with asyncio.timeout(self.timeout):
                result = await make()
        except FAILURES as exc:
            if self.breaker.failure(self._clock()):
                self._changed()
            raise StoreUnavailable(type(exc).__name__) from exc
        except BaseException:
            # cancelled, or a bug: whatever it was, a half-open probe is over
            self.breaker.probing = False
            raise
        if self.breaker.success():
            self._changed()
        return result

    async def admit(self, request: AdmitRequest) -> Admission:
        return await self._call(lambda: self.inner.admit(request))

    async def revoke_token(self, jti: str, ttl_ms: int) -> None:
        await self._call(lambda: self.inner.revoke_token(jti, ttl_ms))

    async def peek(self, specs: tuple[LimitSpec, ...]) -> tuple[LimitState, ...]:
        return await self._call(lambda: self.inner.peek(specs))

    async def record_failure(self, subject: str, rule: PenaltyRule) -> int:
        return await self._call(lambda: self.inner.record_failure(subject, rule))

    async def ping(self) -> None:
        await self._call(self.inner.ping)

    async def start(self) -> None:
        """Warm the connection; a store that is down now is reported, not fatal."""
        try:
            async with asyncio.timeout(max(self.timeout, 5.0)):
                await self.inner.start()
        except FAILURES as exc:
            log.error("store_unreachable_at_start", error=type(exc).__name__)

    async def close(self) -> None:
        await self.inner.close()
