"""Forwarding: the upstream contract's headers, credential hygiene, failures mapped."""

import asyncio
import socket
from typing import Any

import pytest

from tests.support.harness import Gateway
from tests.support.upstreams import Script


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def code_of(resp: Any) -> str:
    return str((await resp.json(content_type=None))["code"])


async def test_contract_headers_and_no_client_credentials(gateway: Gateway, backend: Any) -> None:
    from chat_backend.app import STATS

    token = await gateway.new_token()
    key = next(iter(gateway.keys.values()))
    async with gateway.send(
        token,
        Authorization=f"Bearer {key}",
        Cookie="session=secret-cookie",
        **{
            "X-Client-Header": "nope",
            "Proxy-Authorization": "Basic eA==",
            "Accept-Encoding": "gzip, br",
        },
    ) as resp:
        assert resp.status == 200
    seen = backend.app[STATS].recent_headers[-1]
    lowered = {k.lower(): v for k, v in seen.items()}
    for name in ("x-conversation-id", "x-model-id", "x-agent-key-id", "x-request-id"):
        assert lowered[name]
    assert lowered["x-forwarded-for"] == "127.0.0.1"
    assert lowered["x-model-id"] == "demo"
    assert lowered["x-request-id"] == resp.headers["X-Request-Id"]
    forbidden = ("authorization", "cookie", "x-client-header", "proxy-authorization")
    for name in forbidden:
        assert name not in lowered
    # the relayed body is exactly what the client may read: never a compressed one
    assert "accept-encoding" not in lowered
    values = " ".join(seen.values())
    assert token not in values and key not in values and "secret-cookie" not in values


async def test_hop_by_hop_and_cookies_are_not_relayed(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.body = b'{"message": {"role": "assistant", "content": "hi"}}'
    script.extra_headers = {
        "Connection": "X-Internal-Hop",
        "X-Internal-Hop": "1",
        "Keep-Alive": "timeout=5",
        "Set-Cookie": "upstream=1",
        "X-Upstream-Version": "7",
    }
    gw: Gateway = await gateway_factory(upstream={"url": url})
    token = await gw.new_token()
    async with gw.send(token) as resp:
        assert resp.status == 200
        for header in ("X-Internal-Hop", "Keep-Alive", "Set-Cookie"):
            assert header not in resp.headers
        assert resp.headers["X-Upstream-Version"] == "7"
        assert resp.headers["Server"] == "agent-gateway"


async def test_upstream_down_is_502(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory(upstream={"url": f"http://127.0.0.1:{closed_port()}"})
    token = await gw.new_token()
    for request in (gw.send(token), gw.send(token, stream=True), gw.messages(token)):
        async with request as resp:
            assert resp.status == 502
            assert await code_of(resp) == "upstream_unavailable"


@pytest.mark.parametrize("stream", [False, True])
async def test_slow_upstream_is_504(
    gateway_factory: Any, scripted: tuple[Script, str], stream: bool
) -> None:
    script, url = scripted
    script.headers_delay = 2.0
    gw: Gateway = await gateway_factory(upstream={"url": url, "timeouts": {"read": 0.4}})
    token = await gw.new_token()
    async with gw.send(token, stream=stream) as resp:
        assert resp.status == 504
        assert await code_of(resp) == "upstream_timeout"
    async with gw.messages(token) as resp:
        assert resp.status == 504


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_that_stalls_after_its_headers_is_504(
    gateway_factory: Any, stream: bool
) -> None:
    """Headers, one byte of a JSON body, then silence: the read timeout ends it, also
    when a stream was asked for and plain JSON came back."""

    stop = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            await writer.drain()
            await stop.wait()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw: Gateway = await gateway_factory(
            upstream={"url": f"http://127.0.0.1:{port}", "timeouts": {"read": 0.4}}
        )
        token = await gw.new_token()
        async with gw.send(token, stream=stream) as resp:
            assert resp.status == 504
            assert await code_of(resp) == "upstream_timeout"
    finally:
        stop.set()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("upstream_status", "status", "code"),
    [
        (500, 502, "upstream_error"),
        (503, 502, "upstream_error"),
        (400, 502, "upstream_error"),
        (404, 404, "conversation_not_found"),
    ],
)
async def test_upstream_errors_are_mapped(
    gateway_factory: Any,
    scripted: tuple[Script, str],
    upstream_status: int,
    status: int,
    code: str,
) -> None:
    script, url = scripted
    script.status = upstream_status
    script.body = b'{"internal": "stack trace with secrets"}'
    gw: Gateway = await gateway_factory(upstream={"url": url})
    token = await gw.new_token()
    for request in (gw.send(token), gw.messages(token)):
        async with request as resp:
            assert resp.status == status
            body = await resp.text()
            assert code in body and "stack trace" not in body


async def test_oversized_upstream_answer_is_refused(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.body = b'{"x": "' + b"y" * 5000 + b'"}'
    gw: Gateway = await gateway_factory(upstream={"url": url, "max_response_bytes": 1024})
    token = await gw.new_token()
    async with gw.messages(token) as resp:
        assert resp.status == 502
        assert await code_of(resp) == "upstream_error"


async def test_connections_to_the_upstream_are_pooled(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    _script, url = scripted
    gw: Gateway = await gateway_factory(upstream={"url": url})
    token = await gw.new_token()
    for _ in range(5):
        async with gw.messages(token) as resp:
            assert resp.status == 200
    pool = gw.services.upstream.pool
    # one idle keep-alive connection serves every sequential request
    assert (pool.open_connections, pool.idle_connections) == (1, 1)
    value = gw.metrics.registry.get_sample_value
    assert value("gateway_upstream_connections", {"state": "open"}) == 1
    assert value("gateway_upstream_connections", {"state": "idle"}) == 1
    assert value("gateway_upstream_requests_waiting") == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_cors_headers_never_reach_browsers(
    gateway_factory: Any, scripted: tuple[Script, str], stream: bool
) -> None:
    """A backend with its own CORS middleware must not widen (or break) the gateway's
    per-key decision."""
    script, url = scripted
    if stream:
        script.chunks = [(0, b'data: {"delta": "hi"}\n\n')]
    script.extra_headers = {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": "X-Secret",
    }
    gw: Gateway = await gateway_factory(upstream={"url": url})
    origin = "https://shop.example"
    key = await gw.create_key(origins=(origin,))
    token = await gw.get_token(key, Origin=origin)
    async with gw.send(token, stream=stream, Origin=origin) as resp:
        assert resp.status == 200
        await resp.read()
        assert resp.headers["Access-Control-Allow-Origin"] == origin
        assert "Access-Control-Allow-Credentials" not in resp.headers
        assert "X-Secret" not in resp.headers.get("Access-Control-Expose-Headers", "")
    async with gw.send(token, stream=stream) as resp:  # no Origin: no CORS fields at all
        assert resp.status == 200
        await resp.read()
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
