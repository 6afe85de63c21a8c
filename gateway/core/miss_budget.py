"""How often a key store may look up key ids that its local snapshot lacks. Pure: the
caller passes ``now`` (seconds on a monotonic clock).

A replica's snapshot can lag the shared store by the time a change notification takes to
arrive, so a well-formed key id it does not know may be a key created a moment ago: it is
looked up once before the key is refused. Key ids are public and the key checksum is no
secret, so anyone can make well-formed keys with random ids; two bounds keep those from
turning into a stream of store reads:

- an id looked up and not found is not looked up again for ``forget_seconds`` (a bounded
  LRU of ``max_ids`` ids);
- at most ``rate`` look-ups a second with a burst of ``burst`` (GCRA, see
  :mod:`gateway.core.gcra`), whatever the ids.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

from gateway.core.gcra import LimitSpec, evaluate

Verdict = Literal["allowed", "known_missing", "over_budget", "disabled"]


class MissBudget:
    def __init__(
        self,
        rate: float,
        *,
        burst: int | None = None,
        forget_seconds: float = 60.0,
        max_ids: int = 10_000,
    ) -> None:
        """``rate`` look-ups a second (0: never look up); ``burst`` defaults to one
        second's worth."""
        self.rate = rate
        self._spec = (
            LimitSpec(
                key="",
                interval_us=max(1, round(1_000_000 / rate)),
                burst=burst if burst is not None else max(1, math.ceil(rate)),
            )
            if rate > 0
            else None
        )
        self._tat: int | None = None
        self._forget = forget_seconds
        self._max_ids = max_ids
        self._missing: OrderedDict[str, float] = OrderedDict()

    def allow(self, key_id: str, now: float) -> Verdict:
        """Whether ``key_id`` may be looked up now; an ``allowed`` look-up is spent."""
        if self._spec is None:
            return "disabled"
        until = self._missing.get(key_id)
        if until is not None:
            if now < until:
                return "known_missing"
            del self._missing[key_id]
        state = evaluate(self._spec, self._tat, _us(now))
        if not state.allowed:
            return "over_budget"
        self._tat = state.new_tat
        return "allowed"

    def missing(self, key_id: str, now: float) -> None:
        """``key_id`` was looked up and does not exist."""
        self._missing[key_id] = now + self._forget
        self._missing.move_to_end(key_id)
        while len(self._missing) > self._max_ids:
            self._missing.popitem(last=False)


def _us(seconds: float) -> int:
    return int(seconds * 1_000_000)
