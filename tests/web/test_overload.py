"""Load shedding on a real socket, in front of a scripted slow upstream: past the limit
and the queue, 503 ``overloaded`` at once and before any key, token or store work; what
was admitted completes; streams have their own limit; the admin port stays responsive."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from gateway.web.overload import CLOSED_SECONDS, SHEDDER, STANDING_SECONDS, Shedder
from tests.support.harness import SEND_URL, TOKEN_URL, Gateway, start_admin, stop_gateway
from tests.support.raw_http import Connection, request
from tests.support.upstreams import Script

GatewayFactory = Callable[..., Awaitable[Gateway]]
#: the scripted upstream's pause before it answers
UPSTREAM_DELAY = 1.5


def sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def overload(**fields: Any) -> dict[str, Any]:
    """A tight, fixed limit (floor = ceiling) for the test."""
    limit = fields.pop("limit", 3)
    return {
        "enabled": True,
        "min_limit": limit,
        "max_limit": limit,
        "queue_size": 0,
        "max_wait_ms": 3000,
        "stream_limit": 100,
        **fields,
    }


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not true in time"
        await asyncio.sleep(0.01)


def shedder_of(gw: Gateway) -> Shedder:
    return gw.app[SHEDDER]


async def timed_send(gw: Gateway, token: str, *, stream: bool = False) -> tuple[int, float, Any]:
    """(status, seconds, body or headers) of one send."""
    started = time.monotonic()
    async with gw.send(token, stream=stream) as resp:
        if resp.status == 503:
            body = await resp.json()
            return resp.status, time.monotonic() - started, (body, dict(resp.headers))
        await resp.read()
        return resp.status, time.monotonic() - started, None


def busy_clients(
    gw: Gateway, tokens: list[str], stop: asyncio.Event, count: int = 40
) -> list[asyncio.Task[None]]:
    """``count`` clients, each sending again as soon as answered, until ``stop`` is set."""

    async def client(token: str) -> None:
        while not stop.is_set():
            await timed_send(gw, token)

    return [asyncio.create_task(client(tokens[i % len(tokens)])) for i in range(count)]


def count_store_calls(gw: Gateway) -> list[int]:
    """Count the state store's admissions (the store work of every send)."""
    calls = [0]
    store = gw.services.store
    original = store.admit

    async def admit(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await original(*args, **kwargs)

    store.admit = admit  # type: ignore[method-assign]
    return calls


async def test_the_excess_is_shed_at_once_without_store_work_and_the_admitted_complete(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    gw = await gateway_factory(upstream={"url": url}, overload=overload(limit=3, queue_size=2))
    tokens = [await gw.new_token() for _ in range(10)]
    script.headers_delay = UPSTREAM_DELAY
    calls = count_store_calls(gw)
    results = await asyncio.wait_for(
        asyncio.gather(*(timed_send(gw, token) for token in tokens)), timeout=20
    )
    shed = [r for r in results if r[0] == 503]
    admitted = [r for r in results if r[0] == 200]
    # 3 places, 2 waiting (they get the places the first 3 leave), 5 shed
    assert len(admitted) == 5 and len(shed) == 5, [r[:2] for r in results]
    for _, seconds, (body, headers) in shed:
        assert body["code"] == "overloaded" and body["status"] == 503
        assert headers["Retry-After"] == "1"
        assert headers["Content-Type"].startswith("application/problem+json")
        assert seconds < UPSTREAM_DELAY / 2, "a shed answer waited for the upstream"
    waited = sorted(seconds for _, seconds, _ in admitted)
    assert waited[-1] >= 2 * UPSTREAM_DELAY * 0.9  # the queued ones ran after the first
    assert calls[0] == 5, "only admitted requests reach the store"
    assert gw.sample("gateway_requests_shed_total", reason="queue_full") == 5
    assert (
        gw.sample(
            "gateway_http_problems_total",
            route="/v1/chat/conversation/public/message",
            code="overloaded",
        )
        == 5
    )
    shedder = shedder_of(gw)
    assert (shedder.in_flight, shedder.waiting, shedder.streams) == (0, 0, 0)
    assert shedder.pending == 0
    assert gw.sample("gateway_overload_limit") == 3


async def test_a_shed_token_request_does_no_key_work(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    gw = await gateway_factory(upstream={"url": url}, overload=overload(limit=2))
    tokens = [await gw.new_token() for _ in range(2)]
    fresh_key = await gw.create_key()  # never verified: a token for it needs argon2
    script.headers_delay = UPSTREAM_DELAY
    busy = [asyncio.create_task(timed_send(gw, token)) for token in tokens]
    await until(lambda: shedder_of(gw).in_flight == 2)
    verifications = gw.services.keys.hash_verifications
    started = time.monotonic()
    async with gw.http.get(
        gw.url + TOKEN_URL.format(model="demo"),
        headers=gw.headers({"Authorization": f"Bearer {fresh_key}"}),
    ) as resp:
        body = await resp.json()
    assert resp.status == 503 and body["code"] == "overloaded"
    assert time.monotonic() - started < UPSTREAM_DELAY / 2
    assert gw.services.keys.hash_verifications == verifications
    assert [r[0] for r in await asyncio.wait_for(asyncio.gather(*busy), 10)] == [200, 200]
    # the places are back: the same key now gets its token
    assert await gw.get_token(fresh_key)
    assert gw.services.keys.hash_verifications == verifications + 1


async def test_a_request_that_waits_too_long_is_shed(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    gw = await gateway_factory(
        upstream={"url": url}, overload=overload(limit=2, queue_size=5, max_wait_ms=200)
    )
    tokens = [await gw.new_token() for _ in range(4)]
    script.headers_delay = UPSTREAM_DELAY
    results = await asyncio.wait_for(
        asyncio.gather(*(timed_send(gw, token) for token in tokens)), timeout=20
    )
    statuses = sorted(r[0] for r in results)
    # two places, two waiting (the queue is never longer than the limit), in vain
    assert statuses == [200, 200, 503, 503]
    for status, seconds, _ in results:
        if status == 503:
            assert 0.15 < seconds < UPSTREAM_DELAY * 0.8
    assert gw.sample("gateway_requests_shed_total", reason="queue_timeout") == 2
    assert (shedder_of(gw).in_flight, shedder_of(gw).waiting) == (0, 0)


async def test_streams_have_their_own_limit_and_short_requests_still_pass(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    gw = await gateway_factory(upstream={"url": url}, overload=overload(limit=2, stream_limit=2))
    tokens = [await gw.new_token() for _ in range(3)]
    key = await gw.create_key()
    script.chunks = [(0, sse({"delta": "a"})), (UPSTREAM_DELAY, sse({"delta": "b"}))]
    streams = [asyncio.create_task(timed_send(gw, t, stream=True)) for t in tokens[:2]]
    shedder = shedder_of(gw)
    await until(lambda: shedder.streams == 2)
    assert (shedder.streams, shedder.in_flight) == (2, 0)  # streams hold no request place
    status, seconds, (body, headers) = await timed_send(gw, tokens[2], stream=True)
    assert status == 503 and body["code"] == "overloaded" and headers["Retry-After"] == "1"
    assert seconds < UPSTREAM_DELAY / 2
    # short requests pass beside the open streams (the request limit is 2)
    answers = await asyncio.gather(*(gw.get_token(key) for _ in range(2)))
    assert all(answers)
    assert [r[0] for r in await asyncio.wait_for(asyncio.gather(*streams), 10)] == [200, 200]
    assert gw.sample("gateway_requests_shed_total", reason="stream_limit") == 1
    assert gw.sample("gateway_overload_in_flight", kind="streams") == 0
    assert (shedder.streams, shedder.in_flight) == (0, 0)


async def test_readiness_on_the_admin_port_answers_while_the_public_side_is_saturated(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    gw = await gateway_factory(upstream={"url": url}, overload=overload(limit=2, queue_size=20))
    tokens = [await gw.new_token() for _ in range(2)]
    script.headers_delay = UPSTREAM_DELAY
    admin = await start_admin(gw)
    try:
        load = [asyncio.create_task(timed_send(gw, tokens[i % 2])) for i in range(40)]
        await until(lambda: shedder_of(gw).waiting == 2)  # never more than the limit
        async with aiohttp.ClientSession() as http:
            for path in ("/readyz", "/healthz", "/metrics"):
                started = time.monotonic()
                async with http.get(str(admin.make_url(path))) as resp:
                    text = await resp.text()
                assert resp.status == 200, text
                assert time.monotonic() - started < 0.5, path
                if path == "/metrics":
                    assert "gateway_overload_waiting 2.0" in text
        results = await asyncio.wait_for(asyncio.gather(*load), 20)
        assert sorted({r[0] for r in results}) == [200, 503]
    finally:
        await admin.close()


async def test_shedding_can_be_turned_off(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    _, url = scripted
    gw = await gateway_factory(upstream={"url": url}, overload={"enabled": False})
    assert SHEDDER not in gw.app
    token = await gw.new_token()
    assert (await timed_send(gw, token))[0] == 200


async def test_a_queue_that_does_not_empty_takes_no_one_for_a_while(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    """Every place taken and a request waiting for longer than a standing queue is let
    last: the replica is at capacity, and waiting would only add to the latency of what
    it admits. A request now is shed at once although the queue has room, until the
    queue has emptied and the closing time is over; then requests wait again."""
    script, url = scripted
    gw = await gateway_factory(upstream={"url": url}, overload=overload(limit=2, queue_size=5))
    tokens = [await gw.new_token() for _ in range(4)]
    script.headers_delay = UPSTREAM_DELAY
    shedder = shedder_of(gw)
    busy = [asyncio.create_task(timed_send(gw, token)) for token in tokens[:2]]
    await until(lambda: shedder.in_flight == 2)
    waiting = asyncio.create_task(timed_send(gw, tokens[2]))
    await until(lambda: shedder.waiting == 1)
    await asyncio.sleep(STANDING_SECONDS * 4)
    status, seconds, (body, _) = await timed_send(gw, tokens[3])
    assert status == 503 and body["code"] == "overloaded"
    assert seconds < UPSTREAM_DELAY / 2
    assert gw.sample("gateway_requests_shed_total", reason="queue_full") == 1
    results = await asyncio.wait_for(asyncio.gather(*busy, waiting), 20)
    assert [r[0] for r in results] == [200, 200, 200]  # the one waiting was served
    await asyncio.sleep(CLOSED_SECONDS)
    script.headers_delay = UPSTREAM_DELAY / 3
    again = [asyncio.create_task(timed_send(gw, token)) for token in tokens[:3]]
    await until(lambda: shedder.waiting == 1)  # open again: the third waits
    assert [r[0] for r in await asyncio.wait_for(asyncio.gather(*again), 20)] == [200] * 3
    assert (shedder.in_flight, shedder.waiting) == (0, 0)


async def test_a_client_gone_while_waiting_leaves_no_place_taken(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    gw = await gateway_factory(upstream={"url": url}, overload=overload(limit=1, queue_size=5))
    tokens = [await gw.new_token() for _ in range(2)]
    script.headers_delay = UPSTREAM_DELAY / 3
    first = asyncio.create_task(timed_send(gw, tokens[0]))
    shedder = shedder_of(gw)
    await until(lambda: shedder.in_flight == 1)
    waiting = asyncio.create_task(timed_send(gw, tokens[1]))
    await until(lambda: shedder.waiting == 1)
    await asyncio.sleep(0.05)
    waiting.cancel()  # the client hangs up while its request waits
    assert (await asyncio.wait_for(first, 10))[0] == 200
    await until(lambda: (shedder.in_flight, shedder.waiting, shedder.streams) == (0, 0, 0))
    assert (await timed_send(gw, tokens[1]))[0] == 200


async def test_an_unannounced_stream_moves_to_a_stream_place(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    """The client did not ask for a stream but the upstream streams: the answer holds a
    stream place, not a request place, and its length feeds no latency to the limit."""
    script, url = scripted
    gw = await gateway_factory(upstream={"url": url}, overload=overload(limit=1))
    tokens = [await gw.new_token() for _ in range(2)]
    script.chunks = [(0, sse({"delta": "a"})), (UPSTREAM_DELAY, sse({"delta": "b"}))]
    shedder = shedder_of(gw)
    streaming = asyncio.create_task(timed_send(gw, tokens[0]))
    await until(lambda: shedder.streams == 1)
    assert shedder.in_flight == 0
    script.chunks = []  # a short answer passes beside the stream (the limit is 1)
    assert (await timed_send(gw, tokens[1]))[0] == 200
    assert (await asyncio.wait_for(streaming, 10))[0] == 200
    await until(lambda: (shedder.streams, shedder.in_flight) == (0, 0))


async def test_a_page_can_read_why_it_was_shed(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    """Shed before its key is known, a browser request is granted CORS for the origins
    keys list (as other early refusals are), so the page sees 503 and Retry-After."""
    script, url = scripted
    shop = "https://shop.example"
    gw = await gateway_factory(upstream={"url": url}, overload=overload(limit=1))
    token = await gw.new_token()
    await gw.create_key(origins=(shop,))
    script.headers_delay = UPSTREAM_DELAY
    busy = asyncio.create_task(timed_send(gw, token))
    await until(lambda: shedder_of(gw).in_flight == 1)
    async with gw.send(token, Origin=shop) as resp:
        assert resp.status == 503
        assert resp.headers["Access-Control-Allow-Origin"] == shop
        assert "Retry-After" in resp.headers["Access-Control-Expose-Headers"]
    assert (await asyncio.wait_for(busy, 10))[0] == 200


async def test_the_limit_falls_when_the_latency_rises_under_load(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    """Busy clients on a real socket: while answers are quick the limit stays at its
    ceiling (40); when they get ten times slower it falls (toward the floor, 4)."""
    script, url = scripted
    settings = overload(queue_size=200) | {"min_limit": 4, "max_limit": 40}
    settings["loop_lag_target_ms"] = 0  # the latency alone (the loop is shared with clients)
    gw = await gateway_factory(upstream={"url": url}, overload=settings | {"window_seconds": 0.05})
    tokens = [await gw.new_token() for _ in range(4)]
    script.headers_delay = 0.02
    stop = asyncio.Event()
    clients = busy_clients(gw, tokens, stop)
    try:
        await asyncio.sleep(1.5)
        assert gw.sample("gateway_overload_limit") >= 30  # jitter on a busy machine aside
        script.headers_delay = 0.2
        await until(lambda: gw.sample("gateway_overload_limit") < 20, timeout=15)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), 15)
    assert (shedder_of(gw).in_flight, shedder_of(gw).waiting) == (0, 0)


async def test_the_limit_falls_when_the_event_loop_runs_late(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    """Busy clients, answers as quick as ever (a tolerance the latency never reaches),
    and work on the gateway's event loop that makes each turn 20 ms long: the limit
    falls from its ceiling (40) to its floor (4); the sampling stops with the gateway."""
    script, url = scripted
    settings = overload(queue_size=200) | {"min_limit": 4, "max_limit": 40, "tolerance": 10.0}
    gw = await gateway_factory(
        upstream={"url": url},
        overload=settings | {"window_seconds": 0.05, "loop_lag_target_ms": 2},
    )
    tokens = [await gw.new_token() for _ in range(4)]
    script.headers_delay = 0.02
    stop = asyncio.Event()

    async def hog() -> None:
        while not stop.is_set():
            time.sleep(0.02)  # noqa: ASYNC251 - the point: a turn of the loop taking 20 ms
            await asyncio.sleep(0)

    shedder = shedder_of(gw)
    assert shedder.limit == 40
    clients = busy_clients(gw, tokens, stop)
    hogging = asyncio.create_task(hog())
    try:
        await until(lambda: gw.sample("gateway_overload_limit") == 4, timeout=15)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(hogging, *clients), 15)
    assert (shedder.in_flight, shedder.waiting) == (0, 0)
    await stop_gateway(gw)  # again at teardown: closing twice is harmless
    assert shedder._lag_timer is None


async def test_while_saturated_the_listener_answers_from_the_request_head(
    gateway_factory: GatewayFactory, scripted: tuple[Script, str]
) -> None:
    """No place free and no room to wait: the listener answers the same 503 itself, from
    the parsed head, and the keep-alive connection serves on; ``Connection: close`` is
    honoured; once a place is free the same request goes through the application."""
    script, url = scripted
    gw = await gateway_factory(upstream={"url": url}, overload=overload(limit=1))  # no queue
    token = await gw.new_token()
    script.headers_delay = UPSTREAM_DELAY
    busy = asyncio.create_task(timed_send(gw, token))
    await until(lambda: shedder_of(gw).in_flight == 1)
    body = json.dumps({"client_token": token, "message": "hello"}).encode()
    send = request("POST", SEND_URL, {"Content-Type": "application/json"}, body)
    conn = await Connection.open(gw.server.port)
    try:
        with capture_logs() as logs:
            for _ in range(3):
                await conn.send(send)
                answer = await conn.answer()
                assert answer.status == 503 and answer.problem()["code"] == "overloaded"
                assert answer.header("Retry-After") == "1"
                assert answer.header("Connection") is None  # keep-alive
                assert answer.header("Cache-Control") == "no-store"
                assert answer.header("X-Content-Type-Options") == "nosniff"
                assert len(answer.header("X-Request-Id") or "") == 24
            closing = request(
                "POST", SEND_URL, {"Content-Type": "application/json", "Connection": "close"}, body
            )
            await conn.send(closing)
            answer = await conn.answer()
            assert answer.status == 503 and answer.header("Connection") == "close"
            assert await conn.closed_by_peer() == b""
            gw.server.listener.flush()  # type: ignore[attr-defined]
    finally:
        conn.close()
    summaries = [line for line in logs if line["event"] == "requests_shed_early"]
    assert [s["by_route"] for s in summaries] == [{SEND_URL: 4}]
    assert not [line for line in logs if line["event"] == "request"]  # no access lines
    assert gw.sample("gateway_requests_shed_total", reason="queue_full") == 4
    assert gw.sample("gateway_http_problems_total", route=SEND_URL, code="overloaded") == 4
    assert (await asyncio.wait_for(busy, 10))[0] == 200
    script.headers_delay = 0
    assert (await timed_send(gw, token))[0] == 200  # a place again: the application answers
    assert shedder_of(gw).pending == 0  # every request handed over reached the shedding
