"""The revocations one replica has seen, kept for as long as the tokens they refuse.

The shared store is the authority on revoked tokens, but while it is unreachable and the
policies fail open, the replica decides alone: whatever it saw revoked before the outage
(a reuse it caught, a revoked verdict the store gave it) must stay refused. Consulted on
every use of a token, before the store: one dict lookup.

Bounded: at most ``capacity`` entries, the oldest dropped first when a new one comes, and
each one dropped once the token it names can no longer pass the codec (its expiry plus
the leeway, which the caller adds to ``until``). Entries are keyed by a plain string, a
token's ``jti`` today; whatever else identifies tokens to refuse (a token retired by a
renewal, a whole conversation's family) can be added under its own prefix.
"""

from __future__ import annotations

#: about 135 bytes each (a 22-character jti, its float and the dict slot): 13 MB at most
DEFAULT_CAPACITY = 100_000
#: expired entries dropped from the oldest end at each addition, besides the one evicted
SWEEP_PER_ADD = 2


class RevocationSet:
    """``key -> until`` (seconds, the clock of the token codec), oldest first."""

    __slots__ = ("_capacity", "_until")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        #: insertion order is the eviction order (a dict keeps it, at less memory than an
        #: OrderedDict)
        self._until: dict[str, float] = {}

    def add(self, key: str, until: float, now: float) -> None:
        """Refuse ``key`` until ``until``. Adding a known key keeps the later deadline (and
        its place in line: it was seen first then)."""
        if until <= now:
            return
        entries = self._until
        known = entries.get(key)
        if known is not None:
            if until > known:
                entries[key] = until
            return
        self._sweep(now)
        while len(entries) >= self._capacity:
            del entries[next(iter(entries))]
        entries[key] = until

    def revoked(self, key: str, now: float) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= now:
            del self._until[key]
            return False
        return True

    def _sweep(self, now: float) -> None:
        entries = self._until
        for _ in range(SWEEP_PER_ADD):
            if not entries:
                return
            oldest = next(iter(entries))
            if entries[oldest] > now:
                return
            del entries[oldest]

    def __len__(self) -> int:
        return len(self._until)
