"""The admin listener: /metrics, /healthz, /readyz against real dependencies."""

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.web import admin as admin_module
from gateway.web.state import HEALTH
from tests.support.harness import (
    Gateway,
    make_config,
    start_admin,
    start_gateway,
    stop_gateway,
)
from tests.support.upstreams import Script


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def admin_of() -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(gateway: Gateway) -> str:
        server = await start_admin(gateway)
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


async def get(url: str, **headers: str) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers


async def test_metrics_are_served_in_prometheus_text_format(
    gateway: Gateway, admin_of: Any
) -> None:
    admin = await admin_of(gateway)
    token = await gateway.new_token()
    async with gateway.send(token) as resp:
        assert resp.status == 200
    status, body, headers = await get(admin + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'gateway_tokens_issued_total{model="demo"} 1.0' in body
    assert "# TYPE gateway_http_request_duration_seconds histogram" in body
    assert token not in body
    status, body, headers = await get(
        admin + "/metrics", Accept="application/openmetrics-text; version=1.0.0"
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


async def test_liveness_and_readiness_when_all_is_well(gateway: Gateway, admin_of: Any) -> None:
    admin = await admin_of(gateway)
    status, body, _ = await get(admin + "/healthz")
    assert status == 200 and '"ok"' in body
    status, body, _ = await get(admin + "/readyz")
    assert status == 200, body
    assert '"store":"ok"' in body and '"upstream":"ok"' in body and '"draining":"false"' in body
    assert gateway.sample("gateway_dependency_up", dependency="store") == 1


async def test_not_ready_while_draining_and_answers_close_connections(
    gateway: Gateway, admin_of: Any
) -> None:
    admin = await admin_of(gateway)
    gateway.app[HEALTH].start_draining()
    status, body, _ = await get(admin + "/readyz")
    assert status == 503 and '"draining":"true"' in body
    assert (await get(admin + "/healthz"))[0] == 200  # still alive
    token = await gateway.new_token()
    async with gateway.send(token) as resp:
        assert resp.status == 200  # draining still serves
        assert resp.headers["Connection"] == "close"
    assert gateway.sample("gateway_draining") == 1


async def test_not_ready_when_the_store_is_unreachable(
    tmp_path: Path, backend_url: str, admin_of: Any
) -> None:
    config = make_config(tmp_path, backend_url, redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    gw = await start_gateway(config)
    try:
        status, body, _ = await get(await admin_of(gw) + "/readyz")
        assert status == 503
        assert '"store":"ConnectionError"' in body and '"upstream":"ok"' in body
        assert "redis://" not in body
        assert gw.sample("gateway_dependency_up", dependency="store") == 0
    finally:
        await stop_gateway(gw)


async def test_not_ready_when_the_upstream_is_unreachable(
    gateway_factory: Any, admin_of: Any
) -> None:
    gw: Gateway = await gateway_factory(upstream={"url": f"http://127.0.0.1:{closed_port()}"})
    status, body, _ = await get(await admin_of(gw) + "/readyz")
    assert status == 503
    assert '"upstream":"ConnectionRefusedError"' in body and '"store":"ok"' in body


async def test_upstream_health_path_is_used_and_cached(
    gateway_factory: Any, scripted: tuple[Script, str], admin_of: Any
) -> None:
    script, url = scripted
    gw: Gateway = await gateway_factory(
        upstream={"url": url, "health_path": "/internal/conversations/health/messages"}
    )
    admin = await admin_of(gw)
    for _ in range(3):
        status, _body, _ = await get(admin + "/readyz")
        assert status == 200
    # three probes within the cache period: the upstream saw one health request
    assert len(script.seen_headers) == 1

    script.status = 503
    other: Gateway = await gateway_factory(
        upstream={"url": url, "health_path": "/internal/conversations/health/messages"}
    )
    status, body, _ = await get(await admin_of(other) + "/readyz")
    assert status == 503 and '"upstream":"status_503"' in body


async def test_a_store_outage_does_not_unready_a_fail_open_replica(
    tmp_path: Path, backend_url: str, admin_of: Any
) -> None:
    """Failing open, the replica keeps serving under local limits, so it stays ready."""
    config = make_config(
        tmp_path,
        backend_url,
        redis_url=f"redis://127.0.0.1:{closed_port()}/0",
        policies="on_store_error: fail_open\n",
    )
    gw = await start_gateway(config)
    try:
        status, body, _ = await get(await admin_of(gw) + "/readyz")
        assert status == 200, body
        assert '"store":"ConnectionError (not required)"' in body
        token = await gw.new_token()
        async with gw.send(token) as resp:  # and it serves
            assert resp.status == 200
    finally:
        await stop_gateway(gw)


async def test_a_probe_after_a_quiet_spell_waits_for_fresh_checks(
    gateway_factory: Any,
    scripted: tuple[Script, str],
    admin_of: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checks run on the public loop when a probe finds them old; a probe finding
    them older than STALE_SECONDS waits for the new ones instead of answering the last."""
    monkeypatch.setattr(admin_module, "UPSTREAM_CHECK_TTL", 0.0)  # no cached upstream result
    script, url = scripted
    gw: Gateway = await gateway_factory(
        upstream={"url": url, "health_path": "/internal/conversations/health/messages"}
    )
    admin = await admin_of(gw)
    assert (await get(admin + "/readyz"))[0] == 200  # the checks run at startup
    script.status = 503
    monkeypatch.setattr(admin_module, "REFRESH_SECONDS", 0.0)
    monkeypatch.setattr(admin_module, "STALE_SECONDS", 0.0)
    status, body, _ = await get(admin + "/readyz")
    assert status == 503 and '"upstream":"status_503"' in body
