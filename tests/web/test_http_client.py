"""The upstream HTTP/1.1 client against raw sockets that answer exactly the bytes a
test scripts: framing, keep-alive, the pool's limits, failures and cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.http_client import (
    READ_AHEAD,
    Http1Pool,
    Origin,
    UpstreamDisconnected,
    UpstreamProtocolError,
)


@dataclass
class RawServer:
    """Reads each request head (and a ``Content-Length`` body), then calls ``answer``
    with the request bytes; counts connections and keeps every request it saw."""

    answer: Callable[[bytes, asyncio.StreamWriter], object]
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    url: str = ""
    server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                result = self.answer(head + body, writer)
                if asyncio.iscoroutine(result):
                    await result
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(
    answer: Callable[[bytes, asyncio.StreamWriter], object],
) -> AsyncIterator[RawServer]:
    raw = RawServer(answer)
    raw.server = await asyncio.start_server(raw._handle, "127.0.0.1", 0)
    port = raw.server.sockets[0].getsockname()[1]
    raw.url = f"http://127.0.0.1:{port}"
    try:
        yield raw
    finally:
        raw.server.close()


def fixed(data: bytes) -> Callable[[bytes, asyncio.StreamWriter], None]:
    def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(data)

    return answer


def held_until(release: asyncio.Event) -> Callable[[bytes, asyncio.StreamWriter], object]:
    """Answers ``OK`` once ``release`` is set."""

    async def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(OK)

    return answer


async def never_answer(_request: bytes, _writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(10)


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def read_all(
    pool: Http1Pool, method: str = "GET", body: bytes | None = None
) -> tuple[int, bytes]:
    with await pool.request(method, "/x", {"Accept": "application/json"}, body) as resp:
        data = b""
        while chunk := await resp.read_any():
            data += chunk
        return resp.status, data


def new_pool(url: str, **kw: object) -> Http1Pool:
    return Http1Pool(
        url, max_connections=int(kw.pop("max_connections", 4)), connect_timeout=2.0, **kw
    )  # type: ignore[arg-type]


async def test_request_bytes_are_exactly_what_was_asked() -> None:
    async with raw_server(fixed(OK)) as server:
        pool = new_pool(server.url)
        assert await read_all(pool, "POST", b'{"a": 1}') == (200, b"{}")
        await pool.close()
    port = server.url.rsplit(":", 1)[1]
    assert server.requests == [
        b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n"
        b"Accept: application/json\r\nContent-Length: 8\r\n\r\n"
        b'{"a": 1}'
    ]


async def test_sequential_requests_share_one_keep_alive_connection() -> None:
    async with raw_server(fixed(OK)) as server:
        pool = new_pool(server.url)
        for _ in range(5):
            assert await read_all(pool) == (200, b"{}")
        assert (pool.open_connections, pool.idle_connections) == (1, 1)
        await pool.close()
    assert server.connections == 1


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"abcde",
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"{}"),
    ],
    ids=["chunked", "204", "100-continue-first"],
)
async def test_framings_keep_the_connection(answer: bytes, body: bytes) -> None:
    async with raw_server(fixed(answer)) as server:
        pool = new_pool(server.url)
        for _ in range(2):
            assert (await read_all(pool))[1] == body
        await pool.close()
    assert server.connections == 1


@pytest.mark.parametrize(
    ("answer", "close", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", True, b"until the end"),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", False, b"{}"),
    ],
    ids=["body-until-the-connection-ends", "connection-close-honoured"],
)
async def test_answers_that_end_their_connection(answer: bytes, close: bool, body: bytes) -> None:
    def respond(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        if close:  # the body ends when the server closes
            writer.close()

    async with raw_server(respond) as server:
        pool = new_pool(server.url)
        for _ in range(2):
            assert await read_all(pool) == (200, body)
        await asyncio.sleep(0.01)
        assert pool.open_connections == 0
        await pool.close()
    assert server.connections == 2


async def test_head_answers_have_no_body() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    async with raw_server(fixed(answer)) as server:
        pool = new_pool(server.url)
        assert await read_all(pool, "HEAD") == (200, b"")
        await pool.close()


async def test_garbage_is_a_protocol_error_and_the_connection_is_dropped() -> None:
    async with raw_server(fixed(b"SMTP ready\r\n\r\n")) as server:
        pool = new_pool(server.url)
        with pytest.raises(UpstreamProtocolError):
            await read_all(pool)
        await asyncio.sleep(0)
        assert pool.open_connections == 0
        await pool.close()


@pytest.mark.parametrize(
    "cut",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
        # Transfer-Encoding on two lines is still chunked: the cut is no end of body
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\npart1\r\n",
    ],
    ids=["content-length", "chunked-on-two-lines"],
)
async def test_a_body_cut_short_is_an_error_never_an_end(cut: bytes) -> None:
    def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(cut)
        writer.close()

    async with raw_server(answer) as server:
        pool = new_pool(server.url)
        with pytest.raises(UpstreamDisconnected):
            await read_all(pool)
        await pool.close()


async def test_a_refused_connection_is_an_os_error() -> None:
    async with raw_server(fixed(OK)) as server:
        url = server.url
    pool = new_pool(url)
    with pytest.raises(ConnectionRefusedError):
        await read_all(pool)
    assert pool.open_connections == 0
    await pool.close()


async def test_callers_beyond_the_limit_wait_for_a_connection() -> None:
    release = asyncio.Event()
    async with raw_server(held_until(release)) as server:
        pool = new_pool(server.url, max_connections=2)
        calls = [asyncio.create_task(read_all(pool)) for _ in range(6)]
        await asyncio.sleep(0.1)
        assert pool.open_connections == 2
        assert len(server.requests) == 2  # the other four wait in the pool, not upstream
        assert pool.waiting == 4
        release.set()
        assert [await c for c in calls] == [(200, b"{}")] * 6
        await pool.close()
    assert server.connections == 2


async def test_a_waiter_cancelled_in_line_does_not_lose_the_slot() -> None:
    release = asyncio.Event()
    async with raw_server(held_until(release)) as server:
        pool = new_pool(server.url, max_connections=1)
        first = asyncio.create_task(read_all(pool))
        await asyncio.sleep(0.05)
        doomed = asyncio.create_task(read_all(pool))
        last = asyncio.create_task(read_all(pool))
        await asyncio.sleep(0.05)
        doomed.cancel()
        release.set()
        assert await first == (200, b"{}")
        assert await asyncio.wait_for(last, 2) == (200, b"{}")
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await pool.close()


async def test_abandoning_a_response_closes_its_connection() -> None:
    """How the upstream learns that a streaming client went away."""
    closed = asyncio.Event()

    async def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
        )
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            while True:
                await asyncio.sleep(0.01)
                writer.write(b"1\r\n.\r\n")
                await writer.drain()
        closed.set()

    async with raw_server(answer) as server:
        pool = new_pool(server.url)
        with await pool.request("GET", "/x", {}) as resp:
            assert resp.content_type == "text/event-stream"
            assert (await resp.read_any()).startswith(b"first")
        await asyncio.wait_for(closed.wait(), 2)
        assert pool.open_connections == 0
        await pool.close()


async def test_cancelled_while_waiting_for_headers_drops_the_connection() -> None:
    async with raw_server(never_answer) as server:
        pool = new_pool(server.url)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pool.request("GET", "/x", {})
        assert pool.open_connections == 0
        await pool.close()


async def test_the_deadline_bounds_the_headers_and_the_wait_for_a_connection() -> None:
    async with raw_server(never_answer) as server:
        pool = new_pool(server.url, max_connections=1)
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(pool.request("GET", "/x", {}, deadline=loop.time() + 0.1))
        await asyncio.sleep(0.02)
        in_line = pool.request("GET", "/x", {}, deadline=loop.time() + 0.03)
        with pytest.raises(TimeoutError):
            await in_line  # never got the one connection
        with pytest.raises(TimeoutError):
            await first  # got it, but no answer
        assert pool.open_connections == 0
        await pool.close()
    assert server.connections == 1


async def test_each_request_keeps_its_own_deadline() -> None:
    """One timer serves every deadline: a later request with an earlier deadline times
    out first, the earlier one still at its own, and an answer in time is untouched."""

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        if request.startswith(b"GET /fast"):
            writer.write(OK)
        else:
            await asyncio.sleep(10)

    async with raw_server(answer) as server:
        pool = new_pool(server.url, max_connections=3)
        loop = asyncio.get_running_loop()
        slow = asyncio.create_task(pool.request("GET", "/a", {}, deadline=loop.time() + 0.3))
        await asyncio.sleep(0.01)
        quick = asyncio.create_task(pool.request("GET", "/b", {}, deadline=loop.time() + 0.05))
        fast = await pool.request("GET", "/fast", {}, deadline=loop.time() + 0.02)
        with fast:
            assert fast.status == 200
        done, _ = await asyncio.wait({slow, quick}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {quick}
        for task in (quick, slow):
            with pytest.raises(TimeoutError):
                await task
        await pool.close()


async def test_read_ahead_is_bounded_by_pausing_the_socket() -> None:
    size = READ_AHEAD * 8

    def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size)

    async with raw_server(answer) as server:
        pool = new_pool(server.url)
        with await pool.request("GET", "/x", {}) as resp:
            await asyncio.sleep(0.2)  # the server has written everything it could
            assert resp._size < READ_AHEAD * 2  # the rest waits in the kernel's buffers
            total = 0
            while chunk := await resp.read_any():
                total += len(chunk)
            assert total == size
        assert await read_all(pool) == (200, b"x" * size)  # resumed, then reused
        await pool.close()
    assert server.connections == 1


async def test_idle_connections_expire() -> None:
    async with raw_server(fixed(OK)) as server:
        pool = new_pool(server.url, idle_seconds=0.05)
        await read_all(pool)
        await asyncio.sleep(0.1)
        await read_all(pool)
        await pool.close()
    assert server.connections == 2


async def test_a_connection_the_upstream_closed_while_idle_is_not_reused() -> None:
    def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        asyncio.get_running_loop().call_later(0.02, writer.close)

    async with raw_server(answer) as server:
        pool = new_pool(server.url)
        await read_all(pool)
        await asyncio.sleep(0.1)
        assert pool.open_connections == 0
        assert await read_all(pool) == (200, b"{}")
        await pool.close()
    assert server.connections == 2


@pytest.mark.parametrize(
    ("name", "value"), [("X-Bad", "a\r\nInjected: yes"), ("X-Bad\nInjected", "1"), ("X", "nul\0")]
)
async def test_header_injection_is_refused_before_anything_is_sent(name: str, value: str) -> None:
    async with raw_server(fixed(OK)) as server:
        pool = new_pool(server.url)
        with pytest.raises(ValueError, match="control character"):
            await pool.request("GET", "/x", {name: value})
        await pool.close()
    assert server.connections == 0


async def test_an_answer_nobody_asked_for_closes_the_connection() -> None:
    def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK + OK)  # one request, two answers

    async with raw_server(answer) as server:
        pool = new_pool(server.url)
        assert await read_all(pool) == (200, b"{}")
        await asyncio.sleep(0.05)
        assert await read_all(pool) == (200, b"{}")  # on a new connection
        await pool.close()
    assert server.connections == 2


def test_origins() -> None:
    assert Origin.parse("http://backend:8081/").host_header == "backend:8081"
    assert Origin.parse("https://chat.example").port == 443
    assert Origin.parse("https://chat.example").host_header == "chat.example"
    assert Origin.parse("http://[::1]:9000").host_header == "[::1]:9000"
    with pytest.raises(ValueError, match="origin"):
        Origin.parse("ftp://x")


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for ``localhost`` and a client context that trusts only it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


async def test_https_upstreams_are_verified(tmp_path: Path) -> None:
    server_ctx, client_ctx = self_signed(tmp_path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(OK)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        trusting = new_pool(f"https://localhost:{port}", ssl_context=client_ctx)
        assert await read_all(trusting) == (200, b"{}")
        assert await read_all(trusting) == (200, b"{}")
        assert trusting.open_connections == 1
        await trusting.close()
        default = new_pool(f"https://localhost:{port}")  # the system's CAs: not this one
        with pytest.raises(ssl.SSLCertVerificationError):
            await read_all(default)
        await default.close()
    finally:
        server.close()


async def test_a_caller_cancelled_after_its_answer_came_leaves_the_connection_alone() -> None:
    """The answer is in (its connection back in the pool, perhaps already handed on), then
    the caller is cancelled before it resumes: the connection must not be closed."""
    answered = asyncio.Event()

    async def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        answered.set()

    async with raw_server(answer) as server:
        pool = new_pool(server.url, max_connections=1)
        loop = asyncio.get_running_loop()
        caller = asyncio.create_task(pool.request("GET", "/x", {}))
        await answered.wait()
        # queued now, this runs after the answer is read (same loop turn) and before the
        # caller resumes: what a client hanging up at that moment does
        loop.call_soon(caller.cancel)
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert (pool.open_connections, pool.idle_connections) == (1, 1)
        assert await read_all(pool) == (200, b"{}")
        await pool.close()
    assert server.connections == 1


async def test_callers_in_line_are_served_before_newcomers() -> None:
    """A slot freed by a closed connection is kept for the first caller in line, not
    taken by a request that arrives in the same loop turn."""

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        if request.startswith(b"GET /stream"):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
            await asyncio.sleep(10)
        writer.write(OK)

    async with raw_server(answer) as server:
        pool = new_pool(server.url, max_connections=1)
        held = await pool.request("GET", "/stream", {})
        in_line = asyncio.create_task(read_all(pool))
        await asyncio.sleep(0.05)

        async def hang_up_then_ask_again() -> tuple[int, bytes]:
            held.release()  # the client went away: its connection closes, the slot frees
            return await read_all(pool)  # and a new request comes in the same loop turn

        newcomer = asyncio.create_task(hang_up_then_ask_again())
        done, _ = await asyncio.wait({in_line, newcomer}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {in_line}
        assert await newcomer == (200, b"{}")
        await pool.close()


async def test_the_start_of_a_stray_answer_after_a_complete_one_is_not_kept() -> None:
    # one segment: a complete answer, then the beginning of another nobody asked for
    stray = OK + b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n"

    async with raw_server(fixed(stray)) as server:
        pool = new_pool(server.url)
        assert await read_all(pool) == (200, b"{}")
        assert await read_all(pool) == (200, b"{}")  # a new connection, not a spliced answer
        await pool.close()
    assert server.connections == 2


async def test_closing_the_pool_cuts_a_body_without_length() -> None:
    async def answer(_request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart-1 ")
        await asyncio.sleep(10)

    async with raw_server(answer) as server:
        pool = new_pool(server.url)
        with await pool.request("GET", "/x", {}) as resp:
            assert await resp.read_any() == b"part-1 "
            await pool.close()
            with pytest.raises(UpstreamDisconnected):
                await resp.read_any()


async def test_an_upgrade_is_refused_as_a_protocol_error() -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    async with raw_server(fixed(upgrade)) as server:
        pool = new_pool(server.url)
        with pytest.raises(UpstreamProtocolError):
            await read_all(pool)
        await pool.close()


async def test_closing_fails_every_caller_and_opens_nothing_more() -> None:
    async with raw_server(never_answer) as server:
        pool = new_pool(server.url, max_connections=1)
        loop = asyncio.get_running_loop()
        sent = asyncio.create_task(pool.request("GET", "/a", {}, deadline=loop.time() + 5))
        await asyncio.sleep(0.02)
        in_line = asyncio.create_task(pool.request("GET", "/b", {}, deadline=loop.time() + 5))
        await asyncio.sleep(0.02)
        await pool.close()
        for task in (sent, in_line):
            with pytest.raises(UpstreamDisconnected):
                await asyncio.wait_for(task, 1)
        assert pool.open_connections == 0
    assert server.connections == 1
