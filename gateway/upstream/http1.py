"""The builtin transport: a lean HTTP/1.1 client for one upstream origin, keep-alive
connections on asyncio protocols, responses parsed by httptools (llhttp, the parser of
Node.js).

The gateway sends every upstream request itself, to one origin, with headers it built;
it needs no URL joining, cookies, proxies, redirects or payload registry.
``aiohttp.ClientSession`` does all of that on every request, and on the reference
machine its per-request work cost more CPU than every check of the gateway together
(``make bench``, profile). What is left is here:

- a pool of at most ``max_connections`` connections; the most recently used idle one is
  reused first, idle ones older than ``idle_seconds`` are closed when seen, a connection
  the upstream closed is never reused, and callers beyond the limit wait in line;
- one request per connection at a time (no pipelining), written with one system call;
- the response's head bounded while it is read (:class:`~gateway.upstream.base.HeadLimits`:
  bytes are counted as they are fed to the parser, so an endless head is cut at the limit),
  its framing checked (:mod:`gateway.upstream.response_head`); its body as it arrives,
  read-ahead bounded by pausing the socket (``READ_AHEAD`` bytes);
- a connection is proven clean before it is used again: its answer echoed the request's
  ``X-Request-Id``, its body is complete, keep-alive, no bodiless status declared a
  length, and not one byte more came in the same read; any byte while it is idle closes
  it, and an answer on a reused connection that does not echo its request's id is refused,
  so a stray answer, whenever it comes, can never be taken for another request's;
- one abandoned mid-response is closed, which is how the upstream learns that the client
  went away;
- a ``GET`` or ``HEAD`` that meets a pooled connection the upstream has just closed, before
  any byte of an answer, is sent once more on a new connection; anything else fails
  (``UpstreamDisconnected``) rather than risk sending a chat message twice.

:meth:`Http1Pool.request` takes a deadline for the response's headers (the wait for a
connection included) and applies the connect timeout; body reads are bounded by the
caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType

import httptools
from multidict import CIMultiDict

from gateway.upstream.base import (
    RETRYABLE_METHODS,
    HeadLimits,
    HeadTooLarge,
    Origin,
    UpstreamDisconnected,
    UpstreamProtocolError,
    declared_length,
    media_type,
)
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.response_head import BODILESS_STATUSES, check_echo, check_framing

#: body bytes buffered per response before the socket is paused
READ_AHEAD = 256 * 1024
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")
_FRAMING_FIELDS = (b"content-length", b"transfer-encoding")


class _Stray(Exception):
    """The start of a message after the exchange's answer was complete."""


