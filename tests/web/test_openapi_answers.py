"""Answers that generated requests cannot provoke, checked against docs/openapi.json by
schemathesis' checks: a failed, slow or stopped upstream, a stream the upstream abandons,
a state store that is down, an over-large body, a stolen token and the penalty box."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from pytest_redis.executor import RedisExecutor

from tests.support.harness import (
    MESSAGES_URL,
    SEND_URL,
    TOKEN_URL,
    Gateway,
    make_config,
    start_gateway,
    stop_gateway,
)
from tests.support.processes import free_port
from tests.support.raw_http import Answer, Connection, request
from tests.support.redis_servers import dedicated_redis
from tests.support.upstreams import Script

DOCUMENT = Path(__file__).resolve().parents[2] / "gateway" / "static" / "openapi.json"
schema = schemathesis.openapi.from_path(str(DOCUMENT))
TOKEN_PATH = "/v1/chat/conversation/public/message/token/{model_id}"
MESSAGES_PATH = "/v1/chat/conversation/public/messages/{token}"
#: everything the document says of an answer (a server error is expected here)
CONFORMANCE = [
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]


def documented(path: str, method: str, response: httpx.Response) -> dict[str, Any]:
    """Check ``response`` against what the document says of ``method path``; its body."""
    names = [name.strip("{}") for name in path.split("/") if name.startswith("{")]
    case = schema[path][method].Case(path_parameters=dict.fromkeys(names, "x"))
    case.validate_response(response, checks=CONFORMANCE)
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        problem: dict[str, Any] = response.json()
        return problem
    return {}


async def send(gw: Gateway, body: Any, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(headers=gw.headers(headers), timeout=10) as client:
        return await client.post(gw.url + SEND_URL, json=body)


async def read(gw: Gateway, token: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(headers=gw.headers(headers), timeout=10) as client:
        return await client.get(gw.url + MESSAGES_URL.format(token=token))


async def read_and_send(gw: Gateway, token: str) -> list[tuple[str, str, httpx.Response]]:
    """Both message routes with ``token``: (path, method, answer) of each."""
    return [
        (MESSAGES_PATH, "get", await read(gw, token)),
        (SEND_URL, "post", await send(gw, {"client_token": token, "message": "hi"})),
    ]


async def test_upstream_failures(gateway_factory: Any, scripted: tuple[Script, str]) -> None:
    script, url = scripted
    gw: Gateway = await gateway_factory(upstream={"url": url, "timeouts": {"read": 0.5}})
    token = await gw.new_token()

    script.status = 500
    for path, method, response in await read_and_send(gw, token):
        assert documented(path, method, response)["code"] == "upstream_error"

    script.status, script.headers_delay = 200, 2.0
    response = await send(gw, {"client_token": token, "message": "hi"})
    assert documented(SEND_URL, "post", response)["code"] == "upstream_timeout"
    response = await read(gw, token)
    assert documented(MESSAGES_PATH, "get", response)["code"] == "upstream_timeout"


async def test_a_stream_the_upstream_abandons_ends_with_a_documented_error_event(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.chunks = [(0, b'data: {"delta": "a"}\n\n'), (3.0, b'data: {"delta": "late"}\n\n')]
    gw: Gateway = await gateway_factory(upstream={"url": url, "timeouts": {"stream_idle": 0.5}})
    token = await gw.new_token()
    response = await send(gw, {"client_token": token, "message": "hi", "stream": True})
    documented(SEND_URL, "post", response)
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text.endswith("\n\n") and "event: error\n" in response.text
    error = json.loads(response.text.rsplit("data: ", 1)[1])
    assert error["code"] == "upstream_timeout"


async def test_a_stopped_upstream(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(upstream={"url": f"http://127.0.0.1:{free_port()}"})
    token = await gw.new_token()
    for path, method, response in await read_and_send(gw, token):
        assert documented(path, method, response)["code"] == "upstream_unavailable"


@pytest.fixture
def dedicated(tmp_path: Path) -> Iterator[RedisExecutor]:
    datadir = tmp_path / "redis"
    datadir.mkdir()
    executor = dedicated_redis(datadir)
    yield executor
    if executor.running():
        executor.stop()


async def test_a_state_store_that_is_down(
    tmp_path: Path, backend_url: str, dedicated: RedisExecutor
) -> None:
    redis_url = f"redis://127.0.0.1:{dedicated.port}/0"
    limits = """
policies:
  - name: per-ip
    match: {routes: [token, messages, send]}
    partition: [client_ip]
    limit: {rate: 1000, per: 1m, burst: 1000}
