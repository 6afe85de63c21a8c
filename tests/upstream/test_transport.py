"""Every transport (builtin and aiohttp) against raw sockets that answer exactly the bytes
a test scripts: framing, keep-alive, limits, correlation, retries, failures, cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.upstream.base import (
    HeadLimits,
    Origin,
    RequestIdMismatch,
    RequestIdMissing,
    Transport,
    UpstreamDisconnected,
    UpstreamProtocolError,
)
from tests.support.raw_upstream import (
    Answer,
    RawConn,
    RawRequest,
    echoing,
    fixed,
    naming,
    never_answer,
    not_echoing,
    raw_server,
    response,
)
from tests.upstream.conftest import TransportFactory, aiohttp_differs

_ids = itertools.count(1)


def next_id() -> str:
    return f"req-{next(_ids)}"


async def read_all(
    transport: Transport,
    method: str = "GET",
    body: bytes | None = None,
    *,
    request_id: str | None = None,
    target: str = "/x",
) -> tuple[int, bytes]:
    request_id = request_id or next_id()
    headers = {"Accept": "application/json", "X-Request-Id": request_id}
    with await transport.request(method, target, headers, body, request_id=request_id) as resp:
        data = b""
        while chunk := await resp.read_any():
            data += chunk
        return resp.status, data


def ok(request: RawRequest, body: bytes = b"{}", **headers: str) -> bytes:
    return response(body=body, request_id=request.request_id, headers=headers)


def answering(make: Callable[[RawRequest], bytes]) -> Answer:
    """An answer writing ``make(request)``."""

    def answer(request: RawRequest, conn: RawConn) -> None:
        conn.writer.write(make(request))

    return answer


def rid(request: RawRequest) -> bytes:
    return (request.request_id or "").encode()


async def test_only_the_asked_headers_are_sent(new_transport: TransportFactory) -> None:
    async with raw_server(echoing) as server:
        transport = new_transport(server.url)
        assert await read_all(transport, "POST", b'{"a": 1}', request_id="r1") == (
            200,
            naming(server.requests[0]),
        )
    request = server.requests[0]
    assert request.method == "POST" and request.target == "/x"
    assert set(request.headers) == {"host", "accept", "x-request-id", "content-length"}
    assert request.headers["host"] == server.url.removeprefix("http://")
    assert request.body == b'{"a": 1}'


async def test_sequential_requests_share_one_keep_alive_connection(
    new_transport: TransportFactory,
) -> None:
    async with raw_server(echoing) as server:
        transport = new_transport(server.url)
        for _ in range(5):
            assert (await read_all(transport))[0] == 200
        assert (transport.open_connections, transport.idle_connections) == (1, 1)
    assert server.connections == 1


async def test_an_upstream_that_does_not_echo_gets_a_connection_per_request(
    new_transport: TransportFactory,
) -> None:
    """Without the echo nothing proves whose answer the next one on the connection is."""
    async with raw_server(not_echoing) as server:
        transport = new_transport(server.url)
        for _ in range(3):
            status, body = await read_all(transport)
            assert status == 200 and body == naming(server.requests[-1])
    assert server.connections == 3


@pytest.mark.parametrize(
    "template",
    [
        b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"5\r\nabcde\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\nTransfer-Encoding: , chunked\r\n\r\n"
        b"5\r\nabcde\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nX-Request-Id: %s\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\nContent-Length: 5\r\n\r\nabcde",
    ],
    ids=["chunked", "chunked-any-case", "empty-list-element", "204", "100-continue-first"],
)
async def test_framings_keep_the_connection(
    new_transport: TransportFactory, template: bytes
) -> None:
    def answer(request: RawRequest, conn: RawConn) -> None:
        conn.writer.write(template % (request.request_id or "").encode())

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        for _ in range(2):
            assert (await read_all(transport))[1] in (b"abcde", b"")
    assert server.connections == 1


@pytest.mark.parametrize(
    ("answer", "close", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", True, b"until the end"),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", False, b"{}"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", False, b"{}"),
    ],
    ids=["body-until-the-connection-ends", "connection-close-honoured", "http-1.0"],
)
async def test_answers_that_end_their_connection(
    new_transport: TransportFactory, answer: bytes, close: bool, body: bytes
) -> None:
    def respond(_request: RawRequest, conn: RawConn) -> None:
        conn.writer.write(answer)
        if close:  # the body ends when the server closes
            conn.writer.close()

    async with raw_server(respond) as server:
        transport = new_transport(server.url)
        for _ in range(2):
            assert await read_all(transport) == (200, body)
        await asyncio.sleep(0.05)
        assert transport.open_connections == 0
    assert server.connections == 2


async def test_head_answers_have_no_body(new_transport: TransportFactory) -> None:
    answer = answering(lambda r: ok(r).replace(b"{}", b"").replace(b": 2", b": 1000"))
    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        assert await read_all(transport, "HEAD") == (200, b"")


@pytest.mark.parametrize(
    "garbage",
    [
        b"SMTP ready\r\n\r\n",
        b'{"messages": []}\n',  # HTTP/0.9: a body and no head
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n b\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=[
        "not-http",
        "http-0.9",
        "status-2000",
        "no-status",
        "http-2",
        "bare-lf",
        "obs-fold",
        "space-in-name",
        "nul-in-value",
        "status-099",
    ],
)
async def test_garbage_is_a_protocol_error_and_the_connection_is_dropped(
    new_transport: TransportFactory,
    garbage: bytes,
    client: str,
    request: pytest.FixtureRequest,
) -> None:
    if b"\n\n" in garbage or b"\r\n b" in garbage:
        aiohttp_differs(
            client,
            request,
            "aiohttp's response parser is lenient: it takes bare LF line ends and obsolete "
            "line folding",
        )
    async with raw_server(fixed(garbage)) as server:
        transport = new_transport(server.url)
        with pytest.raises(UpstreamProtocolError):
            await read_all(transport)
        await asyncio.sleep(0.01)
        assert transport.open_connections == 0


@pytest.mark.parametrize(
    "head",
    [
        b"Transfer-Encoding: chunked\r\nContent-Length: 5",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: chunked, gzip",
        b"Transfer-Encoding: chunked, chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"Transfer-Encoding: xchunked",
        b"Transfer-Encoding: identity",
        b"Content-Length: 5\r\nContent-Length: 5",
        b"Content-Length: 5\r\nContent-Length: 6",
        b"Content-Length: 5, 5",
        b"Content-Length: -5",
        b"Content-Length: +5",
        b"Content-Length: 0x5",
        b"Content-Length: 99999999999999999999",
    ],
    ids=[
        "te-then-cl",
        "cl-then-te",
        "gzip-chunked",
        "gzip-chunked-two-lines",
        "chunked-not-last",
        "chunked-twice",
        "chunked-twice-two-lines",
        "xchunked",
        "identity",
        "duplicate-length",
        "conflicting-lengths",
        "length-list",
        "negative-length",
        "signed-length",
        "hex-length",
        "huge-length",
    ],
)
async def test_framing_is_exact(new_transport: TransportFactory, head: bytes) -> None:
    """Only ``chunked``, alone, or one plain ``Content-Length``: anything else is refused
    before a byte of the body is read."""

    def answer(request: RawRequest, conn: RawConn) -> None:
        conn.writer.write(
            b"HTTP/1.1 200 OK\r\nX-Request-Id: "
            + (request.request_id or "").encode()
            + b"\r\n"
            + head
            + b"\r\n\r\n5\r\nabcde\r\n0\r\n\r\n"
        )

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        with pytest.raises(UpstreamProtocolError):
            await read_all(transport)


async def test_a_chunk_size_overflow_is_a_protocol_error(new_transport: TransportFactory) -> None:
    answer = answering(
        lambda r: (
            b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"fffffffffffffffffff\r\nab" % rid(r)
        )
    )
    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        with pytest.raises((UpstreamProtocolError, UpstreamDisconnected)):
            await read_all(transport)


@pytest.mark.parametrize(
    "cut",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\npart1\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_a_body_cut_short_is_an_error_never_an_end(
    new_transport: TransportFactory, cut: bytes
) -> None:
    def answer(_request: RawRequest, conn: RawConn) -> None:
        conn.writer.write(cut)
        conn.writer.close()

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        with pytest.raises(UpstreamDisconnected):
            await read_all(transport)


async def test_a_body_cut_by_a_reset_is_an_error(new_transport: TransportFactory) -> None:
    async def answer(_request: RawRequest, conn: RawConn) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await asyncio.sleep(0.05)
        conn.reset()

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        with pytest.raises(UpstreamDisconnected):
            await read_all(transport)


async def test_a_refused_connection_is_an_os_error(new_transport: TransportFactory) -> None:
    async with raw_server(echoing) as server:
        url = server.url
    transport = new_transport(url)
    with pytest.raises(ConnectionRefusedError):
        await read_all(transport)
    assert transport.open_connections == 0


def held_until(release: asyncio.Event) -> Answer:
    async def answer(request: RawRequest, conn: RawConn) -> None:
        await release.wait()
        conn.writer.write(ok(request))

    return answer


async def test_callers_beyond_the_limit_wait_for_a_connection(
    new_transport: TransportFactory,
) -> None:
    release = asyncio.Event()
    async with raw_server(held_until(release)) as server:
        transport = new_transport(server.url, max_connections=2)
        calls = [asyncio.create_task(read_all(transport)) for _ in range(6)]
        for _ in range(100):
            if len(server.requests) == 2 and transport.waiting == 4:
                break
            await asyncio.sleep(0.02)
        assert transport.open_connections == 2
        assert len(server.requests) == 2  # the other four wait in the pool, not upstream
        assert transport.waiting == 4
        release.set()
        assert [await c for c in calls] == [(200, b"{}")] * 6
        assert transport.waiting == 0
    assert server.connections == 2


async def test_a_waiter_cancelled_in_line_does_not_lose_the_slot(
    new_transport: TransportFactory,
) -> None:
    release = asyncio.Event()
    async with raw_server(held_until(release)) as server:
        transport = new_transport(server.url, max_connections=1)
        first = asyncio.create_task(read_all(transport))
        await asyncio.sleep(0.05)
        doomed = asyncio.create_task(read_all(transport))
        last = asyncio.create_task(read_all(transport))
        await asyncio.sleep(0.05)
        doomed.cancel()
        release.set()
        assert await first == (200, b"{}")
        assert await asyncio.wait_for(last, 2) == (200, b"{}")
        with pytest.raises(asyncio.CancelledError):
            await doomed


async def test_abandoning_a_response_closes_its_connection(
    new_transport: TransportFactory,
) -> None:
    """How the upstream learns that a streaming client went away."""
    closed = asyncio.Event()

    async def answer(request: RawRequest, conn: RawConn) -> None:
        await conn.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Request-Id: "
            + (request.request_id or "").encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
        )
        with contextlib.suppress(ConnectionError):
            while True:
                await asyncio.sleep(0.01)
                await conn.write(b"1\r\n.\r\n")
        closed.set()

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        with await transport.request("GET", "/x", {"X-Request-Id": "s"}, request_id="s") as resp:
            assert resp.content_type == "text/event-stream"
            assert (await resp.read_any()).startswith(b"first")
        await asyncio.wait_for(closed.wait(), 2)
        await asyncio.sleep(0.01)
        assert transport.open_connections == 0


async def test_cancelled_while_waiting_for_headers_drops_the_connection(
    new_transport: TransportFactory,
) -> None:
    async with raw_server(never_answer) as server:
        transport = new_transport(server.url)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await transport.request("GET", "/x", {})
        await asyncio.sleep(0.01)
        assert transport.open_connections == 0


async def test_the_deadline_bounds_the_headers_and_the_wait_for_a_connection(
    new_transport: TransportFactory,
) -> None:
    async with raw_server(never_answer) as server:
        transport = new_transport(server.url, max_connections=1)
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(transport.request("GET", "/x", {}, deadline=loop.time() + 0.2))
        await asyncio.sleep(0.05)
        in_line = transport.request("GET", "/x", {}, deadline=loop.time() + 0.05)
        with pytest.raises(TimeoutError):
            await in_line  # never got the one connection
        with pytest.raises(TimeoutError):
            await first  # got it, but no answer
        await asyncio.sleep(0.01)
        assert transport.open_connections == 0
    assert server.connections == 1


async def test_idle_connections_expire(new_transport: TransportFactory) -> None:
    async with raw_server(echoing) as server:
        transport = new_transport(server.url, idle_seconds=0.05)
        await read_all(transport)
        await asyncio.sleep(0.2)
        await read_all(transport)
    assert server.connections == 2


async def test_a_connection_the_upstream_closed_while_idle_is_not_reused(
    new_transport: TransportFactory,
) -> None:
    def answer(request: RawRequest, conn: RawConn) -> None:
        conn.writer.write(ok(request))
        asyncio.get_running_loop().call_later(0.02, conn.writer.close)

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        await read_all(transport)
        await asyncio.sleep(0.1)
        assert transport.open_connections == 0
        assert await read_all(transport) == (200, b"{}")
    assert server.connections == 2


@pytest.mark.parametrize(
    ("name", "value"), [("X-Bad", "a\r\nInjected: yes"), ("X-Bad\nInjected", "1"), ("X", "nul\0")]
)
async def test_header_injection_is_refused_before_anything_is_sent(
    new_transport: TransportFactory, name: str, value: str
) -> None:
    async with raw_server(echoing) as server:
        transport = new_transport(server.url)
        with pytest.raises(ValueError, match="control character"):
            await transport.request("GET", "/x", {name: value})
    assert server.connections == 0


@pytest.mark.parametrize("target", ["x", "/a b", "/a\nb"])
async def test_only_origin_form_targets_are_sent(
    new_transport: TransportFactory, target: str
) -> None:
    async with raw_server(echoing) as server:
        transport = new_transport(server.url)
        with pytest.raises(ValueError, match="origin-form"):
            await transport.request("GET", target, {})
    assert server.connections == 0


# -- correlation: an answer reaches only the request it answers ------------------------------
async def test_an_echo_of_another_id_is_refused_and_closes_the_connection(
    new_transport: TransportFactory,
) -> None:
    async with raw_server(answering(lambda r: response(request_id="someone-else"))) as server:
        transport = new_transport(server.url)
        with pytest.raises(RequestIdMismatch):
            await read_all(transport)
        await asyncio.sleep(0.01)
        assert transport.open_connections == 0


@pytest.mark.parametrize("echoes", ["r1\r\nX-Request-Id: r1", "r1, r1", "R1", "r1x", "r"])
async def test_only_one_exact_echo_proves_an_answer(
    new_transport: TransportFactory, echoes: str
) -> None:
    async with raw_server(fixed(response(request_id=echoes))) as server:
        transport = new_transport(server.url)
        with pytest.raises(RequestIdMismatch):
            await read_all(transport, request_id="r1")


async def test_a_late_stray_answer_never_reaches_the_next_request(
    new_transport: TransportFactory,
) -> None:
    """The upstream answers the first request twice, the second time just as the next
    request arrives on the same connection: that request is refused, never given the
    first one's answer, and the connection is closed."""

    first: list[bytes] = []

    def answer(request: RawRequest, conn: RawConn) -> None:
        answer_bytes = response(body=naming(request), request_id=request.request_id)
        if conn.exchanges == 1:
            first.append(answer_bytes)
            conn.writer.write(answer_bytes)
        else:  # the stray first, then the real answer
            conn.writer.write(first[0] + answer_bytes)

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        assert (await read_all(transport, request_id="one"))[0] == 200
        with pytest.raises(RequestIdMismatch):
            await read_all(transport, request_id="two")
        assert b'"three"' in (await read_all(transport, request_id="three"))[1]
    assert server.connections == 2


