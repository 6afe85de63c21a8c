"""The listener's shutdown (``ListenerServer.shutdown``) with streams in flight: the grace
is a deadline, not a wait; past it a stream between events gets the ``shutting_down``
event, one cut mid-event is closed, and the upstream call is cancelled either way.
tests/e2e/test_shutdown.py checks the same with `gateway serve` and signals."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from gateway.web.listener import ListenerServer
from gateway.web.relay import SHUTDOWN_RETRY_SECONDS, SHUTTING_DOWN_EVENT
from tests.support.harness import SEND_URL, Gateway
from tests.support.upstreams import Script

GRACE = 1.0
#: within the grace and well short of aiohttp's own shutdown, which waited it twice
BOUND = GRACE + 0.6


def sse(delta: str) -> bytes:
    return b'data: {"delta": "%s"}\n\n' % delta.encode()


async def shut_down(gw: Gateway, grace: float) -> float:
    """What ``ListenerRunner.cleanup`` does once the listening socket is closed: idle
    connections closed, then the grace; how long that took."""
    runner = gw.server.runner
    assert runner is not None and isinstance(runner.server, ListenerServer)
    started = time.monotonic()
    runner.server.pre_shutdown()
    await runner.server.shutdown(grace)
    return time.monotonic() - started


class Stream:
    """A streamed answer read in a task: its raw body, whether it ended cleanly."""

    def __init__(self, gw: Gateway, token: str) -> None:
        self.gw, self.token = gw, token
        self.body = b""
        self.first = asyncio.Event()
        self.error: Exception | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        body = {"client_token": self.token, "message": "hi", "stream": True}
        try:
            async with (
                httpx.AsyncClient(timeout=10) as client,
                client.stream("POST", self.gw.url + SEND_URL, json=body) as resp,
            ):
                async for chunk in resp.aiter_raw():
                    self.body += chunk
                    self.first.set()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.first.set()


async def start_stream(gateway_factory: Any, url: str) -> tuple[Gateway, Stream]:
    gw: Gateway = await gateway_factory(upstream={"url": url})
    stream = Stream(gw, await gw.new_token())
    await asyncio.wait_for(stream.first.wait(), 5)
    return gw, stream


async def test_a_stream_past_the_grace_ends_with_the_shutting_down_event(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.chunks = [(0.05, sse(str(i))) for i in range(2000)]  # about 100 s
    gw, stream = await start_stream(gateway_factory, url)
    took = await shut_down(gw, GRACE)
    await asyncio.wait_for(stream.task, 5)

    assert GRACE <= took < BOUND, took
    assert stream.error is None
    *deltas, last = stream.body.decode().rstrip("\n").split("\n\n")
    assert len(deltas) >= 3 and all(d.startswith("data: ") for d in deltas)
    head, retry, data = last.split("\n")
    assert head == "event: error" and retry == f"retry: {SHUTDOWN_RETRY_SECONDS * 1000}"
    assert json.loads(data.removeprefix("data: "))["code"] == "shutting_down"
    await asyncio.wait_for(script.cancelled.wait(), 2)  # the upstream call was cancelled
    assert gw.sample("gateway_streams_total", outcome="shutting_down") == 1
    assert gw.sample("gateway_streams_in_flight") == 0


async def test_a_stream_cut_mid_event_at_the_end_of_the_grace_is_closed(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.chunks = [(0, sse("a")), (0, b'data: {"delta": "par'), (30, b'tial"}\n\n')]
    gw, stream = await start_stream(gateway_factory, url)
    await shut_down(gw, GRACE)
    await asyncio.wait_for(stream.task, 5)

    assert isinstance(stream.error, httpx.RemoteProtocolError)  # no final chunk: cut
    assert b"shutting_down" not in stream.body
    await asyncio.wait_for(script.cancelled.wait(), 2)
    assert gw.sample("gateway_streams_total", outcome="truncated") == 1


@pytest.mark.parametrize(
    ("first", "partial"),
    [
        (b'data: {"delta": "a"}\r\n\r\n', b'data: {"delta": "b"}\r\n'),
        (b'data: {"delta": "a"}\r\r', b'data: {"delta": "b"}\r'),
    ],
    ids=["crlf", "cr"],
)
async def test_a_stream_cut_after_a_line_but_before_its_blank_line_is_closed(
    gateway_factory: Any, scripted: tuple[Script, str], first: bytes, partial: bytes
) -> None:
    """SSE lines may end with CRLF or CR: a line that has ended is not an event that has,
    and the final event written after it would be glued to the upstream's half event."""
    script, url = scripted
    script.chunks = [(0, first), (0.05, partial), (30, b"\r\n")]
    gw, stream = await start_stream(gateway_factory, url)
    await asyncio.sleep(0.3)  # the half event has been relayed
    await shut_down(gw, GRACE)
    await asyncio.wait_for(stream.task, 5)

    assert isinstance(stream.error, httpx.RemoteProtocolError), stream.body  # cut
    assert b"shutting_down" not in stream.body
    assert gw.sample("gateway_streams_total", outcome="truncated") == 1


