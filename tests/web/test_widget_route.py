"""GET /widget.js: the script, its type and its caching."""

from gateway.web.widget import load_widget
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
