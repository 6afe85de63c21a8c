"""Per-key CORS on the public API, as a browser would exercise it (Fetch standard)."""

import asyncio
import json
from collections.abc import Mapping

import pytest
from aiohttp import ClientResponse

from gateway.keystore.base import utcnow
from tests.support.harness import MESSAGES_URL, SEND_URL, TOKEN_URL, Gateway

SHOP = "https://shop.example"
BLOG = "http://127.0.0.1:8081"
EVIL = "https://evil.example"
EXPOSED = {"retry-after", "ratelimit", "ratelimit-policy", "x-request-id"}


def tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


def vary(resp: ClientResponse) -> set[str]:
    return set().union(*(tokens(v) for v in resp.headers.getall("Vary", [])))


def assert_granted(resp: ClientResponse, origin: str) -> None:
    assert resp.headers.get("Access-Control-Allow-Origin") == origin
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert tokens(resp.headers.get("Access-Control-Expose-Headers")) >= EXPOSED
    assert "origin" in vary(resp)


def assert_not_granted(resp: ClientResponse) -> None:
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert "origin" in vary(resp)


async def preflight(
    gateway: Gateway, path: str, origin: str, method: str, headers: str | None = None
) -> tuple[ClientResponse, dict]:
    extra: dict[str, str] = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        extra["Access-Control-Request-Headers"] = headers
    async with gateway.http.options(gateway.url + path, headers=extra) as resp:
        body = await resp.json(content_type=None) if resp.status >= 400 else {}
        return resp, body


async def get_token(gateway: Gateway, key: str, origin: str | None) -> tuple[ClientResponse, dict]:
    headers: Mapping[str, str] = {"Authorization": f"Bearer {key}"}
    if origin is not None:
        headers = {**headers, "Origin": origin}
    async with gateway.http.get(
        gateway.url + TOKEN_URL.format(model="demo"), headers=gateway.headers(headers)
    ) as resp:
        return resp, await resp.json(content_type=None)


async def test_token_preflight_is_granted_for_a_listed_origin(gateway: Gateway) -> None:
    await gateway.create_key(origins=(SHOP,))
    resp, _ = await preflight(gateway, TOKEN_URL.format(model="demo"), SHOP, "GET", "authorization")
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == SHOP
    assert resp.headers["Access-Control-Allow-Methods"] == "GET"
    assert tokens(resp.headers["Access-Control-Allow-Headers"]) == {"authorization"}
    assert resp.headers["Access-Control-Max-Age"] == "600"
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert {"origin", "access-control-request-method", "access-control-request-headers"} <= vary(
        resp
    )
    assert resp.headers["X-Request-Id"]


async def test_preflight_from_an_unlisted_origin_is_refused(gateway: Gateway) -> None:
    await gateway.create_key(origins=(SHOP,))
    for origin in (EVIL, "null", "http://shop.example"):
        resp, body = await preflight(gateway, SEND_URL, origin, "POST", "content-type")
        assert resp.status == 403, origin
        assert body["code"] == "origin_not_allowed"
        assert_not_granted(resp)


async def test_preflight_for_a_method_or_header_the_route_does_not_take(gateway: Gateway) -> None:
    await gateway.create_key(origins=(SHOP,))
    resp, body = await preflight(gateway, TOKEN_URL.format(model="demo"), SHOP, "DELETE")
    assert resp.status == 400 and body["code"] == "invalid_request"
    assert_not_granted(resp)
    resp, body = await preflight(gateway, SEND_URL, SHOP, "POST", "content-type, x-secret")
    assert resp.status == 400 and "X-SECRET" in body["detail"]
    assert_not_granted(resp)
    async with gateway.http.options(gateway.url + SEND_URL, headers={"Origin": SHOP}) as plain:
        assert plain.status == 400  # an OPTIONS request that is not a preflight


async def test_token_route_answers_only_the_keys_origins(gateway: Gateway) -> None:
    key = await gateway.create_key(origins=(SHOP, BLOG))
    for origin in (SHOP, BLOG):
        resp, body = await get_token(gateway, key, origin)
        assert resp.status == 200 and body["token"]
        assert_granted(resp, origin)

    resp, body = await get_token(gateway, key, EVIL)
    assert resp.status == 403 and body["code"] == "origin_not_allowed"
    assert "https://evil.example" in body["detail"]
    assert_not_granted(resp)

    resp, body = await get_token(gateway, key, None)  # a server: no Origin, no CORS
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert "origin" in vary(resp)


async def test_a_key_without_origins_serves_servers_not_browsers(gateway: Gateway) -> None:
    key = await gateway.create_key()
    resp, _ = await get_token(gateway, key, None)
    assert resp.status == 200
    resp, body = await get_token(gateway, key, SHOP)
    assert resp.status == 403 and body["code"] == "origin_not_allowed"
    assert_not_granted(resp)