async def test_a_late_stray_without_echo_never_reaches_the_next_request(
    new_transport: TransportFactory,
) -> None:
    """The same upstream without the echo: its connections are never reused, so the
    stray has nobody to reach."""
    first: list[bytes] = []

    def answer(request: RawRequest, conn: RawConn) -> None:
        answer_bytes = response(body=naming(request))
        if not first:
            first.append(answer_bytes)
        conn.writer.write(answer_bytes if conn.exchanges == 1 else first[0] + answer_bytes)

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        for request_id in ("one", "two", "three"):
            status, body = await read_all(transport, request_id=request_id)
            assert status == 200 and f'"{request_id}"'.encode() in body
    assert server.connections == 3


async def test_an_answer_on_a_reused_connection_must_echo(
    new_transport: TransportFactory,
) -> None:
    def answer(request: RawRequest, conn: RawConn) -> None:
        echo = request.request_id if conn.exchanges == 1 else None
        conn.writer.write(response(body=naming(request), request_id=echo))

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        await read_all(transport)
        with pytest.raises(RequestIdMissing):
            await read_all(transport)


async def test_the_echo_can_be_required(new_transport: TransportFactory) -> None:
    async with raw_server(not_echoing) as server:
        transport = new_transport(server.url, require_echo=True)
        with pytest.raises(RequestIdMissing):
            await read_all(transport)


