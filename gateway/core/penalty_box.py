"""The penalty box's arithmetic: failures counted in a fixed window, a box past a threshold.

As ``failure.lua`` does on Redis: the count starts at a subject's first failure and lasts
``window_ms``; the failure that brings it to ``threshold`` deletes the count and boxes the
subject for ``cooldown_ms``. Pure: the memory store and ``gateway policies replay`` (on
its simulated clock) both count with :func:`count_failure`.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Rule(Protocol):
    """What the arithmetic needs of a rule (the policies' ``Penalty``, the stores'
    ``PenaltyRule``)."""

    @property
    def window_ms(self) -> int: ...

    @property
    def threshold(self) -> int: ...

    @property
    def cooldown_ms(self) -> int: ...


class Failures(NamedTuple):
    """A subject's failures in its current window."""

    failures: int
    #: when the window (and the count) ends, on the caller's clock in ms
    ends_ms: float


def count_failure(
    current: Failures | None, now_ms: float, rule: Rule
) -> tuple[Failures | None, int]:
    """One more failure: the count to keep (None once it boxed the subject) and the
    cool-down in ms when this failure boxes the subject, else 0. ``current`` is the count
    held for the subject; one whose window ended counts as none."""
    if current is None or current.ends_ms <= now_ms:
        current = Failures(0, now_ms + rule.window_ms)
    count = current.failures + 1
    if count >= rule.threshold:
        return None, rule.cooldown_ms
    return Failures(count, current.ends_ms), 0
