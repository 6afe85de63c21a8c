"""The embeddable chat widget (``gateway/static/widget.js``), at two URLs.

* ``/widget.js``: the stable alias, cached briefly and revalidated (its ETag changes with
  each gateway release), for pages that always want the current widget;
* ``/widget.<version>.js``: the same bytes under a digest of their content, cached for a
  year as ``immutable``. A page that pins it adds an SRI ``integrity`` hash;
  ``gateway widget snippet`` prints that tag. Another version answers 404.

Pages on any origin load it with a ``<script>`` tag, so it is public; caching and CORS as
for every :class:`~gateway.web.public_file.PublicFile`.
"""

from __future__ import annotations

import base64
import hashlib
import html

from aiohttp import web

from gateway.web.public_file import IMMUTABLE, PublicFile, load_static

WIDGET_PATH = "/widget.js"
#: hex digits of the content's SHA-256 in the versioned URL
VERSION_LEN = 16


def load_widget() -> bytes:
    return load_static("widget.js")


def widget_version(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:VERSION_LEN]


def versioned_path(body: bytes) -> str:
    """``/widget.<version>.js`` for these bytes."""
    return f"/widget.{widget_version(body)}.js"


def integrity(body: bytes) -> str:
    """The subresource integrity value (``sha384-...``) of these bytes."""
    return "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode("ascii")


def add_routes(app: web.Application) -> None:
    body = load_widget()
    alias = PublicFile(body, "text/javascript", charset="utf-8")
    pinned = PublicFile(body, "text/javascript", charset="utf-8", cache_control=IMMUTABLE)
    version = widget_version(body)

    async def versioned(request: web.Request) -> web.StreamResponse:
        if request.match_info["version"] != version:
            raise web.HTTPNotFound(reason="no such widget version")
        return await pinned.handle(request)

    app.router.add_get(WIDGET_PATH, alias.handle)
    app.router.add_get(f"/widget.{{version:[0-9a-f]{{{VERSION_LEN}}}}}.js", versioned)


def snippet(gateway_url: str, body: bytes, key: str, model: str, locale: str = "") -> str:
    """The ``<script>`` tag a site owner pastes: the versioned URL, its SRI hash, and the
    key and model the widget uses."""
    attrs = [
        ("src", gateway_url.rstrip("/") + versioned_path(body)),
        ("integrity", integrity(body)),
        ("crossorigin", "anonymous"),
        ("data-key", key),
        ("data-model", model),
    ]
    if locale:
        attrs.append(("data-locale", locale))
    text = " ".join(f'{name}="{html.escape(value)}"' for name, value in attrs)
    return f"<script {text} defer></script>"
