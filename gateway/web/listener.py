"""The listeners: aiohttp's server and runner, with the connection guard of
:mod:`gateway.web.connection` on every connection.

:class:`Listener` holds what every connection of one listener shares: its deadlines and
limits (``server.*`` in the configuration), its connection counts and caps, the metrics
and the aggregated log of refused connections. :class:`ListenerRunner` is
``web.AppRunner`` serving an application through it; ``gateway serve`` runs the public
and the admin applications with one each, the tests run theirs the same way.

Refused connections are answered with a canned problem (429 ``too_many_connections``, or
503 ``overloaded`` at the total cap) and closed before anything is read. They write no
access line: one ``connections_refused`` warning per ``REFUSAL_LOG_SECONDS`` at most sums
them up (counts by cap, the clients refused most), so a client opening connections in a
loop cannot flood the log; ``gateway_connections_refused_total`` counts every one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.config import ServerSettings
from gateway.core.client_ip import Network, is_trusted_peer
from gateway.core.connection_caps import (
    ConnectionCounts,
    RefusalReason,
    RefusalSummary,
    RefusalTally,
    client_group,
)
from gateway.errors import ProblemError
from gateway.observability import access_log
from gateway.observability.metrics import ConnectionPhase, Metrics
from gateway.web.connection import GuardedConnection
from gateway.web.early_answers import (
    MAX_HEADER_FIELDS,
    MAX_HEADER_LINE_BYTES,
    MAX_REQUEST_TARGET_BYTES,
    problem_bytes,
)
from gateway.web.early_shed import EarlyShed
from gateway.web.middlewares import new_request_id
from gateway.web.overload import SHEDDER
from gateway.web.relay import OPEN_STREAMS, OpenStreams
from gateway.web.state import HEALTH

#: at most one ``connections_refused`` line per this many seconds
REFUSAL_LOG_SECONDS = 10.0
#: at shutdown, once the grace is over: what ended streams get to send their final event
#: and cancelled handlers to unwind
END_SECONDS = 1.0
#: then what aiohttp's own shutdown gets to close each connection (see ListenerServer)
CLOSE_SECONDS = 0.1
#: the route and method the access line and metrics give a request that was never parsed
UNPARSED_ROUTE = "unparsed"
UNPARSED_METHOD = "UNKNOWN"

log = structlog.get_logger("gateway")


class Listener:
    """Deadlines, limits and connection counts shared by one listener's connections.

    ``metrics`` is None for a listener whose early answers are neither counted nor
    logged (the admin listener: its requests have no access lines either)."""

    def __init__(
        self,
        *,
        header_timeout: float,
        body_timeout: float,
        send_timeout: float,
        keepalive_timeout: float,
        max_header_bytes: int,
        max_connections: int = 0,
        max_connections_per_client: int = 0,
        trusted: Sequence[Network] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_header_bytes = max_header_bytes
        self.counts = ConnectionCounts(per_client=max_connections_per_client, total=max_connections)
        self._per_client = max_connections_per_client > 0
        self._trusted = list(trusted)
        self._metrics = metrics
        self._tally = RefusalTally(REFUSAL_LOG_SECONDS)
        self._flush_timer: asyncio.TimerHandle | None = None
        #: shedding before aiohttp builds a request, when the application sheds (set by
        #: :class:`ListenerRunner` once the application started)
        self.early_shed: EarlyShed | None = None
        if metrics is not None:
            metrics.watch_connections(self.counts)

    @classmethod
    def public(cls, settings: ServerSettings, metrics: Metrics) -> Listener:
        return cls(
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            send_timeout=settings.send_timeout_seconds,
            keepalive_timeout=settings.keepalive_timeout_seconds,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
            max_connections_per_client=settings.max_connections_per_client,
            trusted=settings.trusted_proxies,
            metrics=metrics,
        )

    @classmethod
    def admin(cls, settings: ServerSettings) -> Listener:
        """The same deadlines and limits, no caps (probes and scrapes), nothing logged."""
        return cls(
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            send_timeout=settings.send_timeout_seconds,
            keepalive_timeout=settings.keepalive_timeout_seconds,
            max_header_bytes=settings.max_header_bytes,
        )

    def handler_options(self) -> dict[str, Any]:
        """``RequestHandler`` arguments: keep-alive and the parser's limits."""
        return {
            "keepalive_timeout": self.keepalive_timeout,
            "max_line_size": MAX_REQUEST_TARGET_BYTES,
            "max_field_size": MAX_HEADER_LINE_BYTES,
            "max_headers": MAX_HEADER_FIELDS,
        }

    # -- connections -----------------------------------------------------------------------
    def admit(self, transport: asyncio.BaseTransport) -> tuple[bool, str | None]:
        """Count a new connection, or answer and close it. Returns whether it was admitted
        and the client it counts for (None: not capped per client)."""
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        client: str | None = None
        if self._per_client and address is not None and not is_trusted_peer(address, self._trusted):
            client = client_group(address)
        reason = self.counts.open(client)
        if reason is None:
            if self._metrics is not None:
                self._metrics.connection_accepted()
            return True, client
        self._refuse(transport, reason, address or "unknown")
        return False, None

    @property
    def metrics(self) -> Metrics | None:
        return self._metrics

    def release(self, client: str | None) -> None:
        self.counts.close(client)

    def _refuse(self, transport: asyncio.BaseTransport, reason: RefusalReason, peer: str) -> None:
        if reason == "client_limit":
            err = ProblemError(
                "too_many_connections",
                "this client has too many connections open",
                {"Retry-After": "1"},
            )
        else:
            err = ProblemError(
                "overloaded", "the gateway has too many connections open", {"Retry-After": "1"}
            )
        # uvloop's transports are not asyncio.Transport subclasses: as aiohttp does, cast
        writable = cast(asyncio.Transport, transport)
        writable.write(problem_bytes(err, new_request_id(), err.headers))
        writable.close()
        if self._metrics is not None:
            self._metrics.connection_refused(reason)
        loop = asyncio.get_running_loop()
        summary = self._tally.record(reason, peer, loop.time())
        if summary is not None:
            _log_refusals(summary)
        elif self._flush_timer is None:  # the rest of this burst, in one line later
            self._flush_timer = loop.call_later(REFUSAL_LOG_SECONDS, self.flush)

    def flush(self) -> None:
        """Log the refusals and early sheds not logged yet (also at shutdown)."""
        if self.early_shed is not None:
            self.early_shed.flush()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        summary = self._tally.flush(asyncio.get_running_loop().time())
        if summary is not None:
            _log_refusals(summary)

    def timed_out(self, phase: ConnectionPhase) -> None:
        if self._metrics is not None:
            self._metrics.connection_timed_out(phase)

    # -- early answers ---------------------------------------------------------------------
    def answered(
        self, request_id: str, err: ProblemError, seconds: float, peer: str | None
    ) -> None:
        """The access line and metrics of a request refused before the application saw
        it (malformed, too large, too slow)."""
        if self._metrics is None:
            return
        self._metrics.observe_request(
            UNPARSED_ROUTE, UNPARSED_METHOD, err.status, seconds, err.code
        )
        access_log.emit(
            request_id=request_id,
            request_id_generated=True,
            method=UNPARSED_METHOD,
            route=UNPARSED_ROUTE,
            status=err.status,
            duration_ms=round(seconds * 1000, 2),
            client_ip=peer,
            key_id=None,
            token_hash=None,
            error=err.code,
        )


