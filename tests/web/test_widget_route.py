"""GET /widget.js and /widget.<version>.js: the script, its type, caching and size."""

import base64
import gzip
import hashlib

from gateway.web.widget import VERSION_LEN, WIDGET_PATH, integrity, load_widget, versioned_path
from tests.support.harness import Gateway


async def test_widget_is_served_as_cacheable_javascript(gateway_factory) -> None:
    gateway: Gateway = await gateway_factory()
    async with gateway.http.get(
        gateway.url + "/widget.js", headers={"Origin": "https://any.example"}
    ) as resp:
        body = await resp.read()
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Cache-Control"].startswith("public, max-age=")
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
        assert "Set-Cookie" not in resp.headers
        etag = resp.headers["ETag"]
    assert body == load_widget()
    assert b"/v1/chat/conversation/public/message/token/" in body
    assert b"localStorage" not in body and b"document.cookie" not in body

    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        async with gateway.http.get(
            gateway.url + "/widget.js", headers={"If-None-Match": header}
        ) as resp:
            assert resp.status == 304, header
            assert await resp.read() == b""
            assert resp.headers["ETag"] == etag
    async with gateway.http.get(
        gateway.url + "/widget.js", headers={"If-None-Match": '"stale"'}
    ) as resp:
        assert resp.status == 200
    async with gateway.http.head(gateway.url + "/widget.js") as resp:
        assert resp.status == 200 and resp.headers["ETag"] == etag


async def test_the_versioned_url_is_immutable_and_matches_its_integrity_hash(
    gateway_factory,
) -> None:
    gateway: Gateway = await gateway_factory()
    body = load_widget()
    path = versioned_path(body)
    async with gateway.http.get(gateway.url + path) as resp:
        assert resp.status == 200
        assert await resp.read() == body
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert resp.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
    digest = base64.b64decode(integrity(body).removeprefix("sha384-"))
    assert digest == hashlib.sha384(body).digest()
    # the stable alias serves the same bytes, briefly cached
    async with gateway.http.get(gateway.url + WIDGET_PATH) as resp:
        assert await resp.read() == body
        assert "immutable" not in resp.headers["Cache-Control"]
    other = "/widget." + "0" * VERSION_LEN + ".js"
    assert other != path
    async with gateway.http.get(gateway.url + other) as resp:
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"
        assert "immutable" not in resp.headers.get("Cache-Control", "")


def test_the_widget_stays_under_20_kb_gzipped() -> None:
    size = len(gzip.compress(load_widget(), compresslevel=9))
    print(f"widget.js: {len(load_widget())} bytes, {size} bytes gzipped")
    assert size < 20 * 1024, size
