"""A clock that moves only when a test moves it, for anything that takes ``clock=``."""

from __future__ import annotations


class FixedClock:
    """``clock()`` is ``now`` until :meth:`advance`; stands in for ``time.time`` or
    ``time.monotonic`` alike."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