@pytest.mark.parametrize("end", [b"\r\n", b"\r"], ids=["crlf", "cr"])
async def test_a_stream_between_events_ends_with_the_shutting_down_event_whatever_its_line_ends(
    gateway_factory: Any, scripted: tuple[Script, str], end: bytes
) -> None:
    script, url = scripted
    script.chunks = [(0.05, b'data: {"delta": "%d"}%s%s' % (i, end, end)) for i in range(2000)]
    gw, stream = await start_stream(gateway_factory, url)
    await shut_down(gw, GRACE)
    await asyncio.wait_for(stream.task, 5)

    assert stream.error is None
    body = stream.body.decode().replace(end.decode(), "\n")
    *deltas, last = body.rstrip("\n").split("\n\n")
    assert deltas and all(d.startswith("data: ") for d in deltas)
    assert last.startswith("event: error\n")
    assert gw.sample("gateway_streams_total", outcome="shutting_down") == 1


@pytest.mark.parametrize(
    "done",
    [
        b"event: done\ndata: {}\n\n",
        b"id: 7\r\nevent:done\r\ndata: {}\r\n\r\n",
    ],
    ids=["lf", "crlf-id"],
)
async def test_a_stream_past_its_done_event_ends_without_an_event_of_the_gateway(
    gateway_factory: Any, scripted: tuple[Script, str], done: bytes
) -> None:
    """The upstream sent its final ``done`` event (the whole reply) but has not ended its
    body when the grace is over: the answer is complete, so it ends cleanly. A
    ``shutting_down`` event after it would ask the client to send the message again."""
    script, url = scripted
    script.chunks = [(0, sse("a")), (0.05, done[:9]), (0.05, done[9:]), (30, sse("late"))]
    gw, stream = await start_stream(gateway_factory, url)
    await asyncio.sleep(0.3)  # the done event has been relayed
    await shut_down(gw, GRACE)
    await asyncio.wait_for(stream.task, 5)

    assert stream.error is None
    assert stream.body == sse("a") + done
    await asyncio.wait_for(script.cancelled.wait(), 2)
    assert gw.sample("gateway_streams_total", outcome="completed") == 1


async def test_a_client_slow_at_the_end_of_the_grace_gets_the_event_and_is_not_counted_gone(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    """The client takes nothing while the grace runs out (its answer's write is waiting
    for it), then reads again within the listener's END_SECONDS: it gets the final event
    and a clean end, and the stream counts as shutting_down with status 200. aiohttp kept
    the cancelled write's drain future, so the final event's write_eof was 'cancelled' at
    once: counted client_disconnected and logged 499 for a client still reading."""
    script, url = scripted
    event = b'data: {"delta": "' + b"x" * 60_000 + b'"}\n\n'
    script.chunks = [(0.001, event) for _ in range(3000)]  # more than the buffers hold
    gw: Gateway = await gateway_factory(upstream={"url": url})
    token = await gw.new_token()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert gw.server.port is not None
    client.connect(("127.0.0.1", gw.server.port))
    client.setblocking(False)
    body = json.dumps({"client_token": token, "message": "hi", "stream": True}).encode()
    head = (
        f"POST {SEND_URL} HTTP/1.1\r\nHost: gw\r\nUser-Agent: {gw.user_agent}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    client.sendall(head.encode() + body)
    loop = asyncio.get_running_loop()

    async def read_late() -> bytes:
        await asyncio.sleep(GRACE + 0.2)  # nothing read until the grace is over
        data = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(client, 1 << 20), 5):
            data += chunk
        return data

    try:
        await asyncio.sleep(1.0)  # the buffers fill, the relay waits for the client
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as events:
            reader = asyncio.create_task(read_late())
            await shut_down(gw, GRACE)
            received = await asyncio.wait_for(reader, 10)
    finally:
        client.close()

    assert received.endswith(
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(SHUTTING_DOWN_EVENT), SHUTTING_DOWN_EVENT)
    )
    assert gw.sample("gateway_streams_total", outcome="shutting_down") == 1
    assert gw.sample("gateway_streams_total", outcome="client_disconnected") == 0
    assert gw.sample("gateway_streams_in_flight") == 0
    statuses = [e["status"] for e in events if e["event"] == "request"]
    assert statuses == [200], statuses


async def test_a_stream_that_ends_within_the_grace_is_not_waited_for_longer(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.chunks = [(0.1, sse(str(i))) for i in range(4)] + [(0, b"event: done\ndata: {}\n\n")]
    gw, stream = await start_stream(gateway_factory, url)
    took = await shut_down(gw, 10)
    await asyncio.wait_for(stream.task, 5)

    assert took < 2, took
    assert stream.error is None and stream.body.endswith(b"event: done\ndata: {}\n\n")
    assert gw.sample("gateway_streams_total", outcome="completed") == 1


async def test_a_request_past_the_grace_is_cancelled_with_its_upstream_call(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.headers_delay = 30  # the upstream never answers in time
    gw: Gateway = await gateway_factory(upstream={"url": url})
    token = await gw.new_token()
    body = {"client_token": token, "message": "hi"}
    async with httpx.AsyncClient(timeout=10) as client:
        request = asyncio.create_task(client.post(gw.url + SEND_URL, json=body))
        for _ in range(500):  # until the upstream has the request
            if script.seen_headers:
                break
            await asyncio.sleep(0.01)
        assert script.seen_headers
        took = await shut_down(gw, GRACE)
        with pytest.raises(httpx.RemoteProtocolError):
            await request
    assert GRACE <= took < BOUND, took
    await asyncio.wait_for(script.cancelled.wait(), 2)
