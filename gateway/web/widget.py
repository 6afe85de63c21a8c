"""``GET /widget.js``: the embeddable chat widget (``gateway/static/widget.js``).

Read once at start. Pages on any origin load it with a ``<script>`` tag, so it is public:
``Access-Control-Allow-Origin: *`` (for ``crossorigin`` / subresource integrity) and
``Cross-Origin-Resource-Policy: cross-origin`` (for pages that isolate themselves). The
URL is not versioned, so browsers keep it briefly and then revalidate with the ETag.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from aiohttp import web

WIDGET_PATH = "/widget.js"
CACHE_CONTROL = "public, max-age=300, stale-while-revalidate=60"


def load_widget() -> bytes:
    return resources.files("gateway").joinpath("static/widget.js").read_bytes()


class WidgetFile:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'

    def headers(self) -> dict[str, str]:
        return {
            "Cache-Control": CACHE_CONTROL,
            "ETag": self.etag,
            "X-Content-Type-Options": "nosniff",
            "Access-Control-Allow-Origin": "*",
            "Cross-Origin-Resource-Policy": "cross-origin",
        }

    async def handle(self, request: web.Request) -> web.Response:
        wanted = _etags(request.headers.get("If-None-Match", ""))
        if self.etag in wanted or "*" in wanted:
            return web.Response(status=304, headers=self.headers())
        return web.Response(
            body=self.body,
            content_type="text/javascript",
            charset="utf-8",
            headers=self.headers(),
        )


def _etags(header: str) -> set[str]:
    """The entity tags of ``If-None-Match``, weak ones compared weakly (RFC 9110 13.1.2)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


def add_routes(app: web.Application) -> None:
    widget = WidgetFile(load_widget())
    app.router.add_get(WIDGET_PATH, widget.handle)
