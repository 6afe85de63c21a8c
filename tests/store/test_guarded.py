"""The guarded store's deadline and breaker against real Redis servers.

The deadline counts time the event loop was free to serve the call: a loop blocked by
other work (a flood, a long garbage collection) never makes a healthy Redis look dead,
while a Redis that does not answer still fails within a bounded time and opens the
breaker. Every scenario runs on the standard event loop and on uvloop, which the gateway
serves on.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import uvloop
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeout

from gateway.config import StoreSettings
from gateway.core.breaker import BreakerState, CircuitBreaker
from gateway.core.gcra import LimitSpec
from gateway.observability.metrics import Metrics
from gateway.redis_connect import connect
from gateway.store.base import Admission, AdmitRequest, CircuitOpen, StoreUnavailable
from gateway.store.errors import error_kind
from gateway.store.factory import open_store
from gateway.store.guarded import GuardedStore
from gateway.store.redis import RedisStore
from tests.support.redis_servers import dedicated_redis

pytestmark = pytest.mark.slow  # fault injection: Redis servers stalled and stopped

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
#: the per-request call: one limit with plenty of room
REQUEST = AdmitRequest(limits=(LimitSpec("guarded", interval_us=1_000, burst=1_000_000),))
DEADLINE = 0.05  # the default store.timeout_ms


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run[Any]:
    """Runs a scenario to the end on a fresh event loop of each kind."""
    factory = LOOPS[request.param]

    def run(scenario: Coroutine[Any, Any, T]) -> T:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(scenario)

    return run


@pytest.fixture(scope="module")
def stopped_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis that accepts connections (the kernel does) but never answers: its
    process is stopped, as a hung or overloaded server would be."""
    executor = dedicated_redis(tmp_path_factory.mktemp("stopped-redis"))
    assert executor.process is not None
    pid = executor.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield f"redis://127.0.0.1:{executor.port}/0"
    finally:
        os.kill(pid, signal.SIGCONT)
        executor.stop()


def guarded(
    url: str,
    client: str = "pipe",
    *,
    extended: list[None] | None = None,
    breaker: CircuitBreaker | None = None,
) -> GuardedStore:
    """The store as deployed (``pipe``: the factory's), or on redis-py alone (the path of
    Cluster, Sentinel and TLS URLs), with the default 50 ms deadline; each call whose
    deadline was extended appends to ``extended``."""
    settings = StoreSettings(type="redis", url=url, prefix="test")
    on_extended = (lambda: extended.append(None)) if extended is not None else None
    if client == "pipe":
        store = open_store(settings, on_deadline_extended=on_extended)
        assert isinstance(store, GuardedStore) and isinstance(store.inner, RedisStore)
        assert store.inner.pipe is not None and store.timeout == DEADLINE
        if breaker is not None:
            store.breaker = breaker
        return store
    redis_py = connect(url, socket_timeout=0.5, max_connections=8, retry=Retry(NoBackoff(), 0))
    return GuardedStore(
        RedisStore(redis_py, prefix="test"),
        timeout=DEADLINE,
        breaker=breaker or CircuitBreaker(),
        on_deadline_extended=on_extended,
    )


def sleep_until(when: float) -> None:
    """Block the event loop (as a long garbage collection does) until loop time ``when``."""
    time.sleep(max(0.0, when - asyncio.get_running_loop().time()))


@pytest.mark.parametrize("client", ["pipe", "redis-py"])
@pytest.mark.parametrize(
    "blocked",
    [
        "before_the_write",  # the command waits in the pipe's buffer while the loop is stuck
        "after_the_write",  # the reply waits in the socket while the loop is stuck
        "until_the_deadline",  # the loop frees up just past the deadline, the reply with it
        # one turn of a saturated loop outlasts the whole extension (3 deadlines): the
        # reply waits in the socket all that time
        "past_the_extension",
    ],
)
def test_a_busy_loop_does_not_blame_a_healthy_store(
    run: Run[None], redis_url: str, client: str, blocked: str
) -> None:
    extended: list[None] = []

    async def scenario() -> None:
        store = guarded(redis_url, client, extended=extended)
        loop = asyncio.get_running_loop()
        try:
            await store.start()
            await store.admit(REQUEST)  # connected, scripts loaded
            for _ in range(store.breaker.failure_threshold):  # enough to open the breaker
                started = loop.time()
                if blocked == "before_the_write":
                    loop.call_soon(time.sleep, 0.12)
                    admission = await store.admit(REQUEST)
                else:
                    call = asyncio.create_task(store.admit(REQUEST))
                    await asyncio.sleep(0)  # the call has written (or queued) its command
                    if blocked == "after_the_write":
                        loop.call_soon(time.sleep, 0.12)
                    elif blocked == "past_the_extension":
                        loop.call_soon(time.sleep, 4 * DEADLINE + 0.1)
                    else:  # late by less than the deadline's tolerance for a busy loop
                        loop.call_soon(sleep_until, started + DEADLINE + 0.001)
                    admission = await call
                assert isinstance(admission, Admission) and admission.limits[0].allowed
                assert loop.time() - started > DEADLINE  # it did outlast its deadline
            assert store.breaker.state is BreakerState.CLOSED
            assert store.breaker.failures == 0
        finally:
            await store.close()

    run(scenario())
    if blocked != "until_the_deadline":  # there the timer may or may not count as late
        assert len(extended) == 3


