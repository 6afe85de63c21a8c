"""Putting a deadline and a circuit breaker around a remote store.

Every call gets the configured budget (tens of milliseconds); a call that fails or runs
late counts against the breaker, and while the breaker is open calls fail at once
(:class:`~gateway.store.base.CircuitOpen`), so a dead Redis never makes requests wait.
Failures surface as :class:`~gateway.store.base.StoreUnavailable`; the caller decides
between failing closed and falling back to local limits. Each failure is named by
:func:`~gateway.store.errors.error_kind` (a timeout, a lost connection, a full or
read-only Redis) in the ``store_error`` log line, at most once a second per kind.

The budget counts time the event loop was free to serve the call, not time it spent
elsewhere (a flood of requests, a long garbage collection): then the reply may be waiting
for the loop, or the command may not even have left yet, and the store is not to blame.
See :class:`_Deadline`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from gateway.core.breaker import BreakerState, CircuitBreaker
from gateway.core.gcra import LimitSpec, LimitState
from gateway.redis_connect import REDIS_FAILURES
from gateway.store.base import (
    Admission,
    AdmitRequest,
    AttemptSlot,
    CircuitOpen,
    PenaltyRule,
    StateStore,
    StoreUnavailable,
)
from gateway.store.errors import error_kind

log = structlog.get_logger("gateway.store")
T = TypeVar("T")

#: a deadline timer that fires later than this share of the deadline (and at least
#: LATE_MIN_SECONDS) found the event loop busy: it is set again as much later
LATE_SHARE = 0.1
LATE_MIN_SECONDS = 0.002
#: a busy loop extends a call by at most this many deadlines, and never by more than
#: MAX_EXTENSION_SECONDS: a store that does not answer still fails under a saturated loop
MAX_EXTENSION_DEADLINES = 3
MAX_EXTENSION_SECONDS = 1.0
#: ... but a call always gets this many late turns of the loop past its deadline: a turn
#: longer than the whole extension (a saturated replica) would otherwise end the call
#: before the loop ever read the reply waiting in the socket, and blame the store
MIN_LATE_TURNS = 2
#: one ``store_error`` line per kind of failure at most this often; the others are counted
#: in the next line's ``suppressed``
LOG_EVERY_SECONDS = 1.0


class _Deadline:
    """The deadline of one store call: like ``asyncio.timeout``, but fair to the store.

    When the time is up the calling task is cancelled, and :meth:`stop` tells the caller
    whether that cancellation was the deadline's own (no one else cancelled the task
    meanwhile), which the caller turns into ``TimeoutError``; the task's cancellation
    count is restored, as ``asyncio.timeout`` does. Two differences:

    * A timer that fires late (by more than a tenth of the deadline) proves only that
      the loop was busy: the command may not have left yet (the pipe writes at the end
      of a loop turn), or the reply may be waiting in the socket or be read but not yet
      handed to its task. The timer is then set again a tenth of the deadline later,
      which gives the loop a turn to write, read and deliver, and again while the loop
      stays late, up to a bounded extension (at most three deadlines, at most a second),
      so a store that does not answer still fails under a saturated loop. Past that
      extension the call still gets ``MIN_LATE_TURNS`` late turns of the loop: a replica
      so saturated that one turn outlasts the extension has not read the reply yet, and
      would otherwise count a healthy store's answer as its failure (three of them open
      the breaker: every request 503 ``store_unavailable`` for a second).
    * The task is not cancelled by the timer itself but by a callback queued behind the
      callbacks already waiting: a reply read in the same loop turn has queued its task's
      wake-up there, and cancelling the task before that wake-up runs would throw away
      an answer that arrived in time.

    One timer and this small object per call: this runs on every request.
    """

    __slots__ = (
        "_cancelling",
        "_due",
        "_expired",
        "_handle",
        "_late_turns",
        "_limit",
        "_loop",
        "_store",
        "_task",
    )

    def __init__(self, store: GuardedStore) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a store call must run inside a task")
        self._loop = loop = task.get_loop()
        self._store = store
        self._task = task
        #: cancellations already requested when the call began (see ``asyncio.timeout``)
        self._cancelling = task.cancelling()
        self._due = due = loop.time() + store.timeout
        self._limit: float | None = None
        self._late_turns = 0
        self._handle: asyncio.Handle = loop.call_at(due, self._fire)
        #: the deadline cancelled the task
        self._expired = False

    def _fire(self) -> None:
        loop = self._loop
        now = loop.time()
        timeout = self._store.timeout
        late = max(timeout * LATE_SHARE, LATE_MIN_SECONDS)
        if now - self._due > late:
            limit = self._limit
            first = limit is None
            if limit is None:  # the deadline proper: the extension is bounded from here
                extension = min(timeout * MAX_EXTENSION_DEADLINES, MAX_EXTENSION_SECONDS)
                self._limit = limit = self._due + extension
            if now < limit or self._late_turns < MIN_LATE_TURNS:
                self._late_turns += 1
                self._due = min(now + late, limit) if now < limit else now + late
                self._handle = loop.call_at(self._due, self._fire)
                if first and (counted := self._store.on_deadline_extended) is not None:
                    counted()
                return
        # not late, or late for too long: cancel, once the queued callbacks have run
        self._handle = loop.call_soon(self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._task.cancel()

    def stop(self) -> bool:
        """The call is over: disarm. True when the deadline cancelled the task and no
        one else asked for its cancellation meanwhile: the call timed out."""
        self._handle.cancel()
        return self._expired and self._task.uncancel() <= self._cancelling


class GuardedStore:
    def __init__(
        self,
        inner: StateStore,
        *,
        timeout: float,
        breaker: CircuitBreaker,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: Callable[[BreakerState], None] | None = None,
        on_deadline_extended: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self.timeout = timeout
        self.breaker = breaker
        self._clock = clock
        self._on_state_change = on_state_change
        #: called once per call whose deadline was extended because the loop ran late
        self.on_deadline_extended = on_deadline_extended
        #: error kind -> (when its last store_error line was written, failures since)
        self._logged: dict[str, tuple[float, int]] = {}

    def _changed(self, kind: str | None = None) -> None:
        state = self.breaker.state
        if state is BreakerState.OPEN:
            log.error("store_circuit_open", error=kind, retry_in_seconds=self.breaker.open_seconds)
        else:
            log.warning("store_circuit_closed")
        if self._on_state_change is not None:
            self._on_state_change(state)

    def _failed(self, operation: str, exc: BaseException) -> StoreUnavailable:
        now = self._clock()
        kind = error_kind(exc)
        self._log_failure(operation, kind, exc, now)
        if self.breaker.failure(now):
            self._changed(kind)
        return StoreUnavailable(type(exc).__name__)

    def _log_failure(self, operation: str, kind: str, exc: BaseException, now: float) -> None:
        last, suppressed = self._logged.get(kind, (None, 0))
        if last is not None and now - last < LOG_EVERY_SECONDS:
            self._logged[kind] = (last, suppressed + 1)
            return
        self._logged[kind] = (now, 0)
        log.error(
            "store_error",
            operation=operation,
            error=kind,
            detail=str(exc)[:200] or type(exc).__name__,
            suppressed=suppressed,
        )

    async def _call(self, operation: str, make: Callable[[], Awaitable[T]]) -> T:
        if not self.breaker.allow(self._clock()):
            raise CircuitOpen
        deadline = _Deadline(self)
        try:
            result = await make()
        except asyncio.CancelledError as exc:
            if deadline.stop():  # the deadline's own cancellation, and no one else's
                timeout = TimeoutError()
                timeout.__cause__ = exc
                raise self._failed(operation, timeout) from timeout
            # cancelled from outside: a half-open probe is over
            self.breaker.probing = False
            raise
        except REDIS_FAILURES as exc:
            deadline.stop()
            raise self._failed(operation, exc) from exc
        except BaseException:
            deadline.stop()
            # a bug: whatever it was, a half-open probe is over
            self.breaker.probing = False
            raise
        deadline.stop()
        if self.breaker.success():
            self._changed()
        return result

    async def admit(self, request: AdmitRequest) -> Admission:
        return await self._call("admit", lambda: self.inner.admit(request))

    async def peek(
        self, specs: tuple[LimitSpec, ...], shard: str | None = None
    ) -> tuple[LimitState, ...]:
        return await self._call("peek", lambda: self.inner.peek(specs, shard))

    async def record_failure(
        self, subject: str, rule: PenaltyRule, *, reserved: bool = False
    ) -> int:
        return await self._call(
            "record_failure",
            lambda: self.inner.record_failure(subject, rule, reserved=reserved),
        )

    async def reserve_attempt(self, subject: str, rule: PenaltyRule) -> AttemptSlot:
        return await self._call(
            "reserve_attempt", lambda: self.inner.reserve_attempt(subject, rule)
        )

    async def release_attempt(self, subject: str) -> None:
        await self._call("release_attempt", lambda: self.inner.release_attempt(subject))

    async def ping(self) -> None:
        await self._call("ping", self.inner.ping)

    async def start(self) -> None:
        """Warm the connection; a store that is down now is reported, not fatal."""
        try:
            async with asyncio.timeout(max(self.timeout, 5.0)):
                await self.inner.start()
        except REDIS_FAILURES as exc:
            log.error("store_unreachable_at_start", error=type(exc).__name__)

    async def close(self) -> None:
        await self.inner.close()
