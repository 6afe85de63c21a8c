"""The overload scenario's pacing, answer reading and report (bench/openload.py,
bench/overload.py): pure functions, and the generator against a real local server."""

from __future__ import annotations

import asyncio

import pytest

from bench import openload, overload
from bench.openload import Tally, answer_kind, due, parse_answer, quantile_ms

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
SHED_BODY = b'{"type":"x","status":503,"code":"overloaded"}'
SHED = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s" % (
    len(SHED_BODY),
    SHED_BODY,
)


def test_requests_are_due_on_a_fixed_schedule_from_the_start() -> None:
    assert due(-0.001, 100) == 0
    assert due(0.0, 100) == 1  # the first at once
    assert due(0.0099, 100) == 1
    assert due(0.01, 100) == 2
    assert due(1.0, 2000) == 2001
    assert due(5.0, 0) == 0
    # whatever the ticks, the count at a time depends on the time only (open loop)
    assert [due(t / 1000, 500) for t in (0, 7, 250, 999)] == [1, 4, 126, 500]


def test_an_answer_is_read_once_its_head_and_whole_body_are_in() -> None:
    assert parse_answer(b"HTTP/1.1 200 OK\r\nContent-Le") is None
    assert parse_answer(OK[:-1]) is None
    assert parse_answer(OK) == (200, len(OK), b"{}")
    assert parse_answer(bytearray(OK + b"HTTP/1.1")) == (200, len(OK), b"{}")
    status, total, body = parse_answer(SHED)  # type: ignore[misc]
    assert (status, total, body) == (503, len(SHED), SHED_BODY)
    with pytest.raises(ValueError, match="Content-Length"):
        parse_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")


def test_answers_are_told_apart_admitted_shed_and_other() -> None:
    tally = Tally()
    tally.answer(200, b"{}", 0.004)
    tally.answer(503, SHED_BODY, 0.001)
    tally.answer(503, b'{"code":"store_unavailable"}', 0.05)
    tally.answer(429, b'{"code": "rate_limited"}', 0.002)
    tally.answer(502, b"", 0.002)
    assert tally.admitted == [0.004]
    assert tally.shed == [0.001]
    assert dict(tally.other) == {"503 store_unavailable": 1, "429 rate_limited": 1, "502": 1}
    assert answer_kind(404, b"not json") == "404"


def test_quantiles_are_in_milliseconds_and_zero_when_empty() -> None:
    assert quantile_ms([], 0.99) == 0.0
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert quantile_ms(values, 0.50) == pytest.approx(51.0)
    assert quantile_ms(values, 0.99) == pytest.approx(100.0)


def level(multiple: float, **kw: float) -> overload.Level:
    base = dict(
        multiple=multiple, rate=1000 * multiple, seconds=5.0, due=int(5000 * multiple),
        admitted=5000, shed=0, other={}, errors=0, timeouts=0, unsent=0, admitted_p50_ms=5.0,
        admitted_p99_ms=10.0, shed_p50_ms=0.0, shed_p99_ms=0.0, late_p99_ms=1.0,
        late_max_ms=2.0, readyz_probes=50, readyz_p50_ms=2.0, readyz_p99_ms=5.0,
        readyz_max_ms=5.0, readyz_failed=0, connections=2000, generator_cpu_s=3.0,
        generator_wall_s=6.0,
    )  # fmt: skip
    base.update(kw)
    return overload.Level(**base)  # type: ignore[arg-type]


def holds(run: overload.Overload) -> dict[str, bool | None]:
    return {name.removeprefix("overload: "): ok for name, _, ok in overload.targets(run)}


