"""A circuit breaker: after repeated failures, stop calling for a while, then probe.

closed -> (``failure_threshold`` consecutive failures) -> open -> (``open_seconds``) ->
half-open: one call at a time is let through as a probe; success closes, failure opens
again. Time is passed in, so the logic is pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    failure_threshold: int = 3
    open_seconds: float = 1.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False

    def allow(self, now: float) -> bool:
        """May a call go through now? In half-open state only one probe at a time."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.open_seconds:
                return False
            self.state = BreakerState.HALF_OPEN
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> bool:
        """Record a success; True when this closed an open circuit."""
        recovered = self.state is not BreakerState.CLOSED
        self.state, self.failures, self.probing = BreakerState.CLOSED, 0, False
        return recovered

    def failure(self, now: float) -> bool:
        """Record a failure; True when this opened the circuit."""
        self.probing = False
        if self.state is BreakerState.HALF_OPEN:
            self.state, self.opened_at = BreakerState.OPEN, now
            return True
        self.failures += 1
        if self.state is BreakerState.CLOSED and self.failures >= self.failure_threshold:
            self.state, self.opened_at = BreakerState.OPEN, now
            return True
        return False
