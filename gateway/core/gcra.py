"""GCRA (the generic cell rate algorithm) as pure arithmetic, in milliseconds.

A limit of ``rate`` requests per ``period`` with ``burst`` admits ``burst`` requests at once
from idle, then one every ``interval = period / rate``. The only state is the theoretical
arrival time (TAT) of the next request, so there is no window edge at which twice the
limit can pass. The Lua script ``store/lua/admit.lua`` implements the same rules; the
memory store calls these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One limit to check for one request: where its state lives and its shape.

    ``scope`` None: the state is the store's entry ``key``. Otherwise it is the ``jti``
    of the token whose state holds this limit under the name ``key``, and the state lives
    and expires with that token (limits partitioned by a token or its conversation)."""

    key: str
    interval_ms: float
    burst: int
    shadow: bool = False
    scope: str | None = None

    @property
    def tolerance_ms(self) -> float:
        return self.interval_ms * self.burst


@dataclass(frozen=True, slots=True)
class LimitState:
    """The outcome of one limit: admitted or not, and what the client may be told."""

    allowed: bool
    remaining: int
    #: until the limit is fully replenished
    reset_ms: int
    #: until a denied request would be admitted; 0 when allowed
    retry_ms: int
    #: the TAT to store when the whole request is admitted
    new_tat: float


def evaluate(spec: LimitSpec, tat: float | None, now: float, cost: int = 1) -> LimitState:
    """Check one limit at ``now`` given the stored TAT (None when idle)."""
    base = now if tat is None or tat < now else tat
    new_tat = base + spec.interval_ms * cost
    ahead = new_tat - now
    if ahead <= spec.tolerance_ms:
        remaining = int((spec.tolerance_ms - ahead) // spec.interval_ms)
        return LimitState(True, remaining, math.ceil(ahead), 0, new_tat)
    current_ahead = base - now
    remaining = max(int((spec.tolerance_ms - current_ahead) // spec.interval_ms), 0)
    retry = math.ceil(ahead - spec.tolerance_ms)
    return LimitState(False, remaining, math.ceil(current_ahead), retry, base)