@pytest.mark.parametrize(
    "extra",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n",  # the start of a stray answer
        b"x",  # bytes past Content-Length
    ],
    ids=["stray-head", "past-length"],
)
async def test_bytes_after_a_complete_answer_close_the_connection(
    new_transport: TransportFactory, extra: bytes, client: str, request: pytest.FixtureRequest
) -> None:
    if extra.startswith(b"HTTP"):
        aiohttp_differs(
            client,
            request,
            "aiohttp's parser holds the start of a message that follows a complete answer "
            "in the same read, and drops it when the connection is reused, rather than "
            "closing the connection (never delivered: the next answer is parsed afresh)",
        )
    async with raw_server(answering(lambda r: ok(r) + extra)) as server:
        transport = new_transport(server.url)
        for _ in range(2):  # the second on a new connection, never a spliced answer
            if client == "aiohttp" and not extra.startswith(b"HTTP"):
                # aiohttp's parser fails the whole read, the complete answer in it included
                with pytest.raises(UpstreamProtocolError):
                    await read_all(transport)
            else:
                assert await read_all(transport) == (200, b"{}")
            await asyncio.sleep(0.02)
    assert server.connections == 2


async def test_bytes_while_idle_close_the_connection(new_transport: TransportFactory) -> None:
    async def answer(request: RawRequest, conn: RawConn) -> None:
        await conn.write(ok(request))
        await asyncio.sleep(0.05)
        await conn.write(ok(request))  # unasked, while the connection waits in the pool

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        assert await read_all(transport) == (200, b"{}")
        for _ in range(100):
            if transport.open_connections == 0:
                break
            await asyncio.sleep(0.02)
        assert transport.open_connections == 0
        assert await read_all(transport) == (200, b"{}")
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\nX-Request-Id: %s\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nX-Request-Id: %s\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["204", "304", "100"],
)
async def test_bodiless_statuses_that_declare_a_length_are_not_kept_alive(
    new_transport: TransportFactory, answer: bytes
) -> None:
    def respond(request: RawRequest, conn: RawConn) -> None:
        conn.writer.write(answer % (request.request_id or "").encode())

    async with raw_server(respond) as server:
        transport = new_transport(server.url)
        for _ in range(2):
            assert (await read_all(transport))[1] == b""
    assert server.connections == 2


