"""GCRA (the generic cell rate algorithm) as pure, exact arithmetic.

A limit of ``rate`` requests per ``period`` with ``burst`` admits ``burst`` requests at once
from idle, then one every ``interval = period / rate``. The only state is the theoretical
arrival time (TAT) of the next request, so there is no window edge at which twice the
limit can pass. The Lua script ``store/lua/admit.lua`` implements the same rules; the
memory store calls these functions.

Times are whole microseconds counted from :data:`EPOCH_SECONDS` (a recent epoch keeps the
counts below 2**53, so Lua's doubles hold them exactly) and the interval is rounded to a
whole microsecond once: both stores then compute the very same answers, with no
floating-point drift that could admit one request fewer than ``burst``.

The values built per request (here, in :mod:`gateway.store.base`, the policies' request
facts and the decoded token) are named tuples: as immutable as frozen dataclasses, and
built in less than half the time.
"""

from __future__ import annotations

from typing import NamedTuple

EPOCH_SECONDS = 1_700_000_000
EPOCH_US = EPOCH_SECONDS * 1_000_000


def _ceil_ms(us: int) -> int:
    return -(-us // 1000)


class LimitSpec(NamedTuple):
    """One limit to check for one request: where its state lives and its shape.

    ``scope`` None: the state is the store's entry ``key``. Otherwise it is the ``jti``
    of the token whose state holds this limit under the name ``key``, and the state lives
    and expires with that token (limits partitioned by a token or its conversation)."""

    key: str
    interval_us: int
    burst: int
    shadow: bool = False
    scope: str | None = None

    @property
    def tolerance_us(self) -> int:
        return self.interval_us * self.burst


class LimitState(NamedTuple):
    """The outcome of one limit: admitted or not, and what the client may be told."""

    allowed: bool
    remaining: int
    #: until the limit is fully replenished
    reset_ms: int
    #: until a denied request would be admitted; 0 when allowed
    retry_ms: int
    #: the TAT to store when the whole request is admitted (microseconds)
    new_tat: int


def evaluate(spec: LimitSpec, tat: int | None, now: int) -> LimitState:
    """Check one limit at ``now`` given the stored TAT (None when idle)."""
    base = now if tat is None or tat < now else tat
    new_tat = base + spec.interval_us
    ahead = new_tat - now
    tolerance = spec.tolerance_us
    if ahead <= tolerance:
        remaining = (tolerance - ahead) // spec.interval_us
        return LimitState(True, remaining, _ceil_ms(ahead), 0, new_tat)
    current_ahead = base - now
    remaining = max((tolerance - current_ahead) // spec.interval_us, 0)
    retry = _ceil_ms(ahead - tolerance)
    return LimitState(False, remaining, _ceil_ms(current_ahead), retry, base)