"""
    config = make_config(tmp_path, backend_url, redis_url=redis_url, policies=limits)
    gw = await start_gateway(config)
    try:
        await _store_down(gw, dedicated)
    finally:
        await stop_gateway(gw)


async def _store_down(gw: Gateway, dedicated: RedisExecutor) -> None:
    key = await gw.create_key()
    token = await gw.get_token(key)
    dedicated.stop()
    async with httpx.AsyncClient(headers=gw.headers(), timeout=10) as client:
        issued = await client.get(
            gw.url + TOKEN_URL.format(model="demo"), headers={"Authorization": f"Bearer {key}"}
        )
    assert documented(TOKEN_PATH, "get", issued)["code"] == "store_unavailable"
    for path, method, response in await read_and_send(gw, token):
        assert documented(path, method, response)["code"] == "store_unavailable"
        assert int(response.headers["Retry-After"]) >= 1


PENALTY = """
binding:
  bind_at: first_use
  components: [ip_prefix, user_agent]
  action: revoke
penalty_box:
  subject: client_ip
  window: 1m
  threshold: 2
  cooldown: 1m
  count: [invalid_token]
"""


async def test_refusals_of_bodies_tokens_and_clients(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(policies=PENALTY)
    token, unused = await gw.new_token(), await gw.new_token()

    too_large = {"client_token": token, "message": "x" * gw.config.server.max_body_bytes}
    response = await send(gw, too_large)
    assert documented(SEND_URL, "post", response)["code"] == "payload_too_large"

    response = await send(gw, {"client_token": token, "message": "hi"})
    assert response.status_code == 200
    documented(SEND_URL, "post", response)
    stolen = await read(gw, token, **{"User-Agent": "another-client/1.0"})
    assert documented(MESSAGES_PATH, "get", stolen)["code"] == "token_reuse_suspected"
    revoked = await send(gw, {"client_token": token, "message": "hi"})
    assert documented(SEND_URL, "post", revoked)["code"] == "token_revoked"

    for _ in range(2):  # forged tokens, until the client sits in the penalty box
        forged = await read(gw, "a.b.c")
        assert documented(MESSAGES_PATH, "get", forged)["code"] == "token_invalid"
    boxed = await read(gw, unused)
    assert documented(MESSAGES_PATH, "get", boxed)["code"] == "rate_limited"
    assert "RateLimit" not in boxed.headers  # no policy refused it: the box did


def as_httpx(answer: Answer, method: str, url: str) -> httpx.Response:
    """An answer read off a raw socket, as schemathesis' checks take it."""
    response = httpx.Response(
        answer.status,
        headers=list(answer.headers.items()),
        content=answer.body,
        request=httpx.Request(method, url),
    )
    response.elapsed = datetime.timedelta(0)
    return response


async def listener_answer(port: int, data: bytes) -> Answer:
    conn = await Connection.open(port)
    try:
        await conn.send(data)
        return await conn.answer()
    finally:
        conn.close()


async def test_answers_of_the_listener(gateway_factory: Any) -> None:
    """Deadlines, head sizes, expectations and connection caps answer before any route
    runs; the document gives them on every operation."""
    gw: Gateway = await gateway_factory(
        server={"header_timeout_seconds": 0.3, "max_connections_per_client": 2}
    )
    port, url = gw.server.port, gw.url + SEND_URL
    token_path = TOKEN_URL.format(model="demo")
    answers = {
        "request_timeout": (TOKEN_PATH, "get", request(path=token_path)[:20]),
        "header_fields_too_large": (
            MESSAGES_PATH,
            "get",
            request(path="/x", headers={f"X-{n}": "y" * 4000 for n in range(10)}),
        ),
        "expectation_failed": (
            SEND_URL,
            "post",
            request(
                "POST", SEND_URL, {"Expect": "gold", "Content-Type": "application/json"}, b"{}"
            ),
        ),
    }
    for code, (path, method, data) in answers.items():
        answer = await listener_answer(port, data)
        assert documented(path, method, as_httpx(answer, method, url))["code"] == code

    held = [await Connection.open(port) for _ in range(2)]
    try:
        answer = await listener_answer(port, b"")
        for path, method in ((SEND_URL, "post"), ("/widget.js", "get")):
            problem = documented(path, method, as_httpx(answer, method, url))
            assert problem["code"] == "too_many_connections"
    finally:
        for conn in held:
            conn.close()


async def test_the_total_connection_cap_is_documented(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(server={"max_connections": 1})
    held = await Connection.open(gw.server.port)
    try:
        answer = await listener_answer(gw.server.port, b"")
    finally:
        held.close()
    for path, method in ((MESSAGES_PATH, "get"), (TOKEN_PATH, "get"), ("/openapi.json", "head")):
        response = as_httpx(answer, method.upper(), gw.url + "/openapi.json")
        assert documented(path, method, response)["code"] == "overloaded"
