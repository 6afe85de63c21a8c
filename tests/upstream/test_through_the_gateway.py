"""Forwarding through a whole gateway, with each upstream client (``client``, from this
folder's conftest): the upstream contract's headers, credential hygiene, failures mapped."""

import asyncio
import socket
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.oauth.conftest import idp, key_pool, oauth_section  # noqa: F401  (fixtures)
from tests.support.harness import Gateway
from tests.support.identity_provider import IdentityProvider
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


#: what an upstream could set on the gateway's origin, and two fields that describe the body
HOSTILE_HEADERS = {
    "Strict-Transport-Security": "max-age=0",
    "WWW-Authenticate": 'Basic realm="upstream"',
    "Location": "https://evil.example/",
    "Refresh": "0; url=https://evil.example/",
    "X-Accel-Redirect": "/internal/secret",
    "Set-Cookie": "upstream=1",
    "Content-Security-Policy": "script-src *",
    "Link": "<https://evil.example/x.js>; rel=preload",
    "Cache-Control": "public, max-age=31536000",
    "Connection": "X-Internal-Hop",
    "X-Internal-Hop": "1",
    "Keep-Alive": "timeout=5",
    "X-Upstream-Version": "7",
    "Content-Language": "fr",
    "ETag": '"v1"',
}
RELAYED = {"Content-Language": "fr", "ETag": '"v1"'}
PRIVATE_SCRIPTED = "/v1/scripted"


def upstream_fields(resp: Any) -> dict[str, str]:
    """The response fields that could only have come from the upstream (Cache-Control is
    the gateway's own: checked apart)."""
    return {
        name: resp.headers[name]
        for name in HOSTILE_HEADERS
        if name in resp.headers and name != "Cache-Control"
    }


@pytest.mark.parametrize("route", ["send", "stream", "messages", "private"])
async def test_only_allowed_response_headers_reach_clients(
    gateway_factory: Any,
    scripted: tuple[Script, str],
    idp: IdentityProvider,  # noqa: F811
    client: str,
    route: str,
) -> None:
    script, url = scripted
    script.body = b'{"message": {"role": "assistant", "content": "hi"}}'
    if route == "stream":
        script.chunks = [(0, b'data: {"delta": "hi"}\n\n')]
    script.extra_headers = dict(HOSTILE_HEADERS)
    private = {"prefix": PRIVATE_SCRIPTED, "upstream_prefix": "/internal/conversations/x/messages"}
    gw: Gateway = await gateway_factory(
        upstream={"url": url, "client": client}, oauth=oauth_section(idp, routes=[private])
    )
    token = await gw.new_token()
    if route == "private":
        request = gw.http.get(
            gw.url + PRIVATE_SCRIPTED, headers={"Authorization": f"Bearer {idp.sign()}"}
        )
    elif route == "messages":
        request = gw.messages(token)
    else:
        request = gw.send(token, stream=route == "stream")
    async with request as resp:
        assert resp.status == 200
        await resp.read()
        assert upstream_fields(resp) == RELAYED
        assert resp.headers["Server"] == "agent-gateway"
        assert "no-store" in resp.headers["Cache-Control"]
        seen = {name.lower(): value for name, value in script.seen_headers[-1].items()}
        assert resp.headers["X-Request-Id"] == seen["x-request-id"]


