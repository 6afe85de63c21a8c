"""A raw HTTP/1.1 client on asyncio streams: exact bytes out, answers parsed by hand.

Clients like aiohttp or httpx refuse to send malformed requests; hostile ones do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass, field
from typing import Any

#: generous: the machine running the suite may be busy
WAIT = 10.0


@dataclass
class Answer:
    """One HTTP answer as it came off the wire."""

    version: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def problem(self) -> dict[str, Any]:
        assert self.header("Content-Type") == "application/problem+json", self.raw[:300]
        body = json.loads(self.body)
        assert isinstance(body, dict) and body["status"] == self.status
        assert set(body) == {"type", "title", "status", "detail", "code"}
        return body


class Connection:
    """One TCP connection to ``127.0.0.1:port``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, receive_buffer: int | None = None) -> Connection:
        """``receive_buffer``: the socket's receive buffer (a client that reads little)."""
        if receive_buffer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            return cls(reader, writer)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = WAIT) -> Answer:
        """Read one answer (interim ``1xx`` answers are answers too)."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            version, status, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = b""
            if "content-length" in headers:
                body = await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding") == "chunked":
                body = await self._chunked()
        return Answer(version, int(status), headers, body, head + body)

    async def _chunked(self) -> bytes:
        body = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return body
            body += chunk[:-2]

    async def closed_by_peer(self, timeout: float = WAIT) -> bytes:
        """Wait until the server closes; everything it still sent. A reset counts."""
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read()
        except ConnectionResetError:
            return b""

    async def drip(self, data: bytes, interval: float, stop: asyncio.Event) -> int:
        """Send ``data`` a byte at a time until it is all sent, ``stop`` is set or the
        server closes; the number of bytes sent."""
        sent = 0
        try:
            for byte in data:
                if stop.is_set() or self.reader.at_eof():
                    break
                self.writer.write(bytes([byte]))
                await self.writer.drain()
                sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
        except ConnectionError:
            pass
        return sent

    def close(self) -> None:
        self.writer.close()


def request(
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    """A well-formed request (``Host`` and ``Content-Length`` added when missing)."""
    fields = {"Host": "gateway.test", **(headers or {})}
    if body and "Content-Length" not in fields and "Transfer-Encoding" not in fields:
        fields["Content-Length"] = str(len(body))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + body
