"""Upstreams on raw sockets that answer exactly the bytes a test scripts.

:class:`RawServer` reads each request's head (and its ``Content-Length`` body, unless told
not to), then calls its ``answer`` with the request and the connection; whatever the
answer writes is what the client gets, byte for byte, framing mistakes and all.
:class:`ThreadedRawServer` runs one in a thread of its own, for clients in another loop or
another process (``gateway serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class RawRequest:
    method: str
    target: str
    #: header names in lower case (the last value of a repeated one)
    headers: dict[str, str]
    body: bytes
    raw: bytes

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")

    @property
    def conversation_id(self) -> str:
        """The conversation of an upstream-contract path (``/internal/conversations/{id}/...``)."""
        parts = self.target.split("/")
        return parts[3] if len(parts) > 3 and parts[2] == "conversations" else ""

    @property
    def wants_stream(self) -> bool:
        return self.headers.get("accept") == "text/event-stream"


@dataclass(eq=False)
class RawConn:
    """One accepted connection, as an answer sees it."""

    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    #: requests read on this connection so far (1 for the first)
    exchanges: int = 0

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with a TCP reset (RST), not a FIN."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            import socket
            import struct

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Answer = Callable[[RawRequest, RawConn], Awaitable[None] | None]


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


@dataclass
class RawServer:
    answer: Answer
    #: read a request's body before answering (false: the answer reads it, or never does)
    read_bodies: bool = True
    connections: int = 0
    requests: list[RawRequest] = field(default_factory=list)
    url: str = ""
    server: asyncio.Server | None = None
    open: set[RawConn] = field(default_factory=set)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        await self.drop_connections()

    async def drop_connections(self) -> None:
        """Close every open connection (their handlers end)."""
        for conn in list(self.open):
            conn.writer.transport.abort()
        for _ in range(200):
            if not self.open:
                return
            await asyncio.sleep(0.01)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = RawConn(self.connections, reader, writer)
        self.open.add(conn)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, headers = parse_head(head)
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length and self.read_bodies else b""
                request = RawRequest(method, target, headers, body, head + body)
                self.requests.append(request)
                conn.exchanges += 1
                result = self.answer(request, conn)
                if asyncio.iscoroutine(result):
                    await result
                if writer.is_closing():
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self.open.discard(conn)
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(answer: Answer, *, read_bodies: bool = True) -> AsyncIterator[RawServer]:
    server = RawServer(answer, read_bodies=read_bodies)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


class ThreadedRawServer:
    """A :class:`RawServer` in a thread with its own event loop; ``answer`` may be
    swapped at any time (it is read for each request)."""

    def __init__(self, answer: Answer) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.raw = RawServer(answer)
        self.call(self.raw.start())
        self.url = self.raw.url

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def answer(self) -> Answer:
        return self.raw.answer

    @answer.setter
    def answer(self, answer: Answer) -> None:
        self.raw.answer = answer

    def drop_connections(self) -> None:
        self.call(self.raw.drop_connections())

    def close(self) -> None:
        self.call(self.raw.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# -- answers --------------------------------------------------------------------------------
def response(
    status: int = 200,
    body: bytes = b"{}",
    *,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
    length: bool = True,
) -> bytes:
    """A well-framed answer (``Content-Length``), echoing ``request_id`` when given."""
    lines = [f"HTTP/1.1 {status} X"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if request_id is not None:
        lines.append(f"X-Request-Id: {request_id}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def naming(request: RawRequest) -> bytes:
    """A body that names the request it answers (so a mix-up is visible)."""
    return json.dumps(
        {"conversation_id": request.conversation_id, "request_id": request.request_id}
    ).encode()


def echoing(request: RawRequest, conn: RawConn) -> None:
    """A good upstream: each answer names its request and echoes its id."""
    conn.writer.write(response(body=naming(request), request_id=request.request_id))


def not_echoing(request: RawRequest, conn: RawConn) -> None:
    """A well-framed upstream that does not echo ``X-Request-Id``."""
    conn.writer.write(response(body=naming(request)))


def fixed(data: bytes) -> Answer:
    def answer(_request: RawRequest, conn: RawConn) -> None:
        conn.writer.write(data)

    return answer


async def never_answer(_request: RawRequest, _conn: RawConn) -> None:
    await asyncio.sleep(10)