def test_the_targets_are_ratios_within_the_run_and_say_when_they_do_not_hold() -> None:
    good = overload.Overload(1000.0, 10.0)
    good.levels = [
        level(0.5, admitted=2500, admitted_p99_ms=8.0),
        level(1.0, admitted=5000),
        level(2.0, admitted=4600, shed=5400, shed_p99_ms=3.0, admitted_p99_ms=24.0),
        level(4.0, admitted=4500, shed=15500, shed_p99_ms=4.9, readyz_p99_ms=49.0),
    ]
    assert set(holds(good).values()) == {True}
    bad = overload.Overload(1000.0, 10.0)
    bad.levels = [
        level(0.5, admitted=2500, admitted_p99_ms=8.0),
        level(1.0, admitted=5000),
        # 4,450 / 5,000 = 89%; 24.1 ms > 3 x 8 ms; a shed answer at 5.1 ms; one timeout
        level(2.0, admitted=4450, shed=5400, shed_p99_ms=5.1, admitted_p99_ms=24.1, timeouts=1),
        level(4.0, admitted=4500, shed=15500, shed_p99_ms=1.0, readyz_failed=1),
    ]
    assert set(holds(bad).values()) == {False}
    # a request never sent (every connection busy to the end) is a client that gave up
    unsent = overload.Overload(1000.0, 10.0, [level(0.5), level(1.0), level(2.0, unsent=3)])
    assert holds(unsent)["0 client timeouts (3 s)"] is False
    measured = {name: text for name, text, _ in overload.targets(bad)}
    assert measured["overload: admitted at 2x offered >= 90% of admitted at 1x"] == (
        "890 / 1,000 req/s = 89% (of the closed-loop capacity 1,000: 89%)"
    )
    nothing_shed = overload.Overload(1000.0, 10.0, [level(0.5), level(1.0)])
    assert holds(nothing_shed)["shed answers p99 <= 5 ms"] is None


def test_the_shed_counter_is_read_by_reason_over_a_level() -> None:
    before = {'gateway_requests_shed_total{reason="queue_full"}': 10.0}
    after = {
        'gateway_requests_shed_total{reason="queue_full"}': 25.0,
        'gateway_requests_shed_total{reason="queue_timeout"}': 3.0,
        'gateway_requests_shed_total{reason="stream_limit"}': 0.0,
        "gateway_overload_limit": 64.0,
    }
    assert overload.shed_by_reason(before, after) == {"queue_full": 15, "queue_timeout": 3}


def test_the_table_has_a_row_per_level() -> None:
    run = overload.Overload(1000.0, 10.0, [level(m) for m in overload.LEVELS])
    lines = overload.table(run)
    assert len(lines) == 2 + len(overload.LEVELS)
    assert lines[3].startswith("| 1x = 1,000/s | 1,000 | 0 |")


async def close_and_settle(load: openload.OpenLoad) -> None:
    """Close the generator's connections; the handlers see them aborted and close their
    writers, and the last readiness probes end, before the loop does (a writer left to
    the collector warns "loop is closed" in whichever test runs then)."""
    load.close()
    await asyncio.gather(*openload.TASKS, return_exceptions=True)
    for _ in range(50):
        if not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
            break
        await asyncio.sleep(0.01)


async def test_the_generator_sends_every_due_request_and_counts_each_answer() -> None:
    """A real server on loopback: every second request is shed, one is never answered."""
    seen = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                seen += 1
                if seen == 7:
                    continue  # never answered: a client timeout
                writer.write(OK if seen % 2 else SHED)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def ready(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    admin = await asyncio.start_server(ready, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    load = openload.OpenLoad(port, [request], max_connections=8, timeout=0.3)
    async with server, admin:
        admin_port = admin.sockets[0].getsockname()[1]
        summary = await openload.level(load, admin_port, rate=200, settle=0.0, seconds=0.25)
        await close_and_settle(load)
    assert summary.due == 50
    assert summary.admitted + summary.shed + summary.timeouts == 50
    assert summary.timeouts == 1
    assert summary.shed == seen // 2
    assert summary.errors == 0
    assert summary.connections <= 8
    assert summary.readyz_probes >= 1
    assert summary.readyz_failed == 0


async def test_the_generator_spreads_requests_over_its_pre_opened_connections() -> None:
    """Least recently used first: no pre-opened connection sits unused (past the
    gateway's head deadline a connection that never sent a request is closed, and a
    request sent on it then is lost)."""
    per_connection: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(per_connection)
        per_connection.append(0)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                per_connection[index] += 1
                writer.write(OK)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    load = openload.OpenLoad(port, [request], max_connections=4, timeout=1.0)
    async with server:
        for _ in range(4):
            conn = await load.connect()
            assert conn is not None
            load.pool.append(conn)
        for _ in range(8):  # one at a time: each answered before the next is sent
            load.send(asyncio.get_running_loop().time(), None)
            for _ in range(100):
                if len(load.pool) == 4:
                    break
                await asyncio.sleep(0.01)
        await close_and_settle(load)
    assert per_connection == [2, 2, 2, 2]
