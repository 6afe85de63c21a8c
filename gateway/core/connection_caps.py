"""How many connections the public listener holds, in total and per client.

A client is its TCP peer's address; IPv6 peers count per /64 network, since one host
gets a whole /64 and could otherwise open a cap's worth of connections from each of its
addresses. Peers that are trusted proxies (the load balancers) carry many clients on
their connections: they count towards the total only, never towards a per-client cap
(the balancer in front is where per-client connection limits belong then).

:class:`RefusalTally` turns a burst of refusals into one log line per interval, with the
counts by reason and the clients refused most, so refusals cannot flood the log.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from gateway.core.fingerprint import ip_prefix

RefusalReason = Literal["client_limit", "total_limit"]
REFUSAL_REASONS: tuple[RefusalReason, ...] = ("client_limit", "total_limit")
#: IPv6 clients are counted by this network prefix
IPV6_CLIENT_PREFIX = 64
#: distinct clients a tally remembers per interval (the rest are counted as others)
TALLIED_CLIENTS = 64


@functools.lru_cache(maxsize=4096)
def client_group(peer: str) -> str:
    """What a per-client cap counts: the IPv4 address, or the IPv6 /64 (an IPv4-mapped
    IPv6 address is its IPv4 address)."""
    if ":" not in peer:
        return peer
    group = ip_prefix(peer, 32, IPV6_CLIENT_PREFIX)
    return group.removesuffix("/32")


class ConnectionCounts:
    """Open connections, in total and per client; ``0`` disables a cap."""

    def __init__(self, *, per_client: int, total: int) -> None:
        if per_client < 0 or total < 0:
            raise ValueError("connection caps cannot be negative")
        self._per_client = per_client
        self._total_cap = total
        self._by_client: dict[str, int] = {}
        self.total = 0

    def open(self, client: str | None) -> RefusalReason | None:
        """Count a new connection from ``client`` (a :func:`client_group`, or None for
        a peer that is not capped), or say why it is refused (then it is not counted)."""
        if self._total_cap and self.total >= self._total_cap:
            return "total_limit"
        if client is not None and self._per_client:
            held = self._by_client.get(client, 0)
            if held >= self._per_client:
                return "client_limit"
            self._by_client[client] = held + 1
        self.total += 1
        return None

    def close(self, client: str | None) -> None:
        """A connection that :meth:`open` counted has ended."""
        self.total -= 1
        if client is not None and self._per_client:
            held = self._by_client.pop(client, 0) - 1
            if held > 0:
                self._by_client[client] = held

    def held_by(self, client: str) -> int:
        return self._by_client.get(client, 0)


@dataclass(frozen=True, slots=True)
class RefusalSummary:
    """Refusals since the last summary: counts by reason, the clients refused most."""

    by_reason: dict[str, int]
    top_clients: list[tuple[str, int]]
    other_clients: int
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


class RefusalTally:
    """Counts refusals; :meth:`record` hands back a summary at most once per
    ``interval`` seconds (the first refusal after a quiet interval is reported at once,
    the rest of a burst with the next one)."""

    def __init__(self, interval: float, top: int = 5) -> None:
        self._interval = interval
        self._top = top
        self._since: float | None = None
        self._next_report = float("-inf")
        self._reasons: Counter[str] = Counter()
        self._clients: Counter[str] = Counter()
        self._others = 0

    def record(self, reason: str, client: str, now: float) -> RefusalSummary | None:
        if self._since is None:
            self._since = now
        self._reasons[reason] += 1
        if client in self._clients or len(self._clients) < TALLIED_CLIENTS:
            self._clients[client] += 1
        else:
            self._others += 1
        if now < self._next_report:
            return None
        return self._report(now)

    def flush(self, now: float) -> RefusalSummary | None:
        """The refusals not reported yet, if any (at shutdown)."""
        return self._report(now) if self._reasons else None

    def _report(self, now: float) -> RefusalSummary:
        top = self._clients.most_common(self._top)
        others = self._others + sum(self._clients.values()) - sum(n for _, n in top)
        summary = RefusalSummary(
            by_reason=dict(self._reasons),
            top_clients=top,
            other_clients=others,
            seconds=round(now - (self._since if self._since is not None else now), 3),
        )
        self._reasons.clear()
        self._clients.clear()
        self._others = 0
        self._since = None
        self._next_report = now + self._interval
        return summary
