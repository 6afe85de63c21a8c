"""Relaying an upstream answer to the client chunk by chunk, for the public and the
private routes alike.

A streamed answer (``text/event-stream``) is counted while it is relayed
(``gateway_streams_in_flight``), by the time to its first byte and by how it ended
(``gateway_streams_total``). A failure of the upstream in the middle of any answer is
counted under the route's upstream operation; then the answer ends with an ``error``
event when the route asks for one and the stream is between events, else the connection
is cut: a truncated response is the only honest signal.

At shutdown, a stream still running when ``server.shutdown_grace_seconds`` is over is
ended by the gateway (:class:`OpenStreams`): its upstream read is cancelled and, between
events on the public API, the answer ends with a ``shutting_down`` ``error`` event that
tells the client to retry on a new connection (counted as ``shutting_down``); else it is
cut (``truncated``). A stream whose upstream has sent its ``done`` event (the whole reply)
but not ended its body just ends (``completed``), at shutdown as on an upstream failure
(still counted as one): the client must not send it again.
"""

from __future__ import annotations

import asyncio
import re
import time

import orjson
import structlog
from aiohttp import web

from gateway.errors import ProblemError
from gateway.observability.metrics import StreamOutcome
from gateway.upstream import UpstreamResponse, error_reason
from gateway.web.overload import stream_began
from gateway.web.state import REQUEST_STARTED, SERVICES

EVENT_STREAM = "text/event-stream"
#: what the final event of a stream ended by shutdown asks of the client: retry after this
#: many seconds, on a new connection (another replica)
SHUTDOWN_RETRY_SECONDS = 1
SHUTTING_DOWN_EVENT = (
    b"event: error\nretry: %d\ndata: " % (SHUTDOWN_RETRY_SECONDS * 1000)
    + orjson.dumps(
        {
            "code": "shutting_down",
            "detail": "the gateway is shutting down: retry on a new connection",
            "retry_after": SHUTDOWN_RETRY_SECONDS,
        }
    )
    + b"\n\n"
)
#: how the bytes relayed so far may end when the last event is complete: two line ends
#: in a row (SSE lines end with LF, CRLF or CR), the second one a blank line
EVENT_ENDS = (b"\n\n", b"\r\r", b"\n\r", b"\n\r\n", b"\r\r\n")
#: the field line of the upstream's ``done`` event, its last (the whole reply); a line
#: starts after a line end (a field's value holds none)
DONE_LINE = re.compile(rb"[\r\n]event: ?done[\r\n]")
#: the relayed bytes kept to find the above across chunks
RECENT_BYTES = 16
log = structlog.get_logger("gateway")


def between_events(tail: bytes) -> bool:
    """Whether a stream whose last relayed bytes (3 or more) are ``tail`` (``b"\\n\\n"``
    before the first) stands between events, where an event of the gateway's own may follow. A line
    that has ended (``data: ...\\r\\n``) is not an event that has: what followed it would
    be glued to the upstream's half event."""
    return tail.endswith(EVENT_ENDS)


class OpenStreams:
    """The event streams being relayed through one listener, which ends them when its
    shutdown grace is over (:meth:`end`): each relay's upstream read (or its write to a
    slow client) is interrupted at once and the relay ends its answer. A stream that
    starts after that ends at once too."""

    def __init__(self) -> None:
        self._open: dict[asyncio.Timeout, web.BaseRequest] = {}
        self.ended = False

    def add(self, scope: asyncio.Timeout, request: web.BaseRequest) -> None:
        self._open[scope] = request
        if self.ended:
            scope.reschedule(asyncio.get_running_loop().time())

    def discard(self, scope: asyncio.Timeout) -> None:
        self._open.pop(scope, None)

    def end(self) -> set[asyncio.Task[None]]:
        """End every open stream; the connection tasks that serve them."""
        self.ended = True
        now = asyncio.get_running_loop().time()
        for scope in self._open:
            scope.reschedule(now)
        return {request.task for request in self._open.values()}


OPEN_STREAMS = web.AppKey("open_streams", OpenStreams)