# -- limits on the head, enforced while it is read ----------------------------------------
SMALL = HeadLimits(max_bytes=4096, max_line=1024, max_headers=16)


@pytest.mark.parametrize(
    "headers",
    [
        b"X-Big: " + b"a" * 2000 + b"\r\n",
        b"".join(b"X-%d: 1\r\n" % i for i in range(17)),
        b"".join(b"X-%d: %s\r\n" % (i, b"b" * 500) for i in range(10)),
    ],
    ids=["line", "count", "total"],
)
async def test_a_head_past_the_limits_is_refused(
    new_transport: TransportFactory, headers: bytes
) -> None:
    answer = answering(
        lambda r: (
            b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\n%sContent-Length: 0\r\n\r\n"
            % (rid(r), headers)
        )
    )
    async with raw_server(answer) as server:
        transport = new_transport(server.url, limits=SMALL)
        with pytest.raises(UpstreamProtocolError):
            await read_all(transport)


async def test_a_head_within_the_limits_is_taken(new_transport: TransportFactory) -> None:
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"b" * 200) for i in range(12))
    answer = answering(
        lambda r: (
            b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\n%sContent-Length: 2\r\n\r\n{}"
            % (rid(r), headers)
        )
    )
    async with raw_server(answer) as server:
        transport = new_transport(server.url, limits=SMALL)
        assert await read_all(transport) == (200, b"{}")


