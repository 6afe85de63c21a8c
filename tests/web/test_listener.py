"""The public listener against hostile clients, on raw sockets: what aiohttp's parser
refuses keeps the error contract, slow clients meet deadlines, one client cannot hold
every connection, and ``Expect: 100-continue`` is answered after the checks.

Deadlines are configured short (half a second) and every wait is on a condition with a
generous bound: the suite runs on busy machines.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import web
from structlog.testing import capture_logs

from gateway.web.app import create_app
from gateway.web.listener import Listener
from gateway.web.state import METRICS
from tests.support.harness import (
    SEND_URL,
    SIGNING_ENV,
    Gateway,
    ListenerTestServer,
    make_config,
    start_admin,
)
from tests.support.hostile_requests import KEY, MARKER, PARSER_CASES, TOKEN_PATH, chunked_send
from tests.support.raw_http import WAIT, Answer, Connection, request
from tests.support.upstreams import Script


@pytest.fixture
def events() -> Any:
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as captured:
        yield captured


def access_lines(events: list[dict[str, Any]], request_id: str | None = None) -> list[dict]:
    return [
        e
        for e in events
        if e["event"] == "request" and (request_id is None or e["request_id"] == request_id)
    ]


def assert_no_error_lines(events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    assert [e for e in events if e["log_level"] in ("error", "critical")] == []
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]
    assert not any(r.exc_info for r in caplog.records)


async def until(check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not true in time"
        await asyncio.sleep(0.02)


async def exchange(port: int, data: bytes) -> tuple[Answer, bytes]:
    """Send ``data``, read one answer and whatever comes until the server closes."""
    conn = await Connection.open(port)
    try:
        await conn.send(data)
        answer = await conn.answer()
        rest = await conn.closed_by_peer()
    finally:
        conn.close()
    return answer, rest


@pytest.fixture
async def gw(gateway_factory: Any) -> Gateway:
    gateway: Gateway = await gateway_factory()
    return gateway


# -- what the parser refuses -----------------------------------------------------------
@pytest.mark.parametrize("case", sorted(PARSER_CASES))
async def test_parser_refusals_keep_the_error_contract(
    gw: Gateway, events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture, case: str
) -> None:
    raw, status, code = PARSER_CASES[case]
    caplog.set_level(logging.DEBUG)
    answer, rest = await exchange(gw.server.port, raw)

    assert (answer.version, answer.status) == ("HTTP/1.1", status)
    problem = answer.problem()
    assert problem["code"] == code
    assert answer.header("Connection") == "close" and rest == b""  # and it did close
    assert answer.header("X-Content-Type-Options") == "nosniff"
    assert answer.header("Server") == "agent-gateway"
    request_id = answer.header("X-Request-Id")
    assert request_id
    assert MARKER not in answer.raw.decode("latin-1") and KEY not in answer.raw.decode("latin-1")

    await until(lambda: len(access_lines(events)) >= 1)
    [line] = access_lines(events)
    assert line["request_id"] == request_id
    assert (line["status"], line["error"], line["route"]) == (status, code, "unparsed")
    assert line["client_ip"] == "127.0.0.1" and line["duration_ms"] >= 0
    assert_no_error_lines(events, caplog)
    logged = repr(events) + caplog.text
    assert MARKER not in logged and KEY not in logged
    assert (
        gw.sample(
            "gateway_http_requests_total", route="unparsed", method="other", status=str(status)
        )
        == 1
    )
    assert gw.sample("gateway_http_problems_total", route="unparsed", code=code) == 1


async def test_a_malformed_body_after_an_accepted_head_is_a_400_not_a_hang(
    gw: Gateway, events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """The handler is already reading when the bad chunk size arrives: it gets the 400
    (before: it waited for a body that could never come, until the client gave up)."""
    conn = await Connection.open(gw.server.port)
    head, _, _ = chunked_send(b"").partition(b"\r\n\r\n")
    await conn.send(head + b"\r\n\r\n")
    await until(lambda: gw.sample("gateway_http_requests_in_flight") == 1)
    await conn.send(b"zz\r\n{}\r\n0\r\n\r\n")
    answer = await conn.answer()
    assert await conn.closed_by_peer() == b""
    conn.close()
    assert answer.status == 400 and answer.problem()["code"] == "invalid_request"
    assert answer.header("Connection") == "close"
    [line] = access_lines(events, answer.header("X-Request-Id"))
    assert (line["route"], line["status"]) == (SEND_URL, 400)
    assert_no_error_lines(events, caplog)


async def test_an_undecodable_body_is_a_400_without_stack_traces(
    gw: Gateway, events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """A gzip body that is not gzip: before, 500 and two ERROR lines with stack traces."""
    raw = request(
        "POST",
        SEND_URL,
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        b"not gzip at all",
    )
    answer, rest = await exchange(gw.server.port, raw)
    assert answer.status == 400 and answer.problem()["code"] == "invalid_request"
    assert answer.header("Connection") == "close" and rest == b""
    assert len(access_lines(events, answer.header("X-Request-Id"))) == 1
    assert_no_error_lines(events, caplog)


async def test_pipelined_requests_are_still_answered_in_order(gw: Gateway) -> None:
    conn = await Connection.open(gw.server.port)
    await conn.send(request(path="/nowhere") + request(path=TOKEN_PATH))
    first, second = await conn.answer(), await conn.answer()
    conn.close()
    assert (first.status, second.status) == (404, 401)
    assert first.header("X-Request-Id") != second.header("X-Request-Id")


# -- deadlines -------------------------------------------------------------------------
HEAD_DEADLINE = {"header_timeout_seconds": 0.5, "keepalive_timeout_seconds": 30}


async def test_idle_and_slowloris_connections_are_cut_at_the_head_deadline(
    gateway_factory: Any,
) -> None:
    gw: Gateway = await gateway_factory(server=HEAD_DEADLINE)
    port = gw.server.port
    idle = [await Connection.open(port) for _ in range(20)]
    slow = [await Connection.open(port) for _ in range(20)]
    stop = asyncio.Event()
    head = request(path=TOKEN_PATH, headers={"X-Slow": "a" * 2000})  # 2,000 s at 1 byte/s
    drips = [asyncio.create_task(c.drip(head, 0.05, stop)) for c in slow]  # here 100 s
    try:
        for conn in idle:  # nothing of a request arrived: closed without an answer
            assert await conn.closed_by_peer() == b""
        for conn in slow:
            answer = await conn.answer()
            assert answer.status == 408 and answer.problem()["code"] == "request_timeout"
            assert answer.header("Connection") == "close" and answer.header("X-Request-Id")
            assert await conn.closed_by_peer() == b""
        sent = await asyncio.gather(*drips)
    finally:
        stop.set()
        for conn in idle + slow:
            conn.close()
    assert all(n < len(head) for n in sent)  # cut long before the head was complete
    assert gw.sample("gateway_connections_timed_out_total", phase="request_head") == 40
    await until(lambda: gw.sample("gateway_connections_open") == 0)


async def test_a_kept_alive_connection_may_idle_but_its_next_head_has_the_deadline(
    gateway_factory: Any,
) -> None:
    gw: Gateway = await gateway_factory(server=HEAD_DEADLINE)
    conn = await Connection.open(gw.server.port)
    await conn.send(request(path=TOKEN_PATH))
    assert (await conn.answer()).status == 401
    await asyncio.sleep(1.0)  # idle for twice the head deadline: keep-alive allows it
    await conn.send(request(path=TOKEN_PATH))
    assert (await conn.answer()).status == 401
    stop = asyncio.Event()
    drip = asyncio.create_task(conn.drip(request(path=TOKEN_PATH), 0.1, stop))
    answer = await conn.answer()  # its deadline counts from its first byte
    stop.set()
    await drip
    assert answer.status == 408
    assert await conn.closed_by_peer() == b""
    conn.close()


async def test_an_idle_kept_alive_connection_is_closed_at_the_keep_alive_timeout(
    gateway_factory: Any,
) -> None:
    gw: Gateway = await gateway_factory(server={"keepalive_timeout_seconds": 0.5})
    conn = await Connection.open(gw.server.port)
    await conn.send(request(path=TOKEN_PATH))
    assert (await conn.answer()).status == 401
    assert await conn.closed_by_peer() == b""
    conn.close()
    assert gw.sample("gateway_connections_timed_out_total", phase="keep_alive") == 1


async def test_a_body_that_does_not_arrive_in_time_is_a_408(
    gateway_factory: Any, events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    gw: Gateway = await gateway_factory(server={"body_timeout_seconds": 0.5})
    conn = await Connection.open(gw.server.port)
    head = request("POST", SEND_URL, {"Content-Type": "application/json"}, b"x" * 100)
    await conn.send(head[:-90])  # the head and 10 bytes of a 100-byte body
    answer = await conn.answer()
    assert await conn.closed_by_peer() == b""
    conn.close()
    assert answer.status == 408 and answer.problem()["code"] == "request_timeout"
    assert answer.header("Connection") == "close"
    [line] = access_lines(events, answer.header("X-Request-Id"))
    assert (line["route"], line["error"]) == (SEND_URL, "request_timeout")
    assert gw.sample("gateway_connections_timed_out_total", phase="request_body") == 1
    assert_no_error_lines(events, caplog)


async def test_a_client_that_stops_reading_its_answer_is_disconnected(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    """A slow read: the stream (and its upstream call) would be held for as long as the
    client keeps its connection open without reading."""
    script, url = scripted
    script.chunks = [(0, b"data: " + b"x" * 65536 + b"\n\n")] * 160  # more than any buffer
    gw: Gateway = await gateway_factory(upstream={"url": url}, server={"send_timeout_seconds": 0.5})
    token = await gw.new_token()
    body = orjson.dumps({"client_token": token, "message": "hi", "stream": True})
    conn = await Connection.open(gw.server.port, receive_buffer=4096)
    await conn.send(request("POST", SEND_URL, {"Content-Type": "application/json"}, body))
    # and read nothing
    await until(lambda: gw.sample("gateway_connections_timed_out_total", phase="response") == 1)
    async with asyncio.timeout(WAIT):
        await script.cancelled.wait()  # the upstream call ended with it
    await until(lambda: gw.sample("gateway_streams_in_flight") == 0)
    conn.close()


# -- connection caps -------------------------------------------------------------------
@pytest.fixture
async def held() -> AsyncIterator[list[Connection]]:
    connections: list[Connection] = []
    yield connections
    for conn in connections:
        conn.close()


async def test_one_client_cannot_hold_more_than_its_connections(
    gateway_factory: Any, held: list[Connection], events: list[dict[str, Any]]
) -> None:
    gw: Gateway = await gateway_factory(server={"max_connections_per_client": 5})
    port = gw.server.port
    sample = gw.metrics.registry.get_sample_value
    for reason in ("client_limit", "total_limit"):  # exported at zero, for alerts
        assert sample("gateway_connections_refused_total", {"reason": reason}) == 0
    for phase in ("request_head", "request_body", "response", "keep_alive"):
        assert sample("gateway_connections_timed_out_total", {"phase": phase}) == 0
    held.extend([await Connection.open(port) for _ in range(5)])
    await until(lambda: gw.sample("gateway_connections_open") == 5)

    refused = await Connection.open(port)
    answer = await refused.answer()
    assert await refused.closed_by_peer() == b""
    refused.close()
    assert (answer.version, answer.status) == ("HTTP/1.1", 429)
    assert answer.problem()["code"] == "too_many_connections"
    assert answer.header("Retry-After") == "1" and answer.header("Connection") == "close"
    assert answer.header("X-Request-Id") and answer.header("X-Content-Type-Options") == "nosniff"
    assert gw.sample("gateway_connections_refused_total", reason="client_limit") == 1
    assert gw.sample("gateway_connections_open") == 5
    assert access_lines(events) == []  # refusals are summed up, not logged one by one

    held.pop().close()  # one freed: the client may connect again
    await until(lambda: gw.sample("gateway_connections_open") == 4)
    answer, _ = await exchange(port, request(path=TOKEN_PATH, headers={"Connection": "close"}))
    assert answer.status == 401


async def test_refusals_are_logged_in_sums_not_one_line_each(
    gateway_factory: Any, held: list[Connection], events: list[dict[str, Any]]
) -> None:
    gw: Gateway = await gateway_factory(server={"max_connections_per_client": 1})
    held.append(await Connection.open(gw.server.port))
    await until(lambda: gw.sample("gateway_connections_open") == 1)
    for _ in range(30):
        conn = await Connection.open(gw.server.port)
        assert (await conn.answer()).status == 429
        conn.close()
    summaries = [e for e in events if e["event"] == "connections_refused"]
    assert [s["refused"] for s in summaries] == [1]  # the first at once, the burst later
    listener = gw.server.listener  # type: ignore[attr-defined]
    listener.flush()
    summaries = [e for e in events if e["event"] == "connections_refused"]
    assert [s["refused"] for s in summaries] == [1, 29]
    assert summaries[1]["top_clients"] == [{"client": "127.0.0.1", "refused": 29}]
    assert summaries[1]["by_reason"] == {"client_limit": 29}
    assert gw.sample("gateway_connections_refused_total", reason="client_limit") == 30


async def test_the_total_cap_refuses_with_503(gateway_factory: Any, held: list[Connection]) -> None:
    gw: Gateway = await gateway_factory(server={"max_connections": 3})
    held.extend([await Connection.open(gw.server.port) for _ in range(3)])
    await until(lambda: gw.sample("gateway_connections_open") == 3)
    answer, _ = await exchange(gw.server.port, b"")
    assert answer.status == 503 and answer.problem()["code"] == "overloaded"
    assert gw.sample("gateway_connections_refused_total", reason="total_limit") == 1


async def test_trusted_proxies_are_not_capped_per_client(
    gateway_factory: Any, held: list[Connection]
) -> None:
    """A load balancer carries many clients: only the total cap applies to it."""
    gw: Gateway = await gateway_factory(
        server={"max_connections_per_client": 2, "trusted_proxies": ["127.0.0.1/32"]}
    )
    held.extend([await Connection.open(gw.server.port) for _ in range(6)])
    for conn in held:
        await conn.send(request(path=TOKEN_PATH))
        assert (await conn.answer()).status == 401
    assert gw.sample("gateway_connections_refused_total", reason="client_limit") == 0


# -- Expect: 100-continue --------------------------------------------------------------
async def test_expect_continue_is_refused_before_100_when_too_large_or_not_json(
    gw: Gateway,
) -> None:
    too_large = request(
        "POST",
        SEND_URL,
        {"Content-Type": "application/json", "Content-Length": "1000000", "Expect": "100-continue"},
    )
    not_json = request(
        "POST",
        SEND_URL,
        {"Content-Type": "text/plain", "Content-Length": "20", "Expect": "100-continue"},
    )
    for raw, status, code in (
        (too_large, 413, "payload_too_large"),
        (not_json, 415, "unsupported_media_type"),
    ):
        conn = await Connection.open(gw.server.port)
        await conn.send(raw)
        answer = await conn.answer()  # the first answer is the final one: no 100
        conn.close()
        assert answer.status == status and answer.problem()["code"] == code


async def test_expect_continue_gets_100_then_the_answer(gw: Gateway) -> None:
    token = await gw.new_token()
    body = f'{{"client_token": "{token}", "message": "hello"}}'.encode()
    conn = await Connection.open(gw.server.port)
    await conn.send(
        request(
            "POST",
            SEND_URL,
            {
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                "Expect": "100-continue",
                "User-Agent": gw.user_agent,
            },
        )
    )
    interim = await conn.answer()
    assert (interim.version, interim.status, interim.body) == ("HTTP/1.1", 100, b"")
    await conn.send(body)
    answer = await conn.answer()
    conn.close()
    assert answer.status == 200, answer.raw
    assert answer.header("X-Content-Type-Options") == "nosniff"


async def test_an_unknown_expectation_is_417(gw: Gateway) -> None:
    raw = request(
        "POST",
        SEND_URL,
        {"Content-Type": "application/json", "Content-Length": "2", "Expect": "teapot"},
    )
    conn = await Connection.open(gw.server.port)
    await conn.send(raw)
    answer = await conn.answer()
    conn.close()
    assert answer.status == 417 and answer.problem()["code"] == "expectation_failed"


# -- headers on every answer -----------------------------------------------------------
async def test_every_answer_says_nosniff(gw: Gateway) -> None:
    key = await gw.create_key()
    raw_answers = [
        (await exchange(gw.server.port, request(path=path, headers=headers)))[0]
        for path, headers in [
            (TOKEN_PATH, {"Authorization": f"Bearer {key}", "Connection": "close"}),
            (TOKEN_PATH, {"Connection": "close"}),
            ("/nowhere", {"Connection": "close"}),
            ("/widget.js", {"Connection": "close"}),
        ]
    ]
    delete = request("DELETE", SEND_URL, {"Connection": "close"})
    raw_answers.append((await exchange(gw.server.port, delete))[0])
    preflight = request(
        "OPTIONS",
        TOKEN_PATH,
        {
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "GET",
            "Connection": "close",
        },
    )
    raw_answers.append((await exchange(gw.server.port, preflight))[0])
    raw_answers.append((await exchange(gw.server.port, b"\x16\x03\x01 not http\r\n\r\n"))[0])
    statuses = [a.status for a in raw_answers]
    assert statuses[:3] == [200, 401, 404] and statuses[4] == 405 and statuses[6] == 400
    for answer in raw_answers:
        assert answer.header("X-Content-Type-Options") == "nosniff", answer.raw[:200]
        assert answer.header("X-Request-Id"), answer.raw[:200]

    admin = await start_admin(gw)
    try:
        for path in ("/metrics", "/healthz", "/nowhere"):
            answer, _ = await exchange(
                admin.port, request(path=path, headers={"Connection": "close"})
            )
            assert answer.header("X-Content-Type-Options") == "nosniff"
            assert answer.header("Server") == "agent-gateway"
        refused, _ = await exchange(admin.port, b"GET / HTTP/9.9\r\n\r\n")
        assert refused.status == 400 and refused.problem()["code"] == "invalid_request"
    finally:
        await admin.close()


# -- what escapes the application ------------------------------------------------------
async def test_what_escapes_the_middleware_is_still_a_problem_and_a_client_gone_is_quiet(
    tmp_path: Path,
    backend_url: str,
    events: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The middleware leaves ``TimeoutError`` and a reset connection to aiohttp, which
    answered ``text/plain`` and logged an ERROR even for a client that went away."""
    config = make_config(tmp_path, backend_url)
    app = create_app(config, environ=SIGNING_ENV)

    async def times_out(request: web.Request) -> web.Response:
        raise TimeoutError

    async def client_gone(request: web.Request) -> web.Response:
        raise ConnectionResetError("the client went away")

    app.router.add_get("/test/times-out", times_out)
    app.router.add_get("/test/client-gone", client_gone)
    server = ListenerTestServer(app, Listener.public(config.server, app[METRICS]), host="127.0.0.1")
    await server.start_server()
    try:
        answer, _ = await exchange(server.port, request(path="/test/times-out"))
        assert answer.status == 504 and answer.problem()["code"] == "upstream_timeout"
        assert answer.header("X-Request-Id") and answer.header("Connection") == "close"
        [line] = access_lines(events, answer.header("X-Request-Id"))
        assert line["status"] == 504
        gone, _ = await exchange(server.port, request(path="/test/client-gone"))
        [line] = access_lines(events, gone.header("X-Request-Id"))
        assert line["status"] == 499
    finally:
        await server.close()
    assert_no_error_lines(events, caplog)
