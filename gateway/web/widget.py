"""``GET /widget.js``: the embeddable chat widget (``gateway/static/widget.js``).

Pages on any origin load it with a ``<script>`` tag, so it is public; caching and CORS as
for every :class:`~gateway.web.public_file.PublicFile`.
"""

from __future__ import annotations

from aiohttp import web

from gateway.web.public_file import PublicFile, load_static

WIDGET_PATH = "/widget.js"


def load_widget() -> bytes:
    return load_static("widget.js")


def add_routes(app: web.Application) -> None:
    widget = PublicFile(load_widget(), "text/javascript", charset="utf-8")
    app.router.add_get(WIDGET_PATH, widget.handle)
