"""Hostile clients against a real `gateway serve` process, on raw sockets: its answers,
its output (one access line per refused request, no stack trace, no secret) and its
metrics on the admin listener."""

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.hostile_requests import (
    MARKER,
    PARSER_CASES,
    TOKEN_PATH,
    key_in_a_refused_header,
)
from tests.support.raw_http import Connection, request
from tests.support.stack import SEND, Stack, stack

pytestmark = pytest.mark.slow


def port_of(gw: Stack) -> int:
    return int(gw.public.rsplit(":", 1)[1])


def log_events(gw: Stack) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]


def metric(gw: Stack, name: str, **labels: str) -> float:
    text = httpx.get(gw.admin + "/metrics", timeout=5).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


async def exchange(port: int, data: bytes) -> tuple[Any, bytes]:
    conn = await Connection.open(port)
    try:
        await conn.send(data)
        return await conn.answer(), await conn.closed_by_peer()
    finally:
        conn.close()


async def test_parser_refusals_from_a_real_process(tmp_path: Path) -> None:
    with stack(tmp_path) as gw:
        key, _ = gw.create_key()  # a real key of this gateway, in a refused header
        cases = {**PARSER_CASES, "a real key": (key_in_a_refused_header(key), 400, "")}
        answers = {}
        for name, (raw, status, code) in cases.items():
            answer, rest = await exchange(port_of(gw), raw)
            assert (answer.version, answer.status) == ("HTTP/1.1", status), name
            assert answer.problem()["code"] == (code or "invalid_request"), name
            assert answer.header("Connection") == "close" and rest == b"", name
            assert answer.header("X-Content-Type-Options") == "nosniff", name
            text = answer.raw.decode("latin-1")
            assert MARKER not in text and key not in text, name
            answers[name] = answer
        unparsed = metric(
            gw, "gateway_http_requests_total", method="other", route="unparsed", status="400"
        )
        assert unparsed == sum(1 for _, status, _ in cases.values() if status == 400)
    output = gw.log()
    assert MARKER not in output and key not in output
    assert "Traceback" not in output and "aiohttp" not in output
    events = log_events(gw)
    assert [e for e in events if e["level"] in ("error", "critical")] == []
    for name, answer in answers.items():
        lines = [e for e in events if e.get("request_id") == answer.header("X-Request-Id")]
        assert len(lines) == 1, name
        assert lines[0]["event"] == "request" and lines[0]["route"] == "unparsed", name
        assert lines[0]["status"] == answer.status, name


async def test_slow_and_idle_clients_are_cut_at_the_head_deadline(tmp_path: Path) -> None:
    with stack(tmp_path, header_timeout_seconds=0.5) as gw:
        port = port_of(gw)
        idle = [await Connection.open(port) for _ in range(20)]
        slow = [await Connection.open(port) for _ in range(20)]
        stop = asyncio.Event()
        head = request(path=TOKEN_PATH, headers={"X-Slow": "a" * 2000})
        drips = [asyncio.create_task(c.drip(head, 0.05, stop)) for c in slow]
        try:
            for conn in idle:
                assert await conn.closed_by_peer() == b""
            for conn in slow:
                assert (await conn.answer()).status == 408
                assert await conn.closed_by_peer() == b""
            sent = await asyncio.gather(*drips)
        finally:
            stop.set()
            for conn in idle + slow:
                conn.close()
        assert all(n < len(head) for n in sent)
        assert metric(gw, "gateway_connections_timed_out_total", phase="request_head") == 40
        # the listener still serves
        assert (await exchange(port, request(path=TOKEN_PATH, headers={"Connection": "close"})))[
            0
        ].status == 401


async def test_connection_caps_in_a_real_process(tmp_path: Path) -> None:
    with stack(tmp_path, max_connections_per_client=5) as gw:
        port = port_of(gw)
        held = [await Connection.open(port) for _ in range(5)]
        try:
            for _ in range(10):
                answer, rest = await exchange(port, b"")
                assert answer.status == 429 and rest == b""
                assert answer.problem()["code"] == "too_many_connections"
            assert metric(gw, "gateway_connections_refused_total", reason="client_limit") == 10
            assert metric(gw, "gateway_connections_open") == 5
        finally:
            for conn in held:
                conn.close()
        summaries = [e for e in log_events(gw) if e["event"] == "connections_refused"]
        assert [s["refused"] for s in summaries] == [1]  # the rest of the burst: later
    summaries = [e for e in log_events(gw) if e["event"] == "connections_refused"]
    assert [s["refused"] for s in summaries] == [1, 9]  # summed up at shutdown
    assert summaries[1]["top_clients"] == [{"client": "127.0.0.1", "refused": 9}]
    assert not [e for e in log_events(gw) if e["event"] == "request"]


async def test_expect_continue_in_a_real_process(tmp_path: Path) -> None:
    with stack(tmp_path) as gw:
        _, token = gw.token()
        conn = await Connection.open(port_of(gw))
        await conn.send(
            request(
                "POST",
                SEND,
                {
                    "Content-Type": "application/json",
                    "Content-Length": "10000000",
                    "Expect": "100-continue",
                },
            )
        )
        refused = await conn.answer()
        conn.close()
        assert refused.status == 413 and refused.problem()["code"] == "payload_too_large"

        body = json.dumps({"client_token": token, "message": "hello"}).encode()
        conn = await Connection.open(port_of(gw))
        await conn.send(
            request(
                "POST",
                SEND,
                {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                    "Expect": "100-continue",
                    "User-Agent": "python-httpx/0.28.1",
                },
            )
        )
        assert (await conn.answer()).status == 100
        await conn.send(body)
        answer = await conn.answer()
        conn.close()
        assert answer.status == 200, answer.raw
