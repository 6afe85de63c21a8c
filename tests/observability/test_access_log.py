"""The access line's fast path writes what the generic structlog chain would have."""

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from gateway.core.agent_keys import generate
from gateway.observability import access_log
from gateway.observability import logging as gateway_logging
from gateway.observability.redaction import REDACTED, register_secret

SECRET = "access-line-secret-0123456789"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")


@pytest.fixture
def out() -> Iterator[io.BytesIO]:
    buffer = io.BytesIO()
    register_secret(SECRET)
    gateway_logging.configure("info", "json", out=buffer)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()


def fields(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": "0123456789abcdef01234567",
        "method": "POST",
        "route": "/v1/chat/conversation/public/message",
        "status": 200,
        "duration_ms": 1.25,
        "client_ip": "203.0.113.7",
        "key_id": "AbCdEf012345",
        "token_hash": "89ce076267db",
        "error": None,
    }
    return {**base, **overrides}


def written(out: io.BytesIO) -> list[dict[str, Any]]:
    gateway_logging.flush()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    out.seek(0)
    out.truncate()
    return lines


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"status": 499, "duration_ms": 0.0, "key_id": None, "token_hash": None},
        {"status": 429, "error": "rate_limited", "client_ip": None},
        {"method": "BREW", "route": "unmatched", "status": 405, "error": "method_not_allowed"},
        # taken from a trusted proxy, or sent by the client: redacted as before
        {"request_id": f"id-{SECRET}", "generated": False},
        {"method": f"X{SECRET}"},
        {"method": generate().key},  # any token is a valid method
        {"client_ip": f"unix:{SECRET}"},
    ],
)
def test_the_fast_line_is_the_line_structlog_would_write(
    out: io.BytesIO, overrides: dict[str, Any]
) -> None:
    generated = overrides.pop("generated", True)
    line = fields(**overrides)
    access_log.emit(request_id_generated=generated, **line)
    structlog.get_logger("gateway.access").info("request", **line)  # the generic chain
    fast, generic = written(out)
    assert ISO_UTC.match(fast["timestamp"]) and ISO_UTC.match(generic["timestamp"])
    del fast["timestamp"], generic["timestamp"]
    assert list(fast) == list(generic)
    assert fast == generic
    assert SECRET not in json.dumps(fast)


def test_secrets_in_client_controlled_fields_are_redacted(out: io.BytesIO) -> None:
    access_log.emit(
        request_id_generated=False,
        **fields(request_id=SECRET, method=f"GET{SECRET}", client_ip=SECRET),
    )
    (line,) = written(out)
    assert line["request_id"] == REDACTED
    assert SECRET not in json.dumps(line)


async def test_fast_lines_share_the_loop_batched_writer(out: io.BytesIO) -> None:
    access_log.emit(request_id_generated=True, **fields())
    structlog.get_logger("gateway").info("other")
    assert out.getvalue() == b""  # still this turn of the loop
    await asyncio.sleep(0)
    assert [line["event"] for line in written(out)] == ["request", "other"]


def test_captured_or_reset_configurations_get_the_line_through_structlog(
    out: io.BytesIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a logger of its own: structlog caches a logger with the configuration of its first use
    monkeypatch.setattr(access_log, "_structlog_access", structlog.get_logger("gateway.access"))
    with capture_logs() as events:
        access_log.emit(request_id_generated=True, **fields())
    assert [e["event"] for e in events] == ["request"]
    access_log.emit(request_id_generated=True, **fields())  # the chain is back in force
    assert [line["event"] for line in written(out)] == ["request"]
    structlog.reset_defaults()
    monkeypatch.setattr(access_log, "_structlog_access", structlog.get_logger("gateway.access"))
    with capture_logs() as events:
        access_log.emit(request_id_generated=True, **fields())
    assert [e["event"] for e in events] == ["request"] and written(out) == []


@pytest.mark.parametrize(("level", "fmt"), [("info", "console"), ("warning", "json")])
def test_console_format_and_levels_above_info_go_through_structlog(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, level: str, fmt: str
) -> None:
    # a logger of its own: structlog caches a logger with the configuration of its first use
    monkeypatch.setattr(access_log, "_structlog_access", structlog.get_logger("gateway.access"))
    out = io.BytesIO()
    try:
        gateway_logging.configure(level, fmt, out=out)
        access_log.emit(request_id_generated=True, **fields())
        gateway_logging.flush()
        console = capsys.readouterr().out
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    if fmt == "console":
        assert "request" in console and "route=/v1/chat/conversation/public/message" in console
    else:  # an info line, below the configured level
        assert console == "" and out.getvalue() == b""


@pytest.mark.parametrize(
    "now",
    [
        datetime(2026, 3, 1, 0, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1999, 12, 31, 12, 0, 1, 7, tzinfo=UTC),
    ],
)
def test_timestamps_are_isoformat_with_z(now: datetime) -> None:
    ns = int(now.timestamp()) * 1_000_000_000 + now.microsecond * 1000 + 999
    expected = now.isoformat().replace("+00:00", "Z")
    assert access_log.iso_utc_now(ns) == expected
    assert access_log.iso_utc_now(ns) == expected  # from the cached second
