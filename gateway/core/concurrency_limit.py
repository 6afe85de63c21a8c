"""An adaptive concurrency limit: how many requests a replica lets in at once.

:class:`GradientLimit` follows Netflix concurrency-limits' ``Gradient2Limit``: the
latencies of the requests that completed in a short window are averaged (``short``) and
compared with a slow exponential average of those window averages (``long``, the latency
the replica has when it is not queueing). While ``short`` stays within ``tolerance`` times
``long`` the limit grows by about the square root of itself per window; when latency rises
past that, the limit shrinks by the ratio (never below half per window), smoothed, and
always within ``[min_limit, max_limit]``. A window in which fewer than half the limit's
requests were in flight changes nothing (the replica was not the bottleneck: its latency
says nothing about the limit).

The event loop's lag is the second input (``lag_target``, 0: not used): the caller reports
how late a periodic timer ran (:meth:`GradientLimit.observe_lag`). A window whose mean lag
is past the target shrinks the limit at once, whatever the latency: to the number that was
in flight at most in the window (not from a ceiling far above it) times ``target / lag``,
never by more than half, never below the floor. One event loop runs every admitted
request, a step each per turn: more at once makes every turn longer, and a late turn
delays everything, the refusals included (they wait for the turn to end). Latency alone
would see it late: its long average learns from overloaded windows too, and it cannot
tell a slow upstream (no work for the loop) from a loop with too much to do.

Per request this costs an integer comparison and increment to enter and, to leave, a
decrement, two additions and one comparison with the window's end; the gradient is
computed once per window. The caller passes the time (seconds, any monotonic origin), so
tests drive the clock. Waiting for a place is the caller's business
(:mod:`gateway.web.overload`).
"""

from __future__ import annotations

import math


class GradientLimit:
    """The limit and the count of requests in flight under it."""

    __slots__ = (
        "_lag_count",
        "_lag_sum",
        "_long",
        "_long_samples",
        "_max_seen",
        "_rtt_count",
        "_rtt_sum",
        "_window_end",
        "estimate",
        "in_flight",
        "lag_target",
        "limit",
        "long_window",
        "max_limit",
        "min_limit",
        "min_samples",
        "smoothing",
        "tolerance",
        "window_seconds",
    )

    def __init__(
        self,
        min_limit: int,
        max_limit: int,
        *,
        now: float,
        initial_limit: int | None = None,
        window_seconds: float = 0.1,
        min_samples: int = 10,
        tolerance: float = 1.5,
        smoothing: float = 0.2,
        long_window: int = 600,
        lag_target: float = 0.0,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError("need 1 <= min_limit <= max_limit")
        self.min_limit = min_limit
        self.max_limit = max_limit
        start = max_limit if initial_limit is None else initial_limit
        self.estimate = float(min(max(start, min_limit), max_limit))
        #: the integer limit admissions compare with
        self.limit = int(self.estimate)
        self.in_flight = 0
        self.window_seconds = window_seconds
        self.min_samples = min_samples
        self.tolerance = tolerance
        self.smoothing = smoothing
        self.long_window = long_window
        #: the event loop's lag (seconds) past which the limit shrinks; 0: not watched
        self.lag_target = lag_target
        self._lag_sum = 0.0
        self._lag_count = 0
        self._window_end = now + window_seconds
        self._rtt_sum = 0.0
        self._rtt_count = 0
        self._max_seen = 0
        self._long = 0.0
        self._long_samples = 0

    def try_acquire(self) -> bool:
        """Take a place if one is free (the caller may also inline this test)."""
        if self.in_flight < self.limit:
            self.in_flight += 1
            if self.in_flight > self._max_seen:
                self._max_seen = self.in_flight
            return True
        return False

    def add_in_flight(self) -> None:
        """A place handed over or taken (after :meth:`try_acquire`'s test was inlined)."""
        self.in_flight += 1
        if self.in_flight > self._max_seen:
            self._max_seen = self.in_flight

    def release(self, rtt: float, now: float) -> None:
        """A request that held a place ended after ``rtt`` seconds, at ``now``."""
        self.in_flight -= 1
        self._rtt_sum += rtt
        self._rtt_count += 1
        if now >= self._window_end:
            self._end_window(now)

    def release_unsampled(self) -> None:
        """A place given back without a latency (a request that became a stream, or was
        cancelled while it waited)."""
        self.in_flight -= 1

    def observe_lag(self, lag: float) -> None:
        """The event loop ran a periodic timer ``lag`` seconds late."""
        self._lag_sum += lag
        self._lag_count += 1

    @property
    def long_rtt(self) -> float:
        """The long-term average latency (0 before the first window)."""
        return self._long

    def _end_window(self, now: float) -> None:
        if self._rtt_count < self.min_samples:
            return  # keep gathering: too few samples to judge
        short = self._rtt_sum / self._rtt_count
        busiest = self._max_seen
        self._window_end = now + self.window_seconds
        self._rtt_sum = 0.0
        self._rtt_count = 0
        self._max_seen = self.in_flight
        lag = self._lag_sum / self._lag_count if self._lag_count else 0.0
        self._lag_sum = 0.0
        self._lag_count = 0
        self._update(short, busiest, lag)

    def _update(self, short: float, busiest: int, lag: float = 0.0) -> None:
        if short <= 0:
            return
        # the long average: a plain mean while warming up, then exponential
        self._long_samples += 1
        if self._long_samples <= 10:
            self._long += (short - self._long) / self._long_samples
        else:
            factor = 2.0 / (self.long_window + 1)
            self._long += (short - self._long) * factor
        long = self._long
        if long / short > 2.0:  # latency fell for good: let the long average follow
            self._long = long = long * 0.95
        if self.lag_target and lag > self.lag_target:
            # the loop is late: each turn runs more work than it should. Shrink from
            # what was in flight (a limit far above it would take many windows to come
            # down), at once and by the ratio, at most by half
            base = min(self.estimate, float(max(busiest, 1)))
            estimate = base * max(0.5, self.lag_target / lag)
            self.estimate = min(max(estimate, float(self.min_limit)), float(self.max_limit))
            self.limit = int(self.estimate)
            return
        if busiest < self.estimate / 2:
            return  # not the bottleneck in this window
        gradient = max(0.5, min(1.0, self.tolerance * long / short))
        queue = max(4.0, math.sqrt(self.estimate))
        target = self.estimate * gradient + queue
        estimate = self.estimate * (1 - self.smoothing) + target * self.smoothing
        self.estimate = min(max(estimate, float(self.min_limit)), float(self.max_limit))
        self.limit = int(self.estimate)


class Slots:
    """A fixed number of places (open streams): no latency, no queue."""

    __slots__ = ("in_use", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def try_take(self) -> bool:
        if self.in_use < self.limit:
            self.in_use += 1
            return True
        return False

    def give_back(self) -> None:
        self.in_use -= 1
