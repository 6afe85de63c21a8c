"""Small HTTP/1.1 clients on raw sockets for the probes (no client library in the way)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence


def http_request(
    method: str, path: str, port: int, body: bytes = b"", headers: Sequence[str] = ()
) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers]
    if body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Connection:
    """One blocking keep-alive connection; times each exchange."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk

    def exchange(self, request: bytes, marker: bytes = b"") -> tuple[int, float, float, bytes]:
        """Status, seconds to the first byte of the answer, seconds to ``marker`` in the
        body (or to its end), and the body."""
        self.buf = b""
        started = time.perf_counter()
        self.sock.sendall(request)
        self._fill()
        first = time.perf_counter() - started
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {
            n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:])
        }
        self.buf = rest
        at_marker: float | None = None
        if "content-length" in fields:
            length = int(fields["content-length"])
            while len(self.buf) < length:
                if at_marker is None and marker and marker in self.buf:
                    at_marker = time.perf_counter() - started
                self._fill()
            body = self.buf[:length]
        else:  # chunked
            while not self.buf.endswith(b"0\r\n\r\n"):
                if at_marker is None and marker and marker in self.buf:
                    at_marker = time.perf_counter() - started
                self._fill()
            body = self.buf
        if at_marker is None:
            at_marker = time.perf_counter() - started
        return status, first, at_marker, body


async def _send_all(port: int, requests: list[bytes], concurrency: int) -> list[int]:
    from bench.pyload import read_response

    queue = list(reversed(requests))
    statuses: list[int] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue:
                writer.write(queue.pop())
                statuses.append(await read_response(reader))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def send_all(port: int, requests: list[bytes], concurrency: int = 16) -> list[int]:
    """Send every request once over ``concurrency`` connections; the statuses."""
    return asyncio.run(_send_all(port, requests, concurrency))