async def test_another_keys_origin_gets_the_preflight_but_not_the_answer(
    gateway: Gateway,
) -> None:
    """Preflights are granted for the union of keys' origins; the actual request only for
    the origins of the key behind it, and it is refused before it reaches the upstream."""
    shop_key = await gateway.create_key(origins=(SHOP,))
    await gateway.create_key(origins=(BLOG,))
    resp, _ = await preflight(gateway, SEND_URL, BLOG, "POST", "content-type")
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == BLOG

    shop_token = (await get_token(gateway, shop_key, SHOP))[1]["token"]
    async with gateway.send(shop_token, "from the blog", Origin=BLOG) as sent:
        body = await sent.json(content_type=None)
        assert sent.status == 403 and body["code"] == "origin_not_allowed"
        assert_not_granted(sent)
    async with gateway.messages(shop_token, Origin=BLOG) as read:
        assert read.status == 403
        assert_not_granted(read)

    async with gateway.send(shop_token, "from the shop", Origin=SHOP) as sent:
        assert sent.status == 200
        assert_granted(sent, SHOP)
    async with gateway.messages(shop_token, Origin=SHOP) as read:
        history = await read.json()
        assert read.status == 200
        assert_granted(read, SHOP)
    # the blog's attempt never reached the upstream
    assert [m["content"] for m in history["messages"]] == [
        "from the shop",
        "You said: from the shop",
    ]


async def test_streamed_answers_carry_the_grant(gateway: Gateway) -> None:
    key = await gateway.create_key(origins=(SHOP,))
    token = (await get_token(gateway, key, SHOP))[1]["token"]
    async with gateway.send(token, "stream it", stream=True, Origin=SHOP) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert_granted(resp, SHOP)
        assert b"event: done" in await resp.read()


async def test_refusals_before_the_key_is_known_are_readable_by_listed_origins(
    gateway: Gateway,
) -> None:
    await gateway.create_key(origins=(SHOP,))
    path = gateway.url + TOKEN_URL.format(model="demo")
    async with gateway.http.get(path, headers={"Origin": SHOP}) as resp:
        assert resp.status == 401
        assert_granted(resp, SHOP)  # the page can tell the visitor what went wrong
    async with gateway.http.get(path, headers={"Origin": EVIL}) as resp:
        assert resp.status == 401
        assert_not_granted(resp)
    async with gateway.http.get(
        gateway.url + MESSAGES_URL.format(token="forged"), headers={"Origin": SHOP}
    ) as resp:
        assert resp.status == 403
        assert_granted(resp, SHOP)


async def test_revoked_keys_no_longer_open_preflights(gateway: Gateway) -> None:
    await gateway.create_key(origins=(SHOP,))
    resp, _ = await preflight(gateway, SEND_URL, SHOP, "POST", "content-type")
    assert resp.status == 200
    key_id = next(iter(gateway.keys))
    await gateway.services.keys.store.revoke(key_id, utcnow())
    resp, body = await preflight(gateway, SEND_URL, SHOP, "POST", "content-type")
    assert resp.status == 403 and body["code"] == "origin_not_allowed"


@pytest.mark.parametrize("keys_type", ["file", "redis"])
async def test_new_keys_open_preflights_in_both_key_stores(
    gateway_factory, keys_type: str, request: pytest.FixtureRequest
) -> None:
    keys: dict[str, object] = {}
    if keys_type == "redis":
        keys = {"type": "redis", "redis_url": request.getfixturevalue("redis_url")}
    gateway = await gateway_factory(keys=keys)
    resp, _ = await preflight(gateway, SEND_URL, SHOP, "POST", "content-type")
    assert resp.status == 403
    await gateway.create_key(origins=(SHOP,))
    resp, _ = await preflight(gateway, SEND_URL, SHOP, "POST", "content-type")
    assert resp.status == 200


async def test_other_routes_get_no_cors(gateway: Gateway) -> None:
    await gateway.create_key(origins=(SHOP,))
    async with gateway.http.get(gateway.url + "/nope", headers={"Origin": SHOP}) as resp:
        assert resp.status == 404
        assert "Access-Control-Allow-Origin" not in resp.headers
        assert "Vary" not in resp.headers


async def raw_preflight(gateway: Gateway, path: str, headers: bytes) -> tuple[int, bytes, bytes]:
    """A preflight written byte for byte: (status, head, body)."""
    assert gateway.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.server.port)
    writer.write(
        b"OPTIONS "
        + path.encode()
        + b" HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
        + headers
        + b"\r\n"
    )
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head, body


@pytest.mark.parametrize(
    "requested", [b"\x84", b"content-type, x-\xff", b"content-type, \xc3\xa9t\xc3\xa9", b"a b"]
)
async def test_preflight_asking_for_malformed_header_names_is_a_clear_400(
    gateway: Gateway, requested: bytes
) -> None:
    """Header names are tokens (RFC 9110): anything else, bytes that are not UTF-8
    included, is refused as such, and never echoed back."""
    await gateway.create_key(origins=(SHOP,))
    status, head, body = await raw_preflight(
        gateway,
        SEND_URL,
        b"Origin: " + SHOP.encode() + b"\r\nAccess-Control-Request-Method: POST\r\n"
        b"Access-Control-Request-Headers: " + requested + b"\r\n",
    )
    assert status == 400, body
    assert b"Content-Type: application/problem+json" in head
    problem = json.loads(body)
    assert problem["code"] == "invalid_request"
    assert "Access-Control-Request-Headers" in problem["detail"]
    assert requested.decode("latin-1") not in problem["detail"]
    assert b"Access-Control-Allow-Origin" not in head
    # from an origin no key lists, the origin is what is wrong
    status, _, body = await raw_preflight(
        gateway,
        SEND_URL,
        b"Origin: " + EVIL.encode() + b"\r\nAccess-Control-Request-Method: POST\r\n"
        b"Access-Control-Request-Headers: " + requested + b"\r\n",
    )
    assert status == 403 and json.loads(body)["code"] == "origin_not_allowed"
