"""One pipelined connection to a standalone Redis, for the script call every request makes.

redis-py takes a pooled connection per command and holds it until the reply is read; at
thousands of requests a second that bookkeeping costs more CPU than the script itself.
Here every caller writes its command on one shared connection at once and waits for its
own reply; Redis answers in order, so replies are matched to waiters first in, first
out. Replies are parsed by hiredis, error replies become ``redis.exceptions`` errors, and
a lost connection fails every waiter with ``ConnectionError`` (a ``RedisError``), as
redis-py would.

Commands written during one turn of the event loop leave in one write at its end.
Callers bound their own wait (the guarded store's deadline); a reply that arrives after
its caller gave up is read and dropped. When the oldest reply is overdue by
``stale_after`` seconds the connection is presumed dead: it is dropped, its waiters
fail, and the next call connects again.

Used for ``redis://`` and ``unix://`` URLs; TLS, Cluster and Sentinel stay on redis-py.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, ReadOnlyError, ResponseError

Arg = str | int | float | bytes
SCHEMES = ("redis", "unix")
#: hiredis's stub types its argument as a 1-tuple and its result not at all
_pack_command = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


def pack(args: Sequence[Arg]) -> bytes:
    """A command in RESP: an array of bulk strings. hiredis packs it in C (the same bytes
    as :func:`pack_slowly`, at half the cost); what hiredis refuses (booleans, other
    subclasses of int) is packed in Python."""
    try:
        return _pack_command(tuple(args))
    except TypeError:
        return pack_slowly(args)


def pack_slowly(args: Sequence[Arg]) -> bytes:
    """:func:`pack` in Python."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = hiredis.Reader(replyError=ResponseError)
        #: (reply future, time sent), in the order the commands were written
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._transport: asyncio.Transport | None = None
        #: commands written during this turn of the event loop, sent together at its end
        self._out: list[bytes] = []
        self.alive = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.alive = True

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not waiting:
                self.abort(RedisConnectionError("a reply nobody asked for"))
                return
            future = waiting.popleft()[0]
            if future.done():  # its caller gave up waiting
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(_classify(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self._fail(RedisConnectionError("the connection to Redis was lost"))

    def _fail(self, error: Exception) -> None:
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)

    def abort(self, error: Exception) -> None:
        self.alive = False
        self._out.clear()
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()

    def send(self, packed: bytes, now: float) -> asyncio.Future[Any]:
        if not self.alive or self._transport is None:
            raise RedisConnectionError("the connection to Redis is closed")
        future = self._loop.create_future()
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(packed)
        self._waiting.append((future, now))
        return future

    def _flush(self) -> None:
        """One write for every command of the loop turn: under load, one system call
        carries the script calls of many requests."""
        out, self._out = self._out, []
        if out and self.alive and self._transport is not None:
            self._transport.write(b"".join(out))

    def oldest_sent(self) -> float | None:
        return self._waiting[0][1] if self._waiting else None


#: error replies redis-py raises as their own class, by their first word (a script's
#: failing command keeps its code: "OOM command not allowed ... script: ...")
_ERROR_CLASSES: dict[str, type[ResponseError]] = {
    "NOSCRIPT": NoScriptError,
    "OOM": OutOfMemoryError,
    "READONLY": ReadOnlyError,
}


def _classify(error: ResponseError) -> ResponseError:
    message = str(error)
    kind = _ERROR_CLASSES.get(message.split(" ", 1)[0])
    return error if kind is None else kind(message)


class RedisPipe:
    """Commands to one Redis server over one pipelined connection."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 1.0,
        stale_after: float = 1.0,
        clock: Any = time.monotonic,
    ) -> None:
        self._host, self._port, self._path = host, port, path
        self._db, self._username, self._password = db, username, password
        self._connect_timeout = connect_timeout
        self._stale_after = stale_after
        self._clock = clock
        self._proto: _Protocol | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisPipe:
        scheme = urlsplit(url).scheme
        if scheme not in SCHEMES:
            raise ValueError(f"{scheme!r} URLs are served by redis-py, not the pipe")
        parts = parse_url(url)
        return cls(
            host=parts.get("host", "127.0.0.1"),
            port=int(parts.get("port", 6379)),
            path=parts.get("path"),
            db=int(parts.get("db", 0) or 0),
            username=parts.get("username"),
            password=parts.get("password"),
            **kwargs,
        )

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path:
                    _, proto = await loop.create_unix_connection(
                        lambda: _Protocol(loop), self._path
                    )
                else:
                    _, proto = await loop.create_connection(
                        lambda: _Protocol(loop), self._host, self._port
                    )
                await self._set_up(proto)
        except TimeoutError:
            raise RedisConnectionError("timed out connecting to Redis") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        return proto

    async def _set_up(self, proto: _Protocol) -> None:
        """Authenticate and select the database; a failure drops the connection."""
        setup: list[list[Arg]] = []
        if self._password:
            setup.append(["AUTH", *filter(None, [self._username, self._password])])
        if self._db:
            setup.append(["SELECT", self._db])
        try:
            for command in setup:
                await proto.send(pack(command), self._clock())
        except BaseException:
            proto.abort(RedisConnectionError("connection set-up failed"))
            raise

    def _usable(self, now: float) -> _Protocol | None:
        """The connection, when it is open and its oldest reply is not overdue."""
        proto = self._proto
        if proto is not None and proto.alive:
            oldest = proto.oldest_sent()
            if oldest is None or now - oldest <= self._stale_after:
                return proto
        return None

    async def _connection(self, now: float) -> _Protocol:
        proto = self._usable(now)
        if proto is not None:
            return proto
        if self._proto is not None and self._proto.alive:
            self._proto.abort(RedisConnectionError("Redis stopped answering"))
        async with self._lock:
            if self._proto is None or not self._proto.alive:
                self._proto = await self._connect()
            return self._proto

    async def execute(self, *args: Arg) -> Any:
        now = self._clock()
        # the usual case without awaiting _connection (a coroutine per call otherwise)
        proto = self._usable(now) or await self._connection(now)
        return await proto.send(pack(args), now)

    async def evalsha(
        self, sha: Arg, script: Arg | memoryview, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> Any:
        """``EVALSHA``; loads the script and retries once when Redis does not know it."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.execute(
                "SCRIPT", "LOAD", bytes(script) if isinstance(script, memoryview) else script
            )
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._proto is not None:
            self._proto.abort(RedisConnectionError("closed"))
            self._proto = None
