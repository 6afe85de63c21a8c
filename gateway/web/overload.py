"""Load shedding on the public listener: a place under the adaptive limit, or 503.

The context middleware (:mod:`gateway.web.middlewares`: request id, client address, the
access line) asks the application's :class:`Shedder` for a place right before the
handler, so a shed request costs no key, token or store work; there is no middleware
layer of its own, and the latency is read from the middleware's own clock readings. A
request takes a place under the
:class:`~gateway.core.concurrency_limit.GradientLimit`; when none is free it waits in a
bounded queue (``overload.queue_size``, and no longer than the limit: the places free up
about once per latency of an admitted request, so the wait stays about one such latency)
for at most ``overload.max_wait_ms``; with the queue full, or the wait over, it is answered
``503 overloaded`` with ``Retry-After`` at once. A queue that never empties is closed for
a while (:meth:`Shedder.queue_bound`): at capacity, waiting adds latency, not throughput.
While no place is free and the queue is full (:meth:`Shedder.saturated`), the listener
answers that 503 itself, from the parsed request head, before aiohttp builds a request
(:mod:`gateway.web.connection`): refusing then costs a fraction of what the application's
answer would. The place is given back when the handler returns, with the request's
latency; the limit's other input is the event loop's lag, how late a timer set every
``LAG_INTERVAL`` runs (``overload.loop_lag_target_ms``: a loop running late runs too much
at once, whatever the latency says).

A streamed answer holds its place for as long as the stream is open, which says nothing
about the replica's load: :func:`enter_stream` (called by the send handler before its
token work when the client asked for a stream) trades the request's place for one of
``overload.stream_limit`` stream places, or sheds the request. Long answers then cannot
starve short requests, and streams cannot exceed their own limit. A stream nobody
announced (a private route's, an upstream streaming unasked) moves to a stream place when
the relay starts (:func:`stream_began`), counted even past the limit.

The admin listener (health, metrics) is another application on another socket: nothing
here ever delays it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable

from aiohttp import web

from gateway.config.settings import OverloadSettings
from gateway.core.concurrency_limit import GradientLimit, Slots
from gateway.errors import ProblemError
from gateway.observability.metrics import Metrics, ShedReason

#: the shedding of the application (for :func:`enter_stream`)
SHEDDER: web.AppKey[Shedder] = web.AppKey("overload_shedder")

#: how often the event loop's lag is sampled (seconds): a timer this often, each telling
#: how late it ran
LAG_INTERVAL = 0.005

#: a queue that has not been empty for this long is standing (seconds) ...
STANDING_SECONDS = 0.025
#: ... and takes no one for this long (seconds)
CLOSED_SECONDS = 1.0

_DETAILS: dict[ShedReason, str] = {
    "queue_full": "the gateway is at capacity; retry shortly",
    "queue_timeout": "the gateway is at capacity; retry shortly",
    "stream_limit": "too many streamed answers are open; retry shortly",
}


class Shedder:
    """The limit, the wait queue and the stream places of one application."""

    def __init__(self, settings: OverloadSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.limiter = GradientLimit(
            settings.min_limit,
            settings.max_limit,
            now=time.perf_counter(),
            window_seconds=settings.window_seconds,
            tolerance=settings.tolerance,
            lag_target=settings.loop_lag_target_ms / 1000,
        )
        self._lag_timer: asyncio.TimerHandle | None = None
        self._lag_due = 0.0
        #: take a free place at once (every request below the limit): the limit's own
        #: method, without a call of ours around it
        self.try_enter: Callable[[], bool] = self.limiter.try_acquire
        self.stream_slots = Slots(settings.stream_limit)
        #: ``id()`` of the requests whose place became a stream place (a set, not a
        #: request key: ``key in request`` costs a raised KeyError when it is absent)
        self.streaming: set[int] = set()
        self.queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self.max_wait = settings.max_wait_ms / 1000
        self.queue_size = settings.queue_size
        #: when the queue was last empty, and until when no request may wait (see
        #: :meth:`queue_bound`)
        self._empty_at = 0.0
        self._closed_until = 0.0
        #: requests handed to the application by the listener, not yet here
        self.pending = 0
        self._metrics = metrics
        self._retry_after = {"Retry-After": str(settings.retry_after_seconds)}
        metrics.watch_overload(self)

    def start(self) -> None:
        """Sample the event loop's lag on the running loop, when the limit uses it."""
        if self.limiter.lag_target and self._lag_timer is None:
            self._lag_due = time.perf_counter() + LAG_INTERVAL
            self._lag_timer = asyncio.get_running_loop().call_later(LAG_INTERVAL, self._lag_tick)

    def stop(self) -> None:
        if self._lag_timer is not None:
            self._lag_timer.cancel()
            self._lag_timer = None

    def _lag_tick(self) -> None:
        now = time.perf_counter()
        self.limiter.observe_lag(max(0.0, now - self._lag_due))
        self._lag_due = now + LAG_INTERVAL
        self._lag_timer = asyncio.get_running_loop().call_later(LAG_INTERVAL, self._lag_tick)

    # -- figures read by the metrics
    @property
    def limit(self) -> int:
        return self.limiter.limit

    @property
    def in_flight(self) -> int:
        return self.limiter.in_flight

    @property
    def streams(self) -> int:
        return self.stream_slots.in_use

    @property
    def waiting(self) -> int:
        return len(self.queue)

    def problem(self, reason: ShedReason) -> ProblemError:
        """The answer that sheds a request for ``reason``."""
        return ProblemError("overloaded", _DETAILS[reason], self._retry_after)

    def shed(self, reason: ShedReason) -> ProblemError:
        """:meth:`problem`, counted."""
        self._metrics.request_shed(reason)
        return self.problem(reason)

    def queue_bound(self) -> int:
        """How many may wait: ``queue_size``, never more than the limit (one place each
        as the requests in flight leave: a longer queue only adds its wait to the
        latency of what is admitted), and none while the queue is closed.

        A queue that has not been empty for ``STANDING_SECONDS`` is standing (CoDel's
        word): requests arrive faster than places free up, so the replica is at
        capacity and a wait adds latency without adding throughput (there is always
        someone to take a place that frees up). It then takes no one for
        ``CLOSED_SECONDS``: what finds no place is shed at once, and the requests
        already waiting are served. A burst that the queue absorbs and that drains
        within ``STANDING_SECONDS`` changes nothing."""
        closed = self._closed_until
        if self.queue:
            now = time.perf_counter()
            if now - self._empty_at > STANDING_SECONDS:
                self._closed_until = closed = now + CLOSED_SECONDS
            if now < closed:
                return 0
        elif closed:
            if time.perf_counter() < closed:
                return 0
            self._closed_until = 0.0
        return min(self.queue_size, self.limiter.limit)

    def saturated(self) -> bool:
        """The places and the queue are taken, counting the requests the listener handed
        to the application that have not asked for a place yet (``pending``: read in the
        same turn of the loop, they ask later in it): a request now would be shed
        ``queue_full``, so the listener answers it before aiohttp builds a request (see
        :mod:`gateway.web.early_shed`)."""
        limiter = self.limiter
        taken = limiter.in_flight + len(self.queue) + self.pending
        return taken >= limiter.limit + self.queue_bound()

    async def wait_for_place(self) -> None:
        """Wait in the queue for a place, or raise the 503 that sheds the request."""
        queue = self.queue
        if len(queue) >= self.queue_bound():
            raise self.shed("queue_full")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not queue:
            self._empty_at = time.perf_counter()
        queue.append(waiter)
        try:
            async with asyncio.timeout(self.max_wait):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # the place arrived with the deadline
            self._forget(waiter)
            raise self.shed("queue_timeout") from None
        except asyncio.CancelledError:  # the client went away, or shutdown
            if waiter.done() and not waiter.cancelled():
                self.give_back()
            else:
                self._forget(waiter)
            raise

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self.queue.remove(waiter)
        if not self.queue:
            self._empty_at = time.perf_counter()

    def released(self) -> None:
        """Hand the places now free to the requests waiting longest."""
        limiter, queue = self.limiter, self.queue
        while queue and limiter.in_flight < limiter.limit:
            waiter = queue.popleft()
            if not waiter.done():
                limiter.add_in_flight()
                waiter.set_result(None)
        if not queue:
            self._empty_at = time.perf_counter()

    def give_back(self) -> None:
        """A place given back without a latency."""
        self.limiter.release_unsampled()
        if self.queue:
            self.released()

    def leave(self, request: web.Request, admitted_at: float, now: float) -> None:
        """The request admitted at ``admitted_at`` ended at ``now``: its place back, with
        its latency, or its stream place."""
        streaming = self.streaming
        if streaming and id(request) in streaming:
            streaming.discard(id(request))
            self.stream_slots.give_back()
            return
        self.limiter.release(now - admitted_at, now)
        if self.queue:
            self.released()

    def enter_stream(self, request: web.Request) -> None:
        """Trade the request's place for a stream place, or shed it (see module doc)."""
        if id(request) in self.streaming:
            return
        if not self.stream_slots.try_take():
            raise self.shed("stream_limit")
        self.streaming.add(id(request))
        self.give_back()


def stream_began(request: web.Request) -> None:
    """An answer turned out to be a stream that :func:`enter_stream` did not see coming
    (a private route's, or an upstream streaming unasked): it moves to a stream place,
    counted even past the limit (the upstream work is done), so its length never feeds
    the adaptive limit."""
    shedder = request.app.get(SHEDDER)
    if shedder is not None and id(request) not in shedder.streaming:
        shedder.stream_slots.in_use += 1
        shedder.streaming.add(id(request))
        shedder.give_back()


def enter_stream(request: web.Request) -> None:
    """The request will be answered with a stream (no-op when shedding is off)."""
    shedder = request.app.get(SHEDDER)
    if shedder is not None:
        shedder.enter_stream(request)


def make_shedder(settings: OverloadSettings, metrics: Metrics) -> Shedder | None:
    """The application's shedding, or ``None`` when ``overload.enabled`` is off."""
    return Shedder(settings, metrics) if settings.enabled else None
