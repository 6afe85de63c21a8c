"""The access line's fast path writes what the structlog chain in force would have."""

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

import gateway
from gateway.core.agent_keys import generate
from gateway.observability import access_log, access_plan
from gateway.observability import logging as gateway_logging
from gateway.observability.access_plan import FIELDS, Uncompiled, compile_plan
from gateway.observability.redaction import REDACTED, Redactor, redact, register_secret

SECRET = "access-line-secret-0123456789"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")


@pytest.fixture
def out(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    # a logger of its own: structlog caches a logger with the configuration of its first use
    monkeypatch.setattr(access_log, "_structlog_access", structlog.get_logger("gateway.access"))
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
    assert access_plan.iso_utc_now(ns) == expected
    assert access_plan.iso_utc_now(ns) == expected  # from the cached second


# -- the plan follows the chain, or refuses it ------------------------------------------------


def through_the_chain(chain: list[Any], generated: bool, line: dict[str, Any]) -> Any:
    """What structlog's bound logger does with ``info("request", **line)``."""
    event: Any = {**line, "event": "request"}
    for processor in chain:
        event = processor(None, "info", event)
    return event


def without_time(rendered: Any, key: str | None) -> dict[str, Any]:
    line: dict[str, Any] = json.loads(rendered)
    if key is not None:
        assert ISO_UTC.match(line.pop(key))
    return line


def add_pid(logger: Any, method_name: str, event_dict: Any) -> Any:
    event_dict["pid"] = 4242
    return event_dict


stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
level = structlog.processors.add_log_level
merge = structlog.contextvars.merge_contextvars
render_json = gateway_logging.render_json
orjson_renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)


def gateway_chain() -> list[Any]:
    gateway_logging.configure("info", "json", out=io.BytesIO())
    try:
        return list(structlog.get_config()["processors"])
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()


@pytest.mark.parametrize(
    ("chain", "time_key"),
    [
        pytest.param(gateway_chain(), "timestamp", id="the gateway's chain"),
        pytest.param(
            [merge, level, stamp, redact, orjson_renderer], "timestamp", id="JSONRenderer"
        ),
        pytest.param([level, stamp, render_json], "timestamp", id="no redaction"),
        pytest.param([stamp, level, redact, render_json], "timestamp", id="time before level"),
        pytest.param(
            [level, structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"), render_json],
            "ts",
            id="another time key",
        ),
        pytest.param([redact, level, render_json], None, id="no time, redaction first"),
        pytest.param(
            [structlog.processors.TimeStamper(fmt="iso", key="status"), render_json],
            "status",
            id="time over a field",
        ),
        pytest.param([Redactor([SECRET]), render_json], None, id="a redactor of its own"),
    ],
)
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"request_id": f"id-{SECRET}", "generated": False},
        {"method": f"X{SECRET}", "client_ip": f"unix:{SECRET}", "key_id": None},
    ],
)
def test_the_plan_renders_what_its_chain_renders(
    chain: list[Any], time_key: str | None, overrides: dict[str, Any]
) -> None:
    register_secret(SECRET)
    overrides = dict(overrides)  # shared by the cases of every chain
    generated = overrides.pop("generated", True)
    line = fields(**overrides)
    plan = compile_plan(chain, [])
    fast = without_time(plan.line(request_id_generated=generated, **line), time_key)
    generic = without_time(through_the_chain(chain, generated, line), time_key)
    assert list(fast) == list(generic)
    assert fast == generic


@pytest.mark.parametrize(
    ("chain", "refused"),
    [
        pytest.param([level, add_pid, render_json], "add_pid", id="an unknown processor"),
        pytest.param(
            [structlog.processors.TimeStamper(fmt="%Y-%m-%d"), render_json],
            "TimeStamper",
            id="another time format",
        ),
        pytest.param(
            [structlog.processors.TimeStamper(fmt="iso", utc=False), render_json],
            "TimeStamper",
            id="local time",
        ),
        pytest.param([level, structlog.dev.ConsoleRenderer()], "renderer", id="console"),
        pytest.param([level, render_json, level], "renderer", id="a processor after rendering"),
        pytest.param([], "renderer", id="empty"),
        pytest.param([redact, redact, render_json], "second redaction", id="two redactors"),
        pytest.param(
            [structlog.processors.TimeStamper(fmt="iso", key="api_key"), redact, render_json],
            "api_key",
            id="a field the redactor blanks",
        ),
    ],
)
def test_the_plan_refuses_what_it_cannot_reproduce(chain: list[Any], refused: str) -> None:
    with pytest.raises(Uncompiled, match=refused):
        compile_plan(chain, [])


def configured_with(monkeypatch: pytest.MonkeyPatch, shared: list[Any], out: io.BytesIO) -> None:
    monkeypatch.setattr(gateway_logging, "_shared_processors", lambda: shared)
    gateway_logging.configure("info", "json", out=out)


@pytest.mark.parametrize(
    "shared",
    [
        pytest.param([level, add_pid, stamp], id="a processor added"),
        pytest.param(
            [level, structlog.processors.TimeStamper(fmt="iso", utc=True, key="at")],
            id="an option changed",
        ),
        pytest.param([stamp, level], id="processors swapped"),
        pytest.param(
            [level, stamp, structlog.processors.TimeStamper(fmt="%s", key="epoch")],
            id="another stamp",
        ),
    ],
)
def test_a_changed_chain_changes_the_access_line(
    out: io.BytesIO, monkeypatch: pytest.MonkeyPatch, shared: list[Any]
) -> None:
    """Written against the fast path that rendered the line on its own: it kept writing
    the old layout whatever the chain said."""
    configured_with(monkeypatch, shared, out)
    line = fields()
    access_log.emit(request_id_generated=True, **line)
    structlog.get_logger("gateway.other").info("request", **line)
    fast, generic = written(out)
    for stamped in ("timestamp", "at", "epoch"):  # the time differs, where it goes not
        for line in (fast, generic):
            if stamped in line:
                line[stamped] = "the time"
    assert list(fast) == list(generic)
    assert fast == generic


def test_a_bound_context_variable_reaches_the_line(
    out: io.BytesIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    var = gateway_logging.context_var("access_test")
    bound = var.set("bound-value")
    try:
        access_log.emit(request_id_generated=True, **fields())
    finally:
        var.reset(bound)
    access_log.emit(request_id_generated=True, **fields())
    with_context, without = written(out)
    assert with_context["access_test"] == "bound-value"
    assert list(with_context)[: len(FIELDS) + 2] == [*FIELDS, "event", "access_test"]
    assert "access_test" not in without


def test_the_gateway_binds_context_only_through_context_var() -> None:
    """The plan looks at the variables :func:`context_var` made; one bound any other way
    would be merged by the chain and missed by the plan."""
    root = Path(gateway.__file__).parent
    binding = [
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if "bind_contextvars" in path.read_text()
    ]
    assert binding == ["observability/logging.py"]


def test_the_gateways_chain_is_compiled(out: io.BytesIO) -> None:
    access_log.emit(request_id_generated=True, **fields())
    written(out)
    assert access_log._Compiled.plan is not None
    assert access_log._Compiled.plan.render is orjson.dumps
