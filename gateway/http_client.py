"""A lean HTTP/1.1 client for one upstream origin: keep-alive connections on asyncio
protocols, responses parsed by httptools (llhttp, the parser of Node.js).

The gateway sends every upstream request itself, to one origin, with headers it built;
it needs no URL joining, cookies, proxies, redirects, retries or payload registry.
``aiohttp.ClientSession`` does all of that on every request, and on the reference
machine its per-request work cost more CPU than every check of the gateway together
(``make bench``, profile). What is left is here:

- a pool of at most ``max_connections`` connections; the most recently used idle one is
  reused first, idle ones older than ``idle_seconds`` are closed when seen, a connection
  the upstream closed is never reused, and callers beyond the limit wait in line;
- one request per connection at a time (no pipelining), written with one system call;
- the response's headers as soon as they are in; its body as it arrives, read-ahead
  bounded by pausing the socket (``READ_AHEAD`` bytes);
- a connection goes back to the pool when its response is complete and keep-alive,
  even before the caller reads the body; one abandoned mid-response is closed, which
  is how the upstream learns that the client went away;
- no retry, on purpose: a request that meets a connection the upstream has just closed
  fails (``UpstreamDisconnected``) rather than risk sending a chat message twice.

:meth:`Http1Pool.request` takes a deadline for the response's headers (the wait for a
connection included) and applies the connect timeout; body reads are bounded by the
caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

#: how early a loop timer may fire (uvloop rounds to whole milliseconds)
TIMER_RESOLUTION = 0.001
#: body bytes buffered per response before the socket is paused
READ_AHEAD = 256 * 1024
#: statuses whose response never has a body, whatever its headers say
_NO_BODY_STATUSES = frozenset({204, 304})
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")


class UpstreamProtocolError(Exception):
    """The upstream's bytes are not a valid HTTP/1.1 response."""


class UpstreamDisconnected(ConnectionError):
    """The connection closed before the response was complete."""


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, parts.port or default)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class Response:
    """An upstream response: status and headers now, the body as it arrives.

    Use it as a context manager (or call :meth:`release`): leaving returns a complete
    exchange's connection to the pool and closes an unfinished one."""

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
        #: loop time by which the whole body must be in, when the caller set one
        self.deadline: float | None = None

    @property
    def content_type(self) -> str:
        """The media type, lower case and without parameters (as aiohttp gives it)."""
        value = self.headers.get("Content-Type")
        if not value:
            return "application/octet-stream"
        return value.partition(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    def ready(self) -> bool:
        """True when :meth:`read_any` would not wait."""
        return bool(self._chunks) or self._complete or self._error is not None

    async def read_any(self) -> bytes:
        """Everything received and not yet read; waits when there is nothing; ``b""``
        once the body is complete. Raises the connection's failure, if it failed."""
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
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self._head_only = False
        self._informational = False
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers_waiter: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._close_delimited = False
        #: closed from this side: whatever was being read is cut, not complete
        self._aborted = False

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        if self._headers_waiter is None and self._response is None:
            self.abort()  # bytes nobody asked for: this connection cannot be trusted
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # an upgrade (101) is refused too: the gateway never asks for one
            self._failed(UpstreamProtocolError(f"invalid response from the upstream: {exc!r}"))
            self.abort()

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

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._headers_waiter is None and self._response is None:
            # an answer nobody asked for, perhaps in the same segment as the last one
            # (which has put this connection back in the pool): never reuse it
            self.abort()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        raw, self._raw_headers = self._raw_headers, []
        if status < 200:  # 100 Continue, 103 Early Hints: the real answer follows
            self._informational = True
            return
        waiter, self._headers_waiter = self._headers_waiter, None
        if waiter is None or waiter.done():  # an answer nobody asked for (or gave up on)
            self.abort()
            return
        headers: CIMultiDict[str] = CIMultiDict(
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]
        )
        response = self._response = Response(status, headers, self)
        self._close_delimited = (
            "Content-Length" not in headers
            and "chunked" not in ",".join(headers.getall("Transfer-Encoding", ())).lower()
            and status not in _NO_BODY_STATUSES
        )
        waiter.set_result(response)
        if self._head_only:
            # llhttp cannot be told that a HEAD answer has no body: the connection is not
            # reused (a connect per HEAD; the gateway sends HEAD only on private routes)
            self._response = None
            response._finish()
            self.abort()

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is not None and response._feed(body) and not self.paused:
            self.paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        response, self._response = self._response, None
        if response is None:
            return
        response._finish()
        if self.paused:
            self.resume()
        if self._parser.should_keep_alive() and not self.closed:
            self._pool._put_back(self)
        else:
            self.abort()

    # -- used by the pool and the response -----------------------------------------------
    def send(self, head: bytes, body: bytes | None, head_only: bool) -> asyncio.Future[Response]:
        if self.closed or self.transport is None:
            raise UpstreamDisconnected("the upstream closed the connection")
        self._head_only = head_only
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

    def _failed(self, error: BaseException) -> None:
        waiter, self._headers_waiter = self._headers_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        response, self._response = self._response, None
        if response is not None:
            response._fail(error)