@pytest.mark.parametrize("client", ["pipe", "redis-py"])
@pytest.mark.parametrize("busy", [False, True], ids=["idle_loop", "busy_loop"])
def test_a_store_that_does_not_answer_still_fails_and_opens_the_breaker(
    run: Run[list[float]], stopped_redis: str, client: str, busy: bool
) -> None:
    extended: list[None] = []

    async def scenario() -> list[float]:
        store = guarded(stopped_redis, client, extended=extended)
        loop = asyncio.get_running_loop()
        blocker: asyncio.Handle | None = None

        def block() -> None:  # a saturated loop: every turn spends 30 ms elsewhere
            nonlocal blocker
            time.sleep(0.03)
            blocker = loop.call_soon(block)

        if busy:
            blocker = loop.call_soon(block)
        elapsed = []
        try:
            for _ in range(store.breaker.failure_threshold):
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match="TimeoutError") as failed:
                    await store.admit(REQUEST)
                elapsed.append(time.monotonic() - started)
                # the deadline's own TimeoutError, or redis-py's when its socket
                # timeout fires first on a loaded machine: both are a timeout
                assert isinstance(failed.value.__cause__, (TimeoutError, RedisTimeout))
                current = asyncio.current_task()
                assert current is not None and current.cancelling() == 0
            assert store.breaker.state is BreakerState.OPEN
            started = time.monotonic()
            with pytest.raises(CircuitOpen) as refused:
                await store.admit(REQUEST)
            assert error_kind(refused.value) == "circuit_open"
            assert time.monotonic() - started < 0.05
        finally:
            if blocker is not None:
                blocker.cancel()
            await store.close()
        return elapsed

    elapsed = run(scenario())
    assert all(DEADLINE * 0.9 < seconds < 2.0 for seconds in elapsed), elapsed
    if not busy:  # an idle loop is not late: the deadline is the deadline
        # (on a loaded machine the process itself may be scheduled late: an extension is
        # then allowed only for a call whose timer visibly fired late, LATE_SHARE past it)
        assert len(extended) <= sum(seconds > DEADLINE * 1.1 for seconds in elapsed), elapsed
        assert max(elapsed) < 0.5, elapsed


def test_outside_cancellation_propagates_and_ends_the_probe(
    run: Run[None], stopped_redis: str
) -> None:
    async def scenario() -> None:
        breaker = CircuitBreaker(state=BreakerState.OPEN, opened_at=time.monotonic() - 10)
        store = guarded(stopped_redis, breaker=breaker)
        probe_sent = asyncio.Event()

        async def caller() -> str:
            try:
                probe_sent.set()
                await store.admit(REQUEST)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                assert task is not None and task.cancelling() == 1  # the caller's, only
                task.uncancel()
            # past the call's deadline: nothing may cancel this task any more
            await asyncio.sleep(DEADLINE * 2)
            return "carried on"

        try:
            task = asyncio.create_task(caller())
            await probe_sent.wait()
            await asyncio.sleep(0.01)
            assert breaker.state is BreakerState.HALF_OPEN and breaker.probing
            task.cancel()
            assert await task == "carried on"
            # the probe is over without a verdict: the next call may probe again
            assert not breaker.probing and breaker.failures == 0
            assert breaker.state is BreakerState.HALF_OPEN

            plain = asyncio.create_task(store.admit(REQUEST))
            await asyncio.sleep(0.01)
            assert breaker.probing  # this one is the next probe
            plain.cancel()
            with pytest.raises(asyncio.CancelledError):
                await plain
            assert not breaker.probing
        finally:
            await store.close()

    run(scenario())


class Stalled:
    """A store whose ``admit`` waits on a future the test settles (to place an outside
    cancellation exactly while the deadline's own is under way)."""

    def __init__(self) -> None:
        self.reply: asyncio.Future[Admission] | None = None

    async def admit(self, request: AdmitRequest) -> Admission:
        assert self.reply is not None
        return await self.reply


def test_an_outside_cancellation_during_the_deadlines_own_wins(run: Run[None]) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        inner = Stalled()
        store = GuardedStore(inner, timeout=DEADLINE, breaker=CircuitBreaker())  # type: ignore[arg-type]
        inner.reply = reply = loop.create_future()
        task: asyncio.Task[Admission] | None = None
        # runs as soon as the deadline cancels the reply, before the task wakes up
        reply.add_done_callback(lambda _: task and task.cancel())
        task = asyncio.create_task(store.admit(REQUEST))
        with pytest.raises(asyncio.CancelledError):
            await task
        assert reply.cancelled()
        assert store.breaker.failures == 0  # the caller gave up; the store is not to blame

    run(scenario())


def test_the_breaker_state_is_exported(run: Run[None], stopped_redis: str, redis_url: str) -> None:
    """Open after the failures, closed again after a successful probe, in the gauge."""
    metrics = Metrics()

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("gateway_store_circuit_open")

    async def scenario() -> None:
        settings = StoreSettings(
            type="redis",
            url=stopped_redis,
            prefix="test",
            breaker_failures=2,
            breaker_open_seconds=0.05,
        )
        store = open_store(settings, on_breaker_change=metrics.store_circuit)
        assert isinstance(store, GuardedStore)
        stopped = store.inner
        back = open_store(settings.model_copy(update={"url": redis_url}))
        assert isinstance(back, GuardedStore)
        try:
            assert gauge() == 0
            for _ in range(2):
                with pytest.raises(StoreUnavailable):
                    await store.admit(REQUEST)
            assert store.breaker.state is BreakerState.OPEN
            assert gauge() == 1
            await asyncio.sleep(0.06)
            # Redis is back (another real server: the stopped one serves the other tests)
            store.inner = back.inner
            await store.admit(REQUEST)  # the probe succeeds
            assert gauge() == 0
        finally:
            await stopped.close()
            await back.close()

    run(scenario())