class Response:
    """An upstream response (:class:`~gateway.upstream.base.UpstreamResponse`)."""

    __slots__ = (
        "_chunks",
        "_complete",
        "_conn",
        "_error",
        "_size",
        "_waiter",
        "deadline",
        "headers",
        "status",
    )

    def __init__(self, status: int, headers: CIMultiDict[str], conn: _Connection) -> None:
        self.status = status
        self.headers = headers
        self._conn: _Connection | None = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.deadline: float | None = None

    @property
    def content_type(self) -> str:
        return media_type(self.headers)

    @property
    def content_length(self) -> int | None:
        return declared_length(self.headers)

    def ready(self) -> bool:
        return bool(self._chunks) or self._complete or self._error is not None

    async def read_any(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        return data

    def release(self) -> None:
        """Done with this response: an unfinished exchange's connection is closed."""
        conn, self._conn = self._conn, None
        if conn is not None:  # still attached: the body is not complete
            conn.abort()

    def __enter__(self) -> Response:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- fed by the connection -----------------------------------------------------------
    def _feed(self, data: bytes) -> bool:
        """Buffer ``data``; true when the read-ahead is full."""
        self._chunks.append(data)
        self._size += len(data)
        self._wake()
        return self._size >= READ_AHEAD

    def _finish(self) -> None:
        self._complete = True
        self._conn = None
        self._wake()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._conn = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: its socket, its parser, at most one exchange."""

    def __init__(self, pool: Http1Pool) -> None:
        self._pool = pool
        self._limits = pool.limits
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        #: exchanges begun on this connection (more than one: it was reused)
        self.exchanges = 0
        #: bytes received since the current exchange's request was sent
        self.received = 0
        self._request_id: str | None = None
        self._head_only = False
        #: reading a response head (informational ones included)
        self._in_head = False
        self._head_bytes = 0
        self._header_count = 0
        self._informational = False
        #: an informational head declared a body: the exchange's connection is not reused
        self._tainted = False
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers_waiter: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._close_delimited = False
        #: the final head proved the connection fit for another exchange once this one ends
        self._reusable = False
        #: the exchange's answer ended within the bytes being fed (keep-alive, or not)
        self._complete = False
        self._keep_alive = False
        #: body phase: bytes fed with no body byte and no message boundary in them
        self._stalled = 0
        self._progress = False
        #: closed from this side: whatever was being read is cut, not complete
        self._aborted = False

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        if self._headers_waiter is None and self._response is None:
            self.abort()  # bytes nobody asked for: this connection cannot be trusted
            return
        self.received += len(data)
        try:
            if self._in_head:
                self._feed_head(data)
            else:
                self._feed_body(data)
        except UpstreamProtocolError as exc:
            self._failed(exc)
            self.abort()
            return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            cause = exc.__context__
            if isinstance(cause, _Stray):
                self.abort()
                return
            if not isinstance(cause, UpstreamProtocolError):
                # an upgrade (101) is refused too: the gateway never asks for one
                cause = UpstreamProtocolError(f"invalid response from the upstream: {exc}")
            self._failed(cause)
            self.abort()
            return
        if self._complete:
            self._completed()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._lost(self)
        response = self._response
        if response is not None and self._close_delimited and exc is None and not self._aborted:
            self._response = None
            response._finish()  # a body without a length ends when the connection does
            return
        if self._headers_waiter is not None or response is not None:
            reason = f": {exc}" if exc else ""
            self._failed(UpstreamDisconnected(f"the upstream closed the connection{reason}"))

    # -- feeding the parser, within the limits -------------------------------------------
    def _feed_head(self, data: bytes) -> None:
        """Feed a head's bytes, never more than the head may have: past the limit with the
        head still open, the answer is refused before the parser holds any more of it."""
        room = self._limits.max_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            self._parser.feed_data(data)
            return
        self._head_bytes += room
        if room > 0:
            self._parser.feed_data(data[:room])
        if self._in_head:
            raise HeadTooLarge(f"the answer's head is longer than {self._limits.max_bytes} bytes")
        self._feed_body(data[room:])

    def _feed_body(self, data: bytes) -> None:
        """Feed body bytes. Chunk framing, extensions and trailers are not body: the
        parser holds trailers until they end, so bytes with no body in them are bounded
        like a head."""
        self._progress = False
        self._parser.feed_data(data)
        if self._progress:
            self._stalled = 0
            return
        self._stalled += len(data)
        if self._stalled > self._limits.max_bytes:
            raise HeadTooLarge(
                f"more than {self._limits.max_bytes} bytes of chunk framing or trailers"
            )

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if not self._in_head:
            # an answer nobody asked for, perhaps in the same read as the last one
            raise _Stray

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer: never relayed, never parsed for framing
        limits = self._limits
        self._header_count += 1
        if self._header_count > limits.max_headers:
            raise HeadTooLarge(f"the answer has more than {limits.max_headers} header fields")
        if len(name) + len(value) > limits.max_line:
            raise HeadTooLarge(f"a header line of the answer is longer than {limits.max_line}")
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._progress = True
        status = self._parser.get_status_code()
        raw, self._raw_headers = self._raw_headers, []
        self._header_count = 0
        if 100 <= status < 200 and status != 101:
            # 100 Continue, 103 Early Hints: the real answer follows; one that declares a
            # body leaves bytes the parser will read as a message: no reuse after this
            self._informational = True
            if any(name.lower() in _FRAMING_FIELDS for name, _ in raw):
                self._tainted = True
            return
        if status < 200:
            raise UpstreamProtocolError(f"the upstream answered {status}")
        waiter = self._headers_waiter
        if waiter is None or waiter.done():  # an answer nobody asked for (or gave up on)
            raise _Stray
        headers: CIMultiDict[str] = CIMultiDict(
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]
        )
        declares_body = check_framing(status, headers)
        proved = check_echo(
            headers,
            self._request_id,
            required=self._pool.require_echo or self.exchanges > 1,
        )
        self._reusable = proved and not declares_body and not self._tainted
        self._in_head = False
        self._headers_waiter = None
        response = self._response = Response(status, headers, self)
        self._close_delimited = (
            "Content-Length" not in headers
            and "Transfer-Encoding" not in headers  # checked: exactly chunked
            and status not in BODILESS_STATUSES
        )
        waiter.set_result(response)
        if self._head_only:
            # llhttp cannot be told that a HEAD answer has no body: the connection is not
            # reused (a connect per HEAD; the gateway sends HEAD only on private routes)
            self._response = None
            response._finish()
            self.abort()

    def on_body(self, body: bytes) -> None:
        self._progress = True
        response = self._response
        if response is not None and response._feed(body) and not self.paused:
            self.paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        self._progress = True
        if self._informational:
            self._informational = False
            return
        response, self._response = self._response, None
        if response is None:
            return
        response._finish()
        # judged once the parser is done with the bytes at hand (it forgets by then)
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()

    def _completed(self) -> None:
        """The answer ended and nothing followed it in the same read: back to the pool
        when it proved the connection clean, else closed."""
        self._complete = False
        if self.paused:
            self.resume()
        if self._reusable and self._keep_alive and not self.closed:
            self._pool._put_back(self)
        else:
            self.abort()

    # -- used by the pool and the response -----------------------------------------------
    def send(
        self, head: bytes, body: bytes | None, head_only: bool, request_id: str | None
    ) -> asyncio.Future[Response]:
        self.received = 0
        if self.closed or self.transport is None:
            raise UpstreamDisconnected("the upstream closed the connection")
        self.exchanges += 1
        self._request_id = request_id
        self._head_only = head_only
        self._in_head = True
        self._head_bytes = self._header_count = self._stalled = 0
        self._tainted = self._reusable = False
        waiter = self._headers_waiter = asyncio.get_running_loop().create_future()
        self.transport.write(head + body if body else head)
        return waiter

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        """Close now, unsent data and all (the exchange is over or abandoned)."""
        if not self.closed:
            self.closed = self._aborted = True
            if self.transport is not None:
                self.transport.abort()
            self._pool._lost(self)

    def retire(self) -> None:
        """Close, leaving the slot to the caller that holds this connection."""
        self._pool._open.discard(self)
        self.abort()

    def _failed(self, error: BaseException) -> None:
        waiter, self._headers_waiter = self._headers_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        response, self._response = self._response, None
        if response is not None:
            response._fail(error)


class Http1Pool:
    """Keep-alive connections to one origin (see the module's documentation); a
    :class:`~gateway.upstream.base.Transport`."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int,
        connect_timeout: float,
        idle_seconds: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        limits: HeadLimits | None = None,
        require_echo: bool = False,
    ) -> None:
        self.origin = Origin.parse(url)
        self.limits = limits or HeadLimits()
        #: every answer must echo its request's ``X-Request-Id`` (else only reused ones)
        self.require_echo = require_echo
        self._host_line = f"Host: {self.origin.host_header}\r\n"
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._idle_seconds = idle_seconds
        self._ssl: ssl.SSLContext | None = None
        if self.origin.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        #: slots kept for callers woken in line, who have yet to connect
        self._reserved = 0
        self._deadlines = Deadlines()
        self._closing = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        # a copy first: the admin thread reads this while the loop changes the deque
        return sum(1 for waiter in list(self._waiters) if not waiter.done())

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> Response:
        head = self._head(method, target, headers, body)
        head_only = method == "HEAD"
        conn = self._reusable()
        if conn is None:
            conn = await self._acquire_by(deadline)
        if conn.exchanges and method in RETRYABLE_METHODS:
            try:
                return await self._exchange(conn, head, body, head_only, deadline, request_id)
            except UpstreamDisconnected:
                if conn.received:
                    raise  # the upstream had begun to answer: not a stale connection
            # the pooled connection was dead before any byte of an answer (the upstream
            # closed it as it went idle): once more, on a new connection
            conn = await self._acquire_by(deadline, fresh=True)
        return await self._exchange(conn, head, body, head_only, deadline, request_id)

    async def _exchange(
        self,
        conn: _Connection,
        head: bytes,
        body: bytes | None,
        head_only: bool,
        deadline: float | None,
        request_id: str | None,
    ) -> Response:
        waiter: asyncio.Future[Response] | None = None
        try:
            waiter = conn.send(head, body, head_only, request_id)
            if deadline is None:
                return await waiter
            self._deadlines.add(waiter, deadline)
            try:
                return await waiter
            finally:
                self._deadlines.discard(waiter)
        except BaseException:
            answered = (
                waiter is not None
                and waiter.done()
                and not waiter.cancelled()
                and waiter.exception() is None
            )
            if answered and waiter is not None:
                # the answer came, then the caller was cancelled: a complete answer's
                # connection is back in the pool (perhaps already someone else's)
                waiter.result().release()
                raise
            conn.abort()  # failed, timed out or cancelled mid-exchange: never reused
            raise

    def _head(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None
    ) -> bytes:
        if not target.startswith("/") or " " in target or not target.isprintable():
            raise ValueError(f"not an origin-form request target: {target!r}")
        lines = [f"{method} {target} HTTP/1.1\r\n", self._host_line]
        for name, value in headers.items():
            for bad in _FORBIDDEN_IN_HEADERS:
                if bad in name or bad in value:
                    raise ValueError(f"header {name!r} contains a control character")
            lines.append(f"{name}: {value}\r\n")
        if body:
            lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0\r\n\r\n")
        else:
            lines.append("\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    def _reusable(self) -> _Connection | None:
        """The most recently used idle connection still fit for use, if any."""
        idle = self._idle
        if idle and not self._closing:
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < self._idle_seconds:
                    return conn
                conn.abort()
        return None

    async def _acquire_by(self, deadline: float | None, *, fresh: bool = False) -> _Connection:
        if deadline is None:
            return await self._acquire(fresh)
        async with asyncio.timeout_at(deadline):
            return await self._acquire(fresh)

    async def _acquire(self, fresh: bool = False) -> _Connection:
        """A connection: an idle one (unless ``fresh``), a new one when there is room,
        else the first one freed, in line."""
        if self._closing:
            raise UpstreamDisconnected("the upstream client is closed")
        if not fresh:
            conn = self._reusable()
            if conn is not None:
                return conn
        if not self._waiters and self._has_room():
            return await self._connect()
        while True:  # in line, first come first served
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()  # handed to us as we were cancelled: pass it on
                    if handed is None:
                        self._reserved -= 1
                        self._free_slot()
                    else:
                        self._put_back(handed)
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            if handed is None:  # a slot was kept for us
                self._reserved -= 1
                if self._closing:
                    raise UpstreamDisconnected("the upstream client is closed")
                return await self._connect()
            if not handed.closed and not fresh:
                return handed
            if not handed.closed:  # a new connection was asked for: in this one's slot
                handed.retire()
                return await self._connect()
            if self._has_room():  # the connection died on the way
                return await self._connect()

    def _has_room(self) -> bool:
        return len(self._open) + self._reserved < self._max

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(self)
        self._open.add(conn)
        origin = self.origin
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: conn,
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl else None,
                )
        except BaseException:
            conn.closed = True
            self._lost(conn)
            raise
        return conn

    def _put_back(self, conn: _Connection) -> None:
        if conn.closed or self._closing:
            conn.abort()
            return
        if self._hand_on(conn):
            return
        conn.idle_since = now = time.monotonic()
        idle = self._idle
        while idle and now - idle[0].idle_since >= self._idle_seconds:
            idle.popleft().abort()  # the oldest idle ones, on the way
        idle.append(conn)

    def _hand_on(self, conn: _Connection) -> bool:
        """Give ``conn`` to the first caller still waiting; false when nobody waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _free_slot(self) -> None:
        """A connection is gone: keep its slot for the first caller still waiting, so
        that a newcomer cannot take it first (callers in line would starve)."""
        if self._closing:
            return  # close() fails the callers in line
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._reserved += 1
                waiter.set_result(None)
                return

    def _lost(self, conn: _Connection) -> None:
        if conn not in self._open:
            return
        self._open.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        self._free_slot()

    async def close(self) -> None:
        self._closing = True
        self._deadlines.close()
        for conn in list(self._open):
            conn.abort()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamDisconnected("the upstream client is closed"))
        await asyncio.sleep(0)  # let the transports finish closing