class _Deadlines:
    """The deadlines of the requests waiting for their answer's headers, behind one timer
    set for the earliest: a timer per request (set, then cancelled) costs more than the
    rest of the wait's bookkeeping. There are at most as many as connections, and the
    timer fires about once per deadline period, so a scan of them all is cheap."""

    def __init__(self) -> None:
        self._due: dict[asyncio.Future[Response], float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def add(self, waiter: asyncio.Future[Response], due: float) -> None:
        self._due[waiter] = due
        if due < self._armed_for:
            self._arm(due)

    def discard(self, waiter: asyncio.Future[Response]) -> None:
        self._due.pop(waiter, None)

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = due
        self._timer = asyncio.get_running_loop().call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer, self._armed_for = None, math.inf
        # uvloop's timers have a resolution of a millisecond and may fire up to half of one
        # early: what is due within it is due now (else the timer would spin to the due)
        now = asyncio.get_running_loop().time() + TIMER_RESOLUTION
        earliest = math.inf
        for waiter, due in list(self._due.items()):
            if due <= now:
                del self._due[waiter]
                if not waiter.done():
                    waiter.set_exception(TimeoutError("no answer from the upstream in time"))
            elif due < earliest:
                earliest = due
        if earliest < math.inf:
            self._arm(earliest)

    def close(self) -> None:
        """No more deadlines: the pool is closing, so whoever still waits fails now."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed_for = None, math.inf
        waiting, self._due = self._due, {}
        for waiter in waiting:
            if not waiter.done():
                waiter.set_exception(UpstreamDisconnected("the upstream client is closed"))


class Http1Pool:
    """Keep-alive connections to one origin (see the module's documentation)."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int,
        connect_timeout: float,
        idle_seconds: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.origin = Origin.parse(url)
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
        self._deadlines = _Deadlines()
        self._closing = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """Callers in line for a connection (the pool is full)."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        deadline: float | None = None,
    ) -> Response:
        """Send one request; the response once its headers are in, or ``TimeoutError``
        at ``deadline`` (event-loop time; the wait for a connection included).

        ``target`` is the origin-form path and query, already percent-encoded. Header
        names and values must not contain CR, LF or NUL (``ValueError``)."""
        head = self._head(method, target, headers, body)
        conn = self._reusable()
        if conn is None:  # wait for a slot, or connect
            if deadline is None:
                conn = await self._acquire()
            else:
                async with asyncio.timeout_at(deadline):
                    conn = await self._acquire()
        waiter: asyncio.Future[Response] | None = None
        try:
            waiter = conn.send(head, body, method == "HEAD")
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

    async def _acquire(self) -> _Connection:
        if self._closing:
            raise UpstreamDisconnected("the upstream client is closed")
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
            if not handed.closed:
                return handed
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
        """Close every connection; requests still waiting for one fail."""
        self._closing = True
        self._deadlines.close()
        for conn in list(self._open):
            conn.abort()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamDisconnected("the upstream client is closed"))
        await asyncio.sleep(0)  # let the transports finish closing
