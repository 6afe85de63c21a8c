"""Streamed answers: order, timing (no buffering), disconnects and mid-stream failures."""

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.support.harness import SEND_URL, Gateway
from tests.support.upstreams import Script


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


async def stream_events(
    gw: Gateway, token: str, message: str = "hello", *, timeout: float = 10
) -> tuple[list[tuple[float, str, str]], httpx.Headers]:
    """(arrival time, event, data) for each event, and the response headers."""
    events = []
    async with (
        httpx.AsyncClient(timeout=timeout, headers={"User-Agent": gw.user_agent}) as client,
        aconnect_sse(
            client,
            "POST",
            gw.url + SEND_URL,
            json={"client_token": token, "message": message, "stream": True},
        ) as source,
    ):
        source.response.raise_for_status()
        async for event in source.aiter_sse():
            events.append((time.monotonic(), event.event, event.data))
        return events, source.response.headers


async def test_reference_backend_streams_word_by_word(gateway: Gateway) -> None:
    token = await gateway.new_token()
    events, headers = await stream_events(gateway, token, "one two three")
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-accel-buffering"] == "no"
    assert "no-cache" in headers["cache-control"]
    assert headers["x-request-id"]
    deltas = [json.loads(data)["delta"] for _, name, data in events if name == "message"]
    assert "".join(deltas) == "You said: one two three"
    assert len(deltas) == 5
    assert events[-1][1] == "done"
    async with gateway.messages(token) as resp:
        history = await resp.json()
    assert history["messages"][-1]["content"] == "You said: one two three"


async def test_first_event_arrives_while_the_upstream_is_still_writing(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.chunks = [(0, sse({"delta": "first"})), (1.0, sse({"delta": "second"}))]
    gw: Gateway = await gateway_factory(upstream={"url": url})
    token = await gw.new_token()
    started = time.monotonic()
    events, _ = await stream_events(gw, token)
    first_at, second_at = events[0][0], events[1][0]
    assert script.finished_at is not None
    assert first_at < script.finished_at, "the first event waited for the whole answer"
    assert first_at - started < 0.8
    assert second_at - first_at >= 0.5
    assert [json.loads(d)["delta"] for _, _, d in events] == ["first", "second"]


async def test_a_client_that_disconnects_cancels_the_upstream(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.chunks = [(0.2, sse({"delta": str(i)})) for i in range(50)]
    gw: Gateway = await gateway_factory(upstream={"url": url})
    token = await gw.new_token()
    await gw.stream_then_hang_up(token)
    await asyncio.wait_for(script.cancelled.wait(), timeout=3)
    assert script.finished_at is None
    assert len(script.chunk_sent_at) < 10


async def test_reference_backend_sees_the_cancellation(gateway: Gateway, backend: Any) -> None:
    from chat_backend.app import MODEL, STATS

    backend.app[MODEL].word_delay = 0.2  # type: ignore[attr-defined]
    token = await gateway.new_token()
    await gateway.stream_then_hang_up(token, " ".join(["w"] * 40))
    stats = backend.app[STATS]
    for _ in range(60):
        if stats.streams_cancelled:
            break
        await asyncio.sleep(0.05)
    assert stats.streams_cancelled == 1 and stats.streams_completed == 0


async def test_stream_idle_timeout_ends_with_an_error_event(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.chunks = [(0, sse({"delta": "a"})), (3.0, sse({"delta": "late"}))]
    gw: Gateway = await gateway_factory(upstream={"url": url, "timeouts": {"stream_idle": 0.5}})
    token = await gw.new_token()
    events, _ = await stream_events(gw, token)
    assert [name for _, name, _ in events] == ["message", "error"]
    assert json.loads(events[-1][2])["code"] == "upstream_timeout"


async def test_an_upstream_failing_after_its_done_event_ends_the_stream_cleanly(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    """The upstream sent its ``done`` event (the whole reply), then lingered past the idle
    timeout: the failure is counted, but the client's answer is whole and ends as it is,
    without an ``error`` event that would make it send the message again."""
    script, url = scripted
    script.chunks = [(0, sse({"delta": "a"})), (0, sse({}, "done")), (3.0, sse({"x": "late"}))]
    gw: Gateway = await gateway_factory(upstream={"url": url, "timeouts": {"stream_idle": 0.5}})
    token = await gw.new_token()
    events, _ = await stream_events(gw, token)
    assert [name for _, name, _ in events] == ["message", "done"]
    assert gw.sample("gateway_streams_total", outcome="completed") == 1
    assert (
        gw.sample("gateway_upstream_errors_total", operation="send_message", reason="timeout") == 1
    )


async def test_failure_mid_event_truncates_the_response(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.chunks = [(0, b'data: {"delta": "par'), (3.0, b'tial"}\n\n')]
    gw: Gateway = await gateway_factory(upstream={"url": url, "timeouts": {"stream_idle": 0.5}})
    token = await gw.new_token()
    with pytest.raises(httpx.RemoteProtocolError):
        await stream_events(gw, token)


@pytest.mark.parametrize(
    "partial",
    [b'data: {"delta": "b"}\r\n', b'data: {"delta": "b"}\r', b'data: {"delta": "b"}\n'],
    ids=["crlf", "cr", "lf"],
)
async def test_failure_after_a_line_but_before_the_blank_line_truncates_the_response(
    gateway_factory: Any, scripted: tuple[Script, str], partial: bytes
) -> None:
    """A line has ended but the event has not (its blank line never came): an error event
    written there would be glued to it (one event, its data the upstream's line and the
    gateway's JSON), so the answer is cut, whatever the line ending."""
    script, url = scripted
    script.chunks = [(0, b'data: {"delta": "a"}\r\n\r\n'), (0.05, partial), (3.0, b"\r\n")]
    gw: Gateway = await gateway_factory(upstream={"url": url, "timeouts": {"stream_idle": 0.5}})
    token = await gw.new_token()
    with pytest.raises(httpx.RemoteProtocolError):
        await stream_events(gw, token)
    assert gw.sample("gateway_streams_total", outcome="truncated") == 1


async def test_a_stream_that_never_ends_is_ended_at_its_longest_duration(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    """One event every 0.1 s, never idle for long, for a minute: cut after stream_max
    with an error event, as an upstream failure between events is."""
    script, url = scripted
    script.chunks = [(0.1, sse({"delta": str(i)})) for i in range(600)]
    gw: Gateway = await gateway_factory(
        upstream={"url": url, "timeouts": {"stream_idle": 0.5, "stream_max": 1.0}}
    )
    token = await gw.new_token()
    started = time.monotonic()
    events, _ = await stream_events(gw, token)
    assert time.monotonic() - started < 10
    assert [name for _, name, _ in events][-1] == "error"
    assert json.loads(events[-1][2])["code"] == "upstream_timeout"
    assert len(events) > 2
    await asyncio.wait_for(script.cancelled.wait(), timeout=5)  # the upstream was told
    assert gw.sample("gateway_streams_total", outcome="upstream_error") == 1
