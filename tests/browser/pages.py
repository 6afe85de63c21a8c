"""Pages that embed the widget, served to Chromium by a small web server of their own.

The reference backend serves one page (``/demo``, with a strict CSP). These tests need
others (a language, aggressive CSS, no CSP so that an injected handler would run): a
:class:`Pages` server on 127.0.0.1 serves them as a website would, on its own origin, so
the widget talks to the real gateway cross-origin through per-key CORS.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, expect

#: the open shadow root the widget renders into
ROOT = "document.querySelector('[data-agent-gateway-chat]').shadowRoot"


def origin_of(server: TestServer, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.port}"


def widget_tag(src: str, attrs: Mapping[str, str]) -> str:
    text = " ".join(f'{name}="{html.escape(value)}"' for name, value in attrs.items())
    return f'<script src="{html.escape(src)}" {text} defer></script>'


def page_html(*, body: str, lang: str | None = "en", head: str = "") -> str:
    lang_attr = f' lang="{lang}"' if lang is not None else ""
    return (
        f'<!doctype html><html{lang_attr}><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Widget host page</title>{head}</head><body>{body}</body></html>"
    )


class Pages:
    """A website: HTML pages by path, added while it runs."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        app = web.Application()
        app.router.add_get("/{path:.*}", self._page)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def origin(self) -> str:
        return origin_of(self.server)

    def add(self, path: str, text: str) -> str:
        """Serves ``text`` at ``path``; returns its URL."""
        self.texts[path] = text
        return self.origin + path

    async def _page(self, request: web.Request) -> web.Response:
        text = self.texts.get(request.path)
        if text is None:
            raise web.HTTPNotFound()
        return web.Response(
            text=text, content_type="text/html", headers={"Cache-Control": "no-store"}
        )


async def say(page: Page, text: str) -> None:
    """Sends ``text`` as the visitor would, past the input's ``maxlength`` (for long ones)."""
    box = page.locator("textarea")
    await expect(box).to_be_enabled()
    await box.evaluate("(box, text) => { box.value = text; }", text)
    await box.press("Enter")


async def shadow(page: Page, expression: str, arg: Any = None) -> Any:
    """Evaluates ``(root, arg) => expression`` with the widget's shadow root."""
    return await page.evaluate(f"(arg) => {{ const root = {ROOT}; return {expression}; }}", arg)
