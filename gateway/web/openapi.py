"""``GET /openapi.json``: the OpenAPI 3.1 document of the public API.

The document is ``gateway/static/openapi.json`` (``docs/openapi.json`` links to it), kept
by hand and checked against the application's routes by the tests; it is served byte for
byte as it is in the repository, cacheable and readable from any origin (documentation
tools), like the widget.
"""

from __future__ import annotations

from aiohttp import web

from gateway.web.public_file import PublicFile, load_static

OPENAPI_PATH = "/openapi.json"
DOCUMENT = "openapi.json"


def load_document() -> bytes:
    return load_static(DOCUMENT)


def add_routes(app: web.Application) -> None:
    document = PublicFile(load_document(), "application/json")
    app.router.add_get(OPENAPI_PATH, document.handle)
