"""``GET /demo``: a small web page that embeds the gateway's chat widget.

It is served from the backend's own origin (``http://127.0.0.1:8081`` under
``make run``), so the widget talks to the gateway cross-origin exactly as on a real
website. The gateway URL, the public agent key and the model id come from the query
(``/demo?key=pak_...``) or from the backend's ``--demo-*`` flags. The page sends a strict
Content-Security-Policy that allows scripts and connections to the gateway only: the
widget needs nothing more.
"""

from __future__ import annotations

import html
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

GATEWAY_RE = re.compile(r"^https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/-]*)?$")
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True, slots=True)
class DemoSettings:
    gateway_url: str = "http://127.0.0.1:8080"
    key: str = ""
    model: str = "demo"


DEMO = web.AppKey("demo", DemoSettings)

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Fern &amp; Field: plant shop (agent-gateway demo)</title>
<style nonce="{nonce}">
  body {{ margin: 0; font: 16px/1.6 Georgia, serif; color: #1d2a1f; background: #f6f4ee; }}
  header {{ padding: 28px 48px; background: #23402b; color: #f6f4ee; }}
  header h1 {{ margin: 0; font-size: 28px; letter-spacing: .5px; }}
  main {{ max-width: 720px; padding: 24px 48px; }}
  .card {{ background: #fff; border-radius: 10px; padding: 16px 20px; margin: 16px 0;
           box-shadow: 0 1px 3px rgba(0,0,0,.08); }}
  code {{ font-size: 13px; background: #ebe8df; padding: 1px 4px; border-radius: 4px;
          overflow-wrap: anywhere; }}
  .warn {{ border-left: 4px solid #b45309; }}
</style>
</head>
<body>
<header><h1>Fern &amp; Field</h1><div>House plants, delivered.</div></header>
<main>
  <div class="card">
    <h2>Ask our plant assistant</h2>
    <p>The chat in the corner is the agent-gateway widget, loaded from
    <code>{gateway}/widget.js</code> with model <code>{model}</code>. It gets a short-lived
    client token from the gateway when it opens and streams each answer as it is
    written.</p>
  </div>
  {notice}
  <div class="card">
    <h2>This week</h2>
    <p>Monstera deliciosa, calathea orbifolia and a restock of terracotta pots.</p>
  </div>
</main>
{script}
</body>
</html>
"""

NO_KEY = """<div class="card warn" id="no-key">
    <h2>No agent key yet</h2>
    <p>Create one that allows this page's origin, then open this page with it:</p>
    <p><code>gateway keys create --model {model} --origin {origin}</code></p>
    <p><code>{origin}/demo?key=pak_...</code></p>
  </div>"""


def _bad(detail: str) -> web.Response:
    return web.Response(status=400, text=detail + "\n", headers={"Cache-Control": "no-store"})


async def demo_page(request: web.Request) -> web.Response:
    settings = request.app[DEMO]
    gateway = request.query.get("gateway", settings.gateway_url).rstrip("/")
    key = request.query.get("key", settings.key)
    model = request.query.get("model", settings.model)
    if not GATEWAY_RE.match(gateway):
        return _bad("gateway: expected http(s)://host[:port][/path]")
    if key and not KEY_RE.match(key):
        return _bad("key: not an agent key")
    if not MODEL_RE.match(model):
        return _bad("model: not a model id")
    parts = urlsplit(gateway)
    gateway_origin = f"{parts.scheme}://{parts.netloc}"
    nonce = secrets.token_urlsafe(16)
    esc = html.escape
    if key:
        script = (
            f'<script src="{esc(gateway)}/widget.js" defer data-gateway="{esc(gateway)}" '
            f'data-key="{esc(key)}" data-model="{esc(model)}" data-title="Plant assistant" '
            'data-open="true"></script>'
        )
        notice = ""
    else:
        script = ""
        notice = NO_KEY.format(model=esc(model), origin=esc(f"{request.scheme}://{request.host}"))
    body = PAGE.format(
        nonce=nonce, gateway=esc(gateway), model=esc(model), notice=notice, script=script
    )
    csp = (
        f"default-src 'none'; script-src {gateway_origin}; connect-src {gateway_origin}; "
        f"style-src 'nonce-{nonce}'; img-src 'self' data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )
    return web.Response(
        text=body,
        content_type="text/html",
        headers={
            "Content-Security-Policy": csp,
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


def add_routes(app: web.Application, settings: DemoSettings) -> None:
    app[DEMO] = settings
    app.router.add_get("/demo", demo_page)
