"""Shedding at the listener: ``503 overloaded`` from the parsed request head.

While the application's shedding is saturated (no place free, no room to wait:
:meth:`gateway.web.overload.Shedder.saturated`), every request reaching the application
would be answered ``503 overloaded`` (``queue_full``) by its middleware; building that
answer through aiohttp (a request object, a task, the middleware, a response, an access
line) costs several times what parsing it did, so under twice the load a replica can serve,
most of its CPU went to refusing. :class:`GuardedConnection
<gateway.web.connection.GuardedConnection>` asks :class:`EarlyShed` instead, right after
aiohttp's parser queued a whole request on an idle connection, and writes the canned answer
itself: the same status, problem body and headers (``Retry-After``, ``X-Request-Id``, ...),
keep-alive unless the request or draining says otherwise. What is not answered here goes
the usual way: a request carrying ``Origin`` (its answer needs the CORS headers of its
key's origins), a ``HEAD`` request, an upgrade, a request whose body has not all arrived,
pipelined requests behind another.

Counted as the middleware would: ``gateway_requests_shed_total{reason="queue_full"}`` and
the request metrics under the route's template. No access line each (thousands a second
are what overload looks like): one ``requests_shed_early`` warning per
``LOG_SECONDS`` at most sums them up by route.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from email.utils import formatdate

import orjson
import structlog
from aiohttp import web

from gateway.observability.health import Health
from gateway.observability.metrics import Metrics
from gateway.web.early_answers import SERVER
from gateway.web.middlewares import new_request_id
from gateway.web.overload import Shedder

#: at most one ``requests_shed_early`` line per this many seconds
LOG_SECONDS = 10.0
#: the route label of a path no route matches (as the middleware's)
UNMATCHED = "unmatched"

log = structlog.get_logger("gateway")


def route_table(router: web.UrlDispatcher) -> Callable[[str], str]:
    """A function from a request path to its route template, from the router's public
    description of its resources: a dictionary for plain paths, then the patterns."""
    plain: dict[str, str] = {}
    patterns: list[tuple[re.Pattern[str], str]] = []
    prefixes: list[tuple[str, str]] = []
    for resource in router.resources():
        info = resource.get_info()
        if "path" in info:
            plain[str(info["path"])] = resource.canonical
        elif "pattern" in info:
            patterns.append((info["pattern"], resource.canonical))
        elif "prefix" in info:
            prefixes.append((str(info["prefix"]), resource.canonical))

    def route_of(path: str) -> str:
        found = plain.get(path)
        if found is not None:
            return found
        for pattern, canonical in patterns:
            if pattern.fullmatch(path):
                return canonical
        for prefix, canonical in prefixes:
            if path.startswith(prefix):
                return canonical
        return UNMATCHED

    return route_of


class EarlyShed:
    """The listener's side of the application's shedding (see the module doc)."""

    def __init__(
        self, shedder: Shedder, metrics: Metrics, router: web.UrlDispatcher, health: Health
    ) -> None:
        #: whether a request now would be shed (the shedder's own method)
        self.saturated: Callable[[], bool] = shedder.saturated
        self._shedder = shedder
        self._metrics = metrics
        self._health = health
        self._route_of = route_table(router)
        err = shedder.problem("queue_full")
        self._body = orjson.dumps(err.body())
        self._static = {
            "Content-Type": "application/problem+json",
            "Content-Length": str(len(self._body)),
            "Cache-Control": "no-store",
            **err.headers,
            "Server": SERVER,
            "X-Content-Type-Options": "nosniff",
        }
        self._second = -1
        self._heads: tuple[bytes, bytes] = (b"", b"")
        self._by_route: Counter[str] = Counter()
        self._since = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None

    def pending_add(self, count: int) -> None:
        """``count`` requests were handed to the application (see ``Shedder.saturated``)."""
        self._shedder.pending += count

    def pending_done(self, count: int) -> None:
        """``count`` of them reached its shedding, or never will (their connection ended)."""
        self._shedder.pending -= count

    def _head(self, keep_alive: bool) -> bytes:
        """The status line and headers up to ``X-Request-Id``'s value, rebuilt once a
        second (``Date``)."""
        now = int(time.time())
        if now != self._second:
            self._second = now
            fields = {**self._static, "Date": formatdate(now, usegmt=True)}
            lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
            head = "HTTP/1.1 503 Service Unavailable\r\n" + lines
            self._heads = (
                (head + "Connection: close\r\nX-Request-Id: ").encode("latin-1"),
                (head + "X-Request-Id: ").encode("latin-1"),
            )
        return self._heads[keep_alive]

    def answer(self, method: str, target: str, should_close: bool) -> tuple[bytes, bool]:
        """The whole answer to a request shed here, and whether the connection stays open;
        counted in the metrics and the next summary line."""
        keep_alive = not should_close and not self._health.draining
        path = target.partition("?")[0]
        route = self._route_of(path)
        metrics = self._metrics
        metrics.request_shed("queue_full")
        metrics.observe_request(route, method, 503, 0.0, "overloaded")
        self._count(route)
        answer = b"".join(
            (self._head(keep_alive), new_request_id().encode(), b"\r\n\r\n", self._body)
        )
        return answer, keep_alive

    def _count(self, route: str) -> None:
        if not self._by_route:
            loop = asyncio.get_running_loop()
            self._since = loop.time()
            self._flush_timer = loop.call_later(LOG_SECONDS, self.flush)
        self._by_route[route] += 1

    def flush(self) -> None:
        """Log the sheds not logged yet (also at shutdown)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._by_route:
            by_route, self._by_route = dict(self._by_route), Counter()
            seconds = round(asyncio.get_running_loop().time() - self._since, 1)
            log.warning(
                "requests_shed_early",
                shed=sum(by_route.values()),
                by_route=by_route,
                seconds=seconds,
            )