async def test_operators_may_relay_more_headers(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.extra_headers = dict(HOSTILE_HEADERS)
    gw: Gateway = await gateway_factory(
        upstream={"url": url, "relay_headers": ["X-Upstream-Version"]}
    )
    token = await gw.new_token()
    async with gw.send(token) as resp:
        assert upstream_fields(resp) == {**RELAYED, "X-Upstream-Version": "7"}


async def test_upstream_down_is_502(gateway_factory: Any, client: str) -> None:
    gw: Gateway = await gateway_factory(
        upstream={"url": f"http://127.0.0.1:{closed_port()}", "client": client}
    )
    token = await gw.new_token()
    for request in (gw.send(token), gw.send(token, stream=True), gw.messages(token)):
        async with request as resp:
            assert resp.status == 502
            assert await code_of(resp) == "upstream_unavailable"


@pytest.mark.parametrize("stream", [False, True])
async def test_slow_upstream_is_504(
    gateway_factory: Any, scripted: tuple[Script, str], stream: bool, client: str
) -> None:
    script, url = scripted
    script.headers_delay = 2.0
    gw: Gateway = await gateway_factory(
        upstream={"url": url, "timeouts": {"read": 0.4}, "client": client}
    )
    token = await gw.new_token()
    async with gw.send(token, stream=stream) as resp:
        assert resp.status == 504
        assert await code_of(resp) == "upstream_timeout"
    async with gw.messages(token) as resp:
        assert resp.status == 504


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_that_stalls_after_its_headers_is_504(
    gateway_factory: Any, stream: bool, client: str
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
            upstream={
                "url": f"http://127.0.0.1:{port}",
                "timeouts": {"read": 0.4},
                "client": client,
            }
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
    client: str,
) -> None:
    script, url = scripted
    script.status = upstream_status
    script.body = b'{"internal": "stack trace with secrets"}'
    gw: Gateway = await gateway_factory(upstream={"url": url, "client": client})
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
    gateway_factory: Any, scripted: tuple[Script, str], client: str
) -> None:
    _script, url = scripted
    gw: Gateway = await gateway_factory(upstream={"url": url, "client": client})
    token = await gw.new_token()
    for _ in range(5):
        async with gw.messages(token) as resp:
            assert resp.status == 200
    pool = gw.services.upstream.transport
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


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_that_names_another_request_is_dropped(
    gateway_factory: Any, scripted: tuple[Script, str], client: str, stream: bool
) -> None:
    """The upstream echoes an X-Request-Id that is not the request's: the answer is some
    other request's, so the client gets 502, and the count shows it."""
    script, url = scripted
    script.echo_request_id = False
    script.extra_headers = {"X-Request-Id": "another-request"}
    script.body = b'{"secret": "another visitor\'s answer"}'
    if stream:
        script.chunks = [(0, b'data: {"delta": "another visitor\'s answer"}\n\n')]
    gw: Gateway = await gateway_factory(upstream={"url": url, "client": client})
    token = await gw.new_token()
    for request in (gw.send(token, stream=stream), gw.messages(token)):
        async with request as resp:
            body = await resp.text()
            assert resp.status == 502
            assert "another visitor" not in body
            assert (await resp.json(content_type=None))["code"] == "upstream_error"
    for operation in ("send_message", "get_messages"):
        errors = gw.sample(
            "gateway_upstream_errors_total", operation=operation, reason="request_id_mismatch"
        )
        assert errors == 1
    assert gw.services.upstream.transport.open_connections == 0


async def test_the_echo_can_be_required(
    gateway_factory: Any, scripted: tuple[Script, str], client: str
) -> None:
    script, url = scripted
    script.echo_request_id = False
    gw: Gateway = await gateway_factory(
        upstream={"url": url, "client": client, "require_request_id_echo": True}
    )
    token = await gw.new_token()
    async with gw.send(token) as resp:
        assert resp.status == 502
        assert (await resp.json(content_type=None))["code"] == "upstream_error"
    errors = gw.sample(
        "gateway_upstream_errors_total", operation="send_message", reason="request_id_missing"
    )
    assert errors == 1
    script.echo_request_id = True
    async with gw.send(token) as resp:
        assert resp.status == 200


async def test_an_upstream_that_does_not_echo_is_named_once(
    gateway_factory: Any, scripted: tuple[Script, str]
) -> None:
    """Its answers are taken, each on a connection of its own: an operator is told once."""
    script, url = scripted
    script.echo_request_id = False
    gw: Gateway = await gateway_factory(upstream={"url": url})
    token = await gw.new_token()
    with capture_logs() as logs:
        for _ in range(3):
            async with gw.send(token) as resp:
                assert resp.status == 200
    warned = [e for e in logs if e["event"] == "upstream_does_not_echo_request_id"]
    assert len(warned) == 1
    assert gw.services.upstream.transport.open_connections == 0