def _log_refusals(summary: RefusalSummary) -> None:
    log.warning(
        "connections_refused",
        refused=summary.total,
        by_reason=summary.by_reason,
        top_clients=[{"client": client, "refused": n} for client, n in summary.top_clients],
        other_clients_refused=summary.other_clients,
        seconds=summary.seconds,
    )


class ListenerServer(web.Server):
    """aiohttp's low-level server, making :class:`GuardedConnection` connections."""

    def __init__(
        self,
        handler: Any,
        *,
        listener: Listener,
        streams: OpenStreams | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.listener = listener
        self.streams = streams or OpenStreams()

    def __call__(self) -> RequestHandler:
        return GuardedConnection(self, loop=self._loop, listener=self.listener, **self._kwargs)

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's)
        """Give the requests in flight ``timeout`` seconds (the grace) in all, then end
        them: streams with their final event, other handlers cancelled (see the module
        docstring). Waits at most ``timeout + END_SECONDS + 2 * CLOSE_SECONDS``."""
        busy = {
            task
            for conn in self._connections
            if conn._request_in_progress and (task := conn._task_handler) is not None
        }
        pending = {task for task in busy if not task.done()}
        if pending and (timeout is None or timeout > 0):
            _, pending = await asyncio.wait(pending, timeout=timeout)
        if pending:
            ending = self.streams.end() & pending
            cancelled = pending - ending
            for task in cancelled:
                task.cancel()
            log.warning(
                "shutdown_grace_over", streams_ended=len(ending), requests_cancelled=len(cancelled)
            )
            _, stuck = await asyncio.wait(pending, timeout=END_SECONDS)
            for task in stuck:  # e.g. a client that does not take the final event
                task.cancel()
        else:
            self.streams.end()
        # what is left for aiohttp: connections whose handler is done, closed at once (a
        # handler that survived two cancellations gets CLOSE_SECONDS twice, no more)
        await super().shutdown(CLOSE_SECONDS)


class ListenerRunner(web.AppRunner):
    """``web.AppRunner`` whose server is a :class:`ListenerServer` for ``listener``."""

    __slots__ = ("_listener",)

    def __init__(self, app: web.Application, listener: Listener, **kwargs: Any) -> None:
        super().__init__(app, **{**listener.handler_options(), **kwargs})
        self._listener = listener

    @property
    def listener(self) -> Listener:
        return self._listener

    async def _make_server(self) -> web.Server:
        streams = OpenStreams()
        self.app[OPEN_STREAMS] = streams  # before the startup freezes the application
        plain = await super()._make_server()  # runs the application's startup
        app = self.app
        shedder = app.get(SHEDDER)
        if shedder is not None and self._listener.metrics is not None:
            self._listener.early_shed = EarlyShed(
                shedder, self._listener.metrics, app.router, app[HEALTH]
            )
        return ListenerServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            listener=self._listener,
            streams=streams,
            **plain._kwargs,
        )

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            self._listener.flush()
