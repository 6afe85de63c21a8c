"""A file of the package served as is on the public port (``/widget.js``, ``/openapi.json``).

Read once at start. Any page may load it: ``Access-Control-Allow-Origin: *`` (for
``crossorigin`` / subresource integrity, and documentation tools on other origins) and
``Cross-Origin-Resource-Policy: cross-origin`` (for pages that isolate themselves). The
URLs are not versioned, so browsers keep the file briefly and then revalidate with the
ETag (a digest of the content): ``304`` until the gateway is upgraded. A URL that names
its content's version (``/widget.<version>.js``) is kept for a year instead.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from aiohttp import web

CACHE_CONTROL = "public, max-age=300, stale-while-revalidate=60"
#: for a URL whose bytes never change
IMMUTABLE = "public, max-age=31536000, immutable"


def load_static(name: str) -> bytes:
    """``gateway/static/<name>``, from the source tree or the installed wheel alike."""
    return resources.files("gateway").joinpath("static", name).read_bytes()


class PublicFile:
    def __init__(
        self,
        body: bytes,
        content_type: str,
        charset: str | None = None,
        cache_control: str = CACHE_CONTROL,
    ) -> None:
        self.body = body
        self.cache_control = cache_control
        self.content_type = content_type
        self.charset = charset
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'

    def headers(self) -> dict[str, str]:
        return {
            "Cache-Control": self.cache_control,
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
            content_type=self.content_type,
            charset=self.charset,
            headers=self.headers(),
        )


def _etags(header: str) -> set[str]:
    """The entity tags of ``If-None-Match``, weak ones compared weakly (RFC 9110 13.1.2)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
