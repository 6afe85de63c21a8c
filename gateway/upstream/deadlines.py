"""One loop timer for every request's headers deadline (see :class:`Deadlines`)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from gateway.upstream.base import UpstreamDisconnected

#: how early a loop timer may fire (uvloop rounds to whole milliseconds)
TIMER_RESOLUTION = 0.001


class Deadlines:
    """The deadlines of the requests waiting for their answer's headers, behind one timer
    set for the earliest: a timer per request (set, then cancelled) costs more than the
    rest of the wait's bookkeeping. There are at most as many as connections, and the
    timer fires about once per deadline period, so a scan of them all is cheap."""

    def __init__(self) -> None:
        self._due: dict[asyncio.Future[Any], float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def add(self, waiter: asyncio.Future[Any], due: float) -> None:
        self._due[waiter] = due
        if due < self._armed_for:
            self._arm(due)

    def discard(self, waiter: asyncio.Future[Any]) -> None:
        self._due.pop(waiter, None)

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = due
        self._timer = asyncio.get_running_loop().call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer, self._armed_for = None, math.inf
        # uvloop's timers have a resolution of a millisecond and may fire up to half of one
        # early: what is due within it is due now (else the timer would spin to the due)
        now = asyncio.get_running_loop().time() + TIMER_RESOLUTION
        earliest = math.inf
        for waiter, due in list(self._due.items()):
            if due <= now:
                del self._due[waiter]
                if not waiter.done():
                    waiter.set_exception(TimeoutError("no answer from the upstream in time"))
            elif due < earliest:
                earliest = due
        if earliest < math.inf:
            self._arm(earliest)

    def close(self) -> None:
        """No more deadlines: the pool is closing, so whoever still waits fails now."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed_for = None, math.inf
        waiting, self._due = self._due, {}
        for waiter in waiting:
            if not waiter.done():
                waiter.set_exception(UpstreamDisconnected("the upstream client is closed"))