@pytest.mark.parametrize("unit", [b"X-A: b\r\n", b"a" * 1000], ids=["fields", "one-line"])
async def test_an_endless_head_is_cut(new_transport: TransportFactory, unit: bytes) -> None:
    sent = 0

    async def answer(_request: RawRequest, conn: RawConn) -> None:
        nonlocal sent
        await conn.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        with contextlib.suppress(ConnectionError):
            while True:
                await conn.write(unit * 64)
                sent += len(unit) * 64

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        with pytest.raises(UpstreamProtocolError):
            async with asyncio.timeout(10):
                await read_all(transport)
    assert sent < 64 * 1024 * 1024  # cut long before, whatever the socket buffers held


async def test_an_informational_flood_is_cut(new_transport: TransportFactory) -> None:
    async def answer(_request: RawRequest, conn: RawConn) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await conn.write(b"HTTP/1.1 100 Continue\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n" * 1)

    async with raw_server(answer) as server:
        transport = new_transport(server.url, limits=SMALL)
        deadline = asyncio.get_running_loop().time() + 3
        with pytest.raises((UpstreamProtocolError, TimeoutError)):
            await transport.request("GET", "/x", {}, deadline=deadline)


async def test_trailers_never_reach_the_next_answer(new_transport: TransportFactory) -> None:
    def answer(request: RawRequest, conn: RawConn) -> None:
        conn.writer.write(
            b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\nX-Trailer: leaked\r\nContent-Type: text/html\r\n\r\n"
            % (request.request_id or "").encode()
        )

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        for _ in range(2):
            with await transport.request(
                "GET", "/x", {"X-Request-Id": "t"}, request_id="t"
            ) as resp:
                assert "X-Trailer" not in resp.headers
                assert "Content-Type" not in resp.headers
                while await resp.read_any():
                    pass