def _forget_cancelled_write(request: web.BaseRequest) -> None:
    """After the listener interrupted a write waiting for a slow client: aiohttp keeps the
    future that write waited on (until the client reads again) and every later write
    would await it and be 'cancelled' at once, so the final event would count the client
    as gone. Forget it: the final event waits for the client like any write (the
    listener bounds that wait, END_SECONDS)."""
    protocol = request.protocol
    waiter = protocol._drain_waiter
    if waiter is not None and waiter.cancelled():
        protocol._drain_waiter = None


def response_for(
    request: web.Request, upstream: UpstreamResponse, limits: dict[str, str]
) -> web.StreamResponse:
    """The client's response, not prepared yet: the upstream's status and the headers
    clients may see, the RateLimit headers, and no proxy buffering for a stream."""
    relayable = request.app[SERVICES].upstream.relayable(upstream.headers)
    out = web.StreamResponse(status=upstream.status, headers=relayable)
    out.headers.update(limits)
    if upstream.content_type == EVENT_STREAM:
        out.headers["X-Accel-Buffering"] = "no"
    return out


async def relay(
    request: web.Request,
    upstream: UpstreamResponse,
    out: web.StreamResponse,
    *,
    operation: str,
    error_event: bool,
) -> web.StreamResponse:
    """Send ``out`` with the upstream's body (see the module docstring); ``operation``:
    the upstream operation failures are counted under; ``error_event``: end a stream that
    fails between events with an ``error`` event (the public API's format)."""
    if upstream.content_type != EVENT_STREAM:  # not events: an error event cannot end it
        await _send(request, upstream, out, operation, False, stream=False)
        return out
    stream_began(request)  # a stream place, not a request place (gateway.web.overload)
    metrics = request.app[SERVICES].metrics
    outcome: StreamOutcome = "client_disconnected"  # unless the relay gets further
    with metrics.stream():
        try:
            outcome = await _send(request, upstream, out, operation, error_event, stream=True)
        finally:
            metrics.stream_ended(outcome)
    return out


async def _send(
    request: web.Request,
    upstream: UpstreamResponse,
    out: web.StreamResponse,
    operation: str,
    error_event: bool,
    *,
    stream: bool,
) -> StreamOutcome:
    """Prepare ``out`` and copy the upstream's chunks as they arrive (a stream's first
    one timed); how it ended."""
    services = request.app[SERVICES]
    metrics = services.metrics
    streams = request.app.get(OPEN_STREAMS) if stream else None
    await out.prepare(request)
    recent = b"\n\n"  # the last bytes relayed (RECENT_BYTES)
    done = False  # whether the upstream's done event has been relayed
    first = stream
    try:
        async with asyncio.timeout(None) as scope:  # until the listener ends the streams
            if streams is not None:
                streams.add(scope, request)
            try:
                async for chunk in services.upstream.chunks(upstream):
                    seen = recent + chunk  # before the write: a cancelled one has been buffered
                    if error_event and not done and DONE_LINE.search(seen) is not None:
                        done = True
                    recent = seen[-RECENT_BYTES:]
                    await out.write(chunk)
                    if first:
                        first = False
                        metrics.stream_first_byte(time.perf_counter() - request[REQUEST_STARTED])
            finally:
                if streams is not None:
                    streams.discard(scope)
    except TimeoutError:
        if not scope.expired():
            raise
        _forget_cancelled_write(request)
        if error_event and between_events(recent):
            if done:  # the answer is whole: asking to send the message again would repeat it
                await out.write_eof()
                return "completed"
            await out.write(SHUTTING_DOWN_EVENT)
            await out.write_eof()
            return "shutting_down"
        if request.transport is not None:
            request.transport.close()
        return "truncated"
    except ProblemError as err:
        log.warning("upstream_stream_failed", code=err.code)
        metrics.upstream_error(operation, error_reason(err.code))
        if error_event and between_events(recent):
            if done:  # the answer is whole: the upstream failed after it (counted above)
                await out.write_eof()
                return "completed"
            event = orjson.dumps({"code": err.code, "detail": err.detail})
            await out.write(b"event: error\ndata: " + event + b"\n\n")
            await out.write_eof()
            return "upstream_error"
        if request.transport is not None:
            request.transport.close()
        return "truncated"
    await out.write_eof()
    return "completed"
