"""Metrics: what each path records, with bounded labels and never a secret."""

import asyncio
import itertools
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, get_args

import pytest
from prometheus_client import Counter, Gauge, Histogram, generate_latest

from gateway.keystore.base import FindOutcome, LookupOutcome
from gateway.observability import metrics as metrics_module
from gateway.observability.labels import OTHER, Vocabulary, status_class
from gateway.observability.metrics import Metrics
from gateway.store.errors import StoreCall
from tests.support.harness import (
    TOKEN_URL,
    Gateway,
    make_config,
    start_gateway,
    stop_gateway,
)
from tests.support.upstreams import Script

TOKEN_ROUTE = "/v1/chat/conversation/public/message/token/{model_id}"
MESSAGES_ROUTE = "/v1/chat/conversation/public/messages/{token}"
SEND_ROUTE = "/v1/chat/conversation/public/message"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exposition(gw: Gateway) -> str:
    return generate_latest(gw.metrics.registry).decode()


async def test_requests_are_counted_by_route_template_and_status(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory()
    key = await gw.create_key()
    token = await gw.get_token(key)
    async with gw.send(token) as resp:
        assert resp.status == 200
    async with gw.messages(token) as resp:
        assert resp.status == 200
    async with gw.http.get(gw.url + "/nowhere/" + token) as resp:
        assert resp.status == 404

    assert gw.sample("gateway_http_requests_total", route=TOKEN_ROUTE, method="GET", status="200")
    assert gw.sample("gateway_http_requests_total", route=SEND_ROUTE, method="POST", status="200")
    assert gw.sample(
        "gateway_http_requests_total", route=MESSAGES_ROUTE, method="GET", status="200"
    )
    assert gw.sample("gateway_http_requests_total", route="unmatched", method="GET", status="404")
    assert gw.sample(
        "gateway_http_request_duration_seconds_count",
        route=SEND_ROUTE,
        method="POST",
        status_class="2xx",
    )
    assert gw.sample("gateway_http_problems_total", route="unmatched", code="not_found") == 1
    assert gw.sample("gateway_http_requests_in_flight") == 0
    assert gw.sample("gateway_tokens_issued_total", model="demo") == 1
    assert gw.sample("gateway_store_operation_duration_seconds_count", operation="admit") == 2
    assert gw.sample(
        "gateway_upstream_request_duration_seconds_count",
        operation="send_message",
        status_class="2xx",
    )

    text = exposition(gw)
    for secret in (key, token, key.split("_")[2], "127.0.0.1", gw.services.config.models["demo"]):
        if isinstance(secret, str):
            assert secret not in text


async def test_token_refusals_by_reason_and_suspicious_keys(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory()
    key = await gw.create_key(("demo",))
    url = gw.url + TOKEN_URL.format(model="demo")
    attempts = [
        ({}, "missing_credentials"),
        ({"Authorization": "Bearer pak_nope"}, "malformed"),
        ({"Authorization": f"Bearer {key[:-1]}{'A' if key[-1] != 'A' else 'B'}"}, "malformed"),
    ]
    for headers, _ in attempts:
        async with gw.http.get(url, headers=gw.headers(headers)) as resp:
            assert resp.status in (401, 404)
    async with gw.http.get(
        gw.url + TOKEN_URL.format(model="other"),
        headers=gw.headers({"Authorization": f"Bearer {key}"}),
    ) as resp:
        assert resp.status == 404
    await gw.get_token(key)
    await gw.get_token(key)

    assert gw.sample("gateway_tokens_refused_total", reason="missing_credentials") == 1
    assert gw.sample("gateway_tokens_refused_total", reason="malformed") == 2
    assert gw.sample("gateway_tokens_refused_total", reason="model_not_found") == 1
    assert gw.sample("gateway_suspicious_events_total", reason="invalid_key") == 2
    assert gw.sample("gateway_key_verifications_total", result="malformed") == 2
    # one argon2 verification, then the verified-key cache
    assert gw.sample("gateway_key_verifications_total", result="verified") == 1
    assert gw.sample("gateway_key_verifications_total", result="cache_hit") == 2
    assert gw.sample("gateway_tokens_issued_total", model="demo") == 2


async def test_reuse_and_revocation_are_counted(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory()
    token = await gw.new_token()
    async with gw.send(token) as resp:
        assert resp.status == 200
    async with gw.messages(token, **{"User-Agent": "curl/8"}) as resp:
        assert resp.status == 403
    async with gw.messages(token) as resp:
        assert resp.status == 403
    async with gw.messages(token[:-4] + "AAAA") as resp:
        assert resp.status == 403

    refused = "gateway_token_uses_refused_total"
    assert gw.sample(refused, reason="token_reuse_suspected") == 1
    assert gw.sample(refused, reason="token_revoked") == 1
    assert gw.sample(refused, reason="token_invalid") == 1
    assert gw.sample("gateway_suspicious_events_total", reason="token_reuse") == 1
    assert gw.sample("gateway_suspicious_events_total", reason="invalid_token") == 1
    assert gw.sample(
        "gateway_http_problems_total", route=MESSAGES_ROUTE, code="token_reuse_suspected"
    )


async def test_streams_time_to_first_byte_and_outcome(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory()
    token = await gw.new_token()
    async with gw.send(token, "one two three", stream=True) as resp:
        assert resp.status == 200
        assert b"event: done" in await resp.read()
    assert gw.sample("gateway_streams_total", outcome="completed") == 1
    assert gw.sample("gateway_stream_time_to_first_byte_seconds_count") == 1
    assert gw.sample("gateway_streams_in_flight") == 0


async def test_a_stream_the_client_abandons_is_499_and_client_disconnected(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.chunks = [(0.1, b'data: {"delta": "x"}\n\n') for _ in range(50)]
    gw: Gateway = await gateway_factory(upstream={"url": url})
    token = await gw.new_token()
    in_flight: list[tuple[float, float]] = []
    await gw.stream_then_hang_up(
        token,
        on_first_event=lambda: in_flight.append(
            (gw.sample("gateway_streams_in_flight"), gw.sample("gateway_http_requests_in_flight"))
        ),
    )
    assert in_flight == [(1, 1)]
    await asyncio.wait_for(script.cancelled.wait(), timeout=3)
    for _ in range(100):
        if gw.sample("gateway_streams_total", outcome="client_disconnected"):
            break
        await asyncio.sleep(0.02)
    assert gw.sample("gateway_streams_total", outcome="client_disconnected") == 1
    assert gw.sample("gateway_streams_in_flight") == 0
    assert gw.sample("gateway_http_requests_in_flight") == 0
    assert gw.sample("gateway_http_requests_total", route=SEND_ROUTE, method="POST", status="499")


async def test_upstream_failures_by_reason(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    down: Gateway = await gateway_factory(upstream={"url": f"http://127.0.0.1:{closed_port()}"})
    token = await down.new_token()
    async with down.messages(token) as resp:
        assert resp.status == 502
    errors = "gateway_upstream_errors_total"
    assert down.sample(errors, operation="get_messages", reason="unavailable") == 1
    assert down.sample(
        "gateway_upstream_request_duration_seconds_count",
        operation="get_messages",
        status_class="error",
    )

    script, url = scripted
    script.status = 500
    failing: Gateway = await gateway_factory(upstream={"url": url})
    token = await failing.new_token()
    async with failing.send(token) as resp:
        assert resp.status == 502
    assert failing.sample(errors, operation="send_message", reason="status_5xx") == 1

    script.status = 200
    script.headers_delay = 1.0
    slow: Gateway = await gateway_factory(upstream={"url": url, "timeouts": {"read": 0.2}})
    token = await slow.new_token()
    async with slow.send(token) as resp:
        assert resp.status == 504
    assert slow.sample(errors, operation="send_message", reason="timeout") == 1


async def test_store_failures_are_counted(tmp_path: Any, backend_url: str) -> None:
    dead = f"redis://127.0.0.1:{closed_port()}/0"
    config = make_config(tmp_path, backend_url, redis_url=dead)
    gw = await start_gateway(config)
    try:
        token = await gw.new_token()
        async with gw.send(token) as resp:
            assert resp.status == 503
        assert gw.sample("gateway_store_errors_total", operation="admit", error="connection") == 1
        assert gw.sample("gateway_store_operation_duration_seconds_count", operation="admit") == 1
        assert gw.sample("gateway_http_problems_total", route=SEND_ROUTE, code="store_unavailable")
    finally:
        await stop_gateway(gw)


async def test_a_busy_loop_is_counted_not_blamed_on_the_store(
    tmp_path: Any, backend_url: str, redis_url: str
) -> None:
    """Every loop turn spends 40 ms elsewhere (a flood, long collections): the store calls
    outlast their 50 ms deadline in wall time, yet Redis answered at once. The requests
    pass, no store error is counted, and the late deadlines are."""
    config = make_config(tmp_path, backend_url, redis_url=redis_url, store={"timeout_ms": 50})
    gw = await start_gateway(config)
    loop = asyncio.get_running_loop()
    blocker: asyncio.Handle | None = None

    def block() -> None:
        nonlocal blocker
        time.sleep(0.04)
        blocker = loop.call_soon(block)

    statuses = []
    try:
        token = await gw.new_token()
        async with gw.send(token) as resp:  # the connection to Redis is up
            assert resp.status == 200
        blocker = loop.call_soon(block)
        for _ in range(10):  # until a deadline has fired late (nearly always the first)
            async with gw.send(token) as resp:
                statuses.append(resp.status)
            if gw.sample("gateway_store_deadline_extended_total"):
                break
    finally:
        if blocker is not None:
            blocker.cancel()
        await stop_gateway(gw)
    assert set(statuses) == {200}, statuses
    assert gw.sample("gateway_store_deadline_extended_total") >= 1
    for error in ("timeout", "connection", "circuit_open", "other"):
        assert gw.sample("gateway_store_errors_total", operation="admit", error=error) == 0


async def test_two_applications_in_one_process_keep_their_own_counts(
    gateway_factory: Any,
) -> None:
    first: Gateway = await gateway_factory()
    second: Gateway = await gateway_factory()
    await first.new_token()
    assert first.sample("gateway_tokens_issued_total", model="demo") == 1
    assert second.sample("gateway_tokens_issued_total", model="demo") == 0


def test_counters_for_alerts_exist_at_zero() -> None:
    text = generate_latest(Metrics().registry).decode()
    for line in (
        'gateway_suspicious_events_total{reason="token_reuse"} 0.0',
        'gateway_store_errors_total{error="timeout",operation="admit"} 0.0',
        'gateway_store_fail_open_total{operation="admit"} 0.0',
        'gateway_upstream_errors_total{operation="send_message",reason="unavailable"} 0.0',
        'gateway_build_info{version="0.1.0"} 1.0',
    ):
        assert line in text


#: every labelled metric whose values are known in advance, and the ``Literal`` of each of
#: its labels: all their series exist at start
PRE_INITIALISED: dict[str, dict[str, Any]] = {
    "gateway_connections_refused": {"reason": metrics_module.ConnectionRefusal},
    "gateway_connections_timed_out": {"phase": metrics_module.ConnectionPhase},
    "gateway_upstream_errors": {
        "operation": metrics_module.UpstreamOperation,
        "reason": metrics_module.UpstreamErrorReason,
    },
    "gateway_streams": {"outcome": metrics_module.StreamOutcome},
    "gateway_tokens_refused": {"reason": metrics_module.TokenRefusal},
    "gateway_key_lookups": {"outcome": LookupOutcome},
    "gateway_suspicious_events": {"reason": metrics_module.SuspiciousReason},
    "gateway_token_renewals": {"outcome": metrics_module.RenewalOutcome},
    "gateway_token_family_revocations": {"reason": metrics_module.FamilyRevocation},
    "gateway_dpop_proofs_refused": {"reason": metrics_module.ProofRefusal},
    "gateway_penalty_box_events": {"event": metrics_module.PenaltyEvent},
    "gateway_store_errors": {
        "operation": metrics_module.WatchedStoreOperation,
        "error": metrics_module.StoreErrorKind,
    },
    "gateway_store_fail_open": {"operation": metrics_module.WatchedStoreOperation},
    "gateway_config_reloads": {
        "kind": metrics_module.ReloadKind,
        "result": metrics_module.ReloadResult,
    },
    "gateway_requests_shed": {"reason": metrics_module.ShedReason},
    "gateway_tokens_flagged": {"binding": metrics_module.FlaggedBinding},
}
#: labelled metrics whose series appear with use: routes, models, policies, codes...
CREATED_BY_USE = {
    "gateway_http_requests",
    "gateway_http_request_duration_seconds",
    "gateway_http_problems",
    "gateway_upstream_request_duration_seconds",
    "gateway_upstream_connections",
    "gateway_tokens_issued",
    "gateway_token_uses_refused",
    "gateway_key_verifications",
    "gateway_ratelimit_decisions",
    "gateway_store_operation_duration_seconds",
    "gateway_config_last_reload_success_timestamp_seconds",
    "gateway_dependency_up",
    "gateway_overload_in_flight",  # requests and streams, when shedding is on
}


def test_every_labelled_series_with_known_values_exists_at_start() -> None:
    """The series are made from the ``Literal`` types: a value added to one is created at
    zero too, and a new labelled metric must be listed here, one way or the other."""
    metrics = Metrics()
    labelled = {
        metric._name: metric
        for metric in vars(metrics).values()
        if isinstance(metric, Counter | Gauge | Histogram) and metric._labelnames
    }
    assert set(labelled) == set(PRE_INITIALISED) | CREATED_BY_USE
    for name, literals in PRE_INITIALISED.items():
        assert labelled[name]._labelnames == tuple(literals)
        expected = {
            tuple(zip(literals, values, strict=True))
            for values in itertools.product(*(get_args(literal) for literal in literals.values()))
        }
        (family,) = (f for f in metrics.registry.collect() if f.name == name)
        found = {
            tuple(sorted(sample.labels.items(), key=lambda item: list(literals).index(item[0])))
            for sample in family.samples
            if sample.name.endswith("_total") and sample.value == 0
        }
        assert found == expected, name


METRICS_DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_the_documented_label_values_are_the_series_created() -> None:
    """Where docs/metrics.md lists a label's values, they are exactly the ``Literal``'s:
    an alert on a documented value (``request_id_mismatch``) must find its series at zero,
    and an undocumented value is a series nobody knows to watch."""
    rows = {
        match[1]: match[2]
        for match in re.finditer(
            r"^\| `(gateway_\w+)` \| \w+ \| ([^|]*)\|", METRICS_DOC.read_text(), re.M
        )
    }
    checked = 0
    for name, literals in PRE_INITIALISED.items():
        (row,) = (cells for metric, cells in rows.items() if metric.removesuffix("_total") == name)
        for label, literal in literals.items():
            listed = re.search(rf"`{label}` \(([^)]*)\)", row)
            if listed is None:
                continue  # the row names the label without listing its values
            assert set(re.findall(r"`(\w+)`", listed[1])) == set(get_args(literal)), (name, label)
            checked += 1
    assert checked >= 10


def test_key_lookup_outcomes_are_the_key_stores_but_snapshot() -> None:
    assert set(get_args(LookupOutcome)) == set(get_args(FindOutcome)) - {"snapshot"}


def test_helpers_for_policies_and_reloads() -> None:
    metrics = Metrics()
    metrics.ratelimit_decision("token-per-ip", "allowed")
    metrics.ratelimit_decision("per_key_send", "shadow_limited")
    metrics.ratelimit_decision("Not A Policy Name 203.0.113.7", "limited")
    metrics.penalty_box_event("entered")
    metrics.penalty_box_event("refused")
    metrics.store_failed_open()
    metrics.config_reload("policies", ok=True)
    metrics.config_reload("policies", ok=False)
    value = metrics.registry.get_sample_value
    # policy names as the policy language spells them; anything else is "other"
    assert value(
        "gateway_ratelimit_decisions_total", {"policy": "token-per-ip", "outcome": "allowed"}
    )
    assert value("gateway_ratelimit_decisions_total", {"policy": OTHER, "outcome": "limited"})
    assert value(
        "gateway_ratelimit_decisions_total", {"policy": "per_key_send", "outcome": "shadow_limited"}
    )
    assert value("gateway_penalty_box_events_total", {"event": "entered"}) == 1
    assert value("gateway_suspicious_events_total", {"reason": "penalty_box"}) == 1
    assert value("gateway_store_fail_open_total", {"operation": "admit"}) == 1
    assert value("gateway_config_reloads_total", {"kind": "policies", "result": "failure"}) == 1
    assert value("gateway_config_last_reload_success_timestamp_seconds", {"kind": "policies"})


async def test_store_call_classifies_errors() -> None:
    metrics = Metrics()
    with pytest.raises(TimeoutError), StoreCall(metrics, "admit"):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)
    with pytest.raises(ConnectionRefusedError), StoreCall(metrics, "admit"):
        raise ConnectionRefusedError
    with pytest.raises(ValueError, match="odd"), StoreCall(metrics, "admit"):
        raise ValueError("odd reply")
    value = metrics.registry.get_sample_value
    for error in ("timeout", "connection", "other"):
        assert value("gateway_store_errors_total", {"operation": "admit", "error": error}) == 1
    assert value("gateway_store_operation_duration_seconds_count", {"operation": "admit"}) == 3


@pytest.mark.parametrize(
    ("word", "label"),
    [
        ("token_reuse", "token_reuse"),
        ("203.0.113.7", OTHER),
        ("pak_0123456789AB_secret", OTHER),
        ("eyJhbGciOiJIUzI1NiJ9", OTHER),
        ("Upper", OTHER),
        ("x" * 60, OTHER),
        ("", OTHER),
    ],
)
def test_vocabulary_accepts_only_short_snake_case_words(word: str, label: str) -> None:
    assert Vocabulary()(word) == label


def test_vocabulary_caps_distinct_values() -> None:
    words = Vocabulary(limit=3, known=("a",))
    assert [words(w) for w in ("b", "c", "d", "a", "b")] == ["b", "c", OTHER, "a", "b"]


def test_status_class() -> None:
    assert [status_class(s) for s in (200, 404, 499, 503, 42)] == [
        "2xx",
        "4xx",
        "4xx",
        "5xx",
        OTHER,
    ]


def test_observability_does_not_import_the_store() -> None:
    """The store reports to the metrics (``StoreCall``), not the other way round."""
    code = (
        "import pkgutil, sys, importlib, gateway.observability as o\n"
        "for m in pkgutil.iter_modules(o.__path__): importlib.import_module(f'{o.__name__}.{m.name}')\n"
        "print(sorted(n for n in sys.modules if n.startswith('gateway.store')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