async def test_endless_trailers_are_cut(new_transport: TransportFactory) -> None:
    async def answer(request: RawRequest, conn: RawConn) -> None:
        await conn.write(
            b"HTTP/1.1 200 OK\r\nX-Request-Id: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\nX-Trailer: " % (request.request_id or "").encode()
        )
        with contextlib.suppress(ConnectionError):
            while True:
                await conn.write(b"t" * 4096)

    async with raw_server(answer) as server:
        transport = new_transport(server.url, limits=SMALL)
        with pytest.raises((UpstreamProtocolError, UpstreamDisconnected)):
            async with asyncio.timeout(10):
                await read_all(transport, request_id="t")


# -- a pooled connection the upstream has closed -------------------------------------------
def closes_second_request(request: RawRequest, conn: RawConn) -> None:
    """Answers the first request of a connection; closes it, unanswered, on the second:
    what a request meets when it reuses a connection the upstream closed as it went idle."""
    if conn.exchanges == 1:
        conn.writer.write(ok(request))
    else:
        conn.writer.close()


async def test_a_get_on_a_dead_pooled_connection_is_sent_once_more(
    new_transport: TransportFactory,
) -> None:
    async with raw_server(closes_second_request) as server:
        transport = new_transport(server.url)
        assert await read_all(transport) == (200, b"{}")
        assert await read_all(transport, "GET") == (200, b"{}")
    assert [r.method for r in server.requests] == ["GET", "GET", "GET"]
    assert server.connections == 2


async def test_a_post_on_a_dead_pooled_connection_is_never_sent_twice(
    new_transport: TransportFactory,
) -> None:
    async with raw_server(closes_second_request) as server:
        transport = new_transport(server.url)
        assert await read_all(transport, "POST", b"1") == (200, b"{}")
        with pytest.raises(UpstreamDisconnected):
            await read_all(transport, "POST", b"2")
    assert [r.body for r in server.requests] == [b"1", b"2"]


async def test_a_get_whose_answer_had_begun_is_not_sent_again(
    new_transport: TransportFactory, client: str, request: pytest.FixtureRequest
) -> None:
    aiohttp_differs(
        client,
        request,
        "aiohttp sends a GET once more whenever its connection fails before the answer's "
        "head is complete, even after bytes of it came",
    )

    def answer(request: RawRequest, conn: RawConn) -> None:
        if conn.exchanges == 1:
            conn.writer.write(ok(request))
        else:
            conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
            conn.writer.close()

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        await read_all(transport)
        with pytest.raises((UpstreamDisconnected, UpstreamProtocolError)):
            await read_all(transport)
    assert len(server.requests) == 2


# -- the rest of the pool's life -------------------------------------------------------------
async def test_the_start_of_a_stray_answer_after_a_complete_one_is_not_kept(
    new_transport: TransportFactory, client: str, request: pytest.FixtureRequest
) -> None:
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n"
    aiohttp_differs(
        client,
        request,
        "aiohttp's parser holds the start of a message that follows a complete answer in "
        "the same read, and drops it when the connection is reused",
    )
    async with raw_server(answering(lambda r: ok(r) + stray)) as server:
        transport = new_transport(server.url)
        assert await read_all(transport) == (200, b"{}")
        assert await read_all(transport) == (200, b"{}")
    assert server.connections == 2


async def test_closing_the_pool_cuts_a_body_without_length(
    new_transport: TransportFactory,
) -> None:
    async def answer(_request: RawRequest, conn: RawConn) -> None:
        await conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart-1 ")
        await asyncio.sleep(10)

    async with raw_server(answer) as server:
        transport = new_transport(server.url)
        with await transport.request("GET", "/x", {}) as resp:
            assert await resp.read_any() == b"part-1 "
            await transport.close()
            with pytest.raises(UpstreamDisconnected):
                await resp.read_any()


async def test_an_upgrade_is_refused_as_a_protocol_error(new_transport: TransportFactory) -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
    async with raw_server(fixed(upgrade)) as server:
        transport = new_transport(server.url)
        with pytest.raises(UpstreamProtocolError):
            await read_all(transport)


def test_origins() -> None:
    assert Origin.parse("http://backend:8081/").host_header == "backend:8081"
    assert Origin.parse("https://chat.example").port == 443
    assert Origin.parse("https://chat.example").host_header == "chat.example"
    assert Origin.parse("http://[::1]:9000").host_header == "[::1]:9000"
    assert Origin.parse("http://[::1]:9000").url == "http://[::1]:9000"
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


async def test_https_upstreams_are_verified(
    new_transport: TransportFactory, tmp_path: Path
) -> None:
    server_ctx, client_ctx = self_signed(tmp_path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_id = next(
                    line.split(b":", 1)[1].strip()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"x-request-id:")
                )
                writer.write(response(request_id=request_id.decode()))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        trusting = new_transport(f"https://localhost:{port}", ssl_context=client_ctx)
        assert await read_all(trusting) == (200, b"{}")
        assert await read_all(trusting) == (200, b"{}")
        assert trusting.open_connections == 1
        default = new_transport(f"https://localhost:{port}")  # the system's CAs: not this one
        with pytest.raises(ssl.SSLCertVerificationError):
            await read_all(default)
    finally:
        server.close()


async def test_closing_fails_every_caller(new_transport: TransportFactory, client: str) -> None:
    async with raw_server(never_answer) as server:
        transport = new_transport(server.url, max_connections=1)
        loop = asyncio.get_running_loop()
        sent = asyncio.create_task(transport.request("GET", "/a", {}, deadline=loop.time() + 5))
        await asyncio.sleep(0.05)
        in_line = asyncio.create_task(transport.request("GET", "/b", {}, deadline=loop.time() + 5))
        await asyncio.sleep(0.05)
        await transport.close()
        for task in (sent, in_line):
            with pytest.raises(OSError, match="closed"):
                await asyncio.wait_for(task, 2)
        assert transport.open_connections == 0
    if client == "builtin":  # aiohttp lets the caller in line connect as it closes
        assert server.connections == 1
