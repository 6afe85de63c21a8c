"""The embeddable widget in real Chromium: the reference backend's demo page (one origin)
talks to the gateway (another origin) through per-key CORS."""

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import BrowserContext, Page, Request, expect

from tests.browser.conftest import WORD_DELAY
from tests.support.harness import TOKEN_URL, Gateway

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a Chromium process

QUESTION = "which ferns like a shady bathroom window"
ANSWER = f"You said: {QUESTION}"

#: records, in the page's own clock, the length of the answer each time it changes
RECORD_GROWTH = """() => {
  const root = document.querySelector('[data-agent-gateway-chat]').shadowRoot;
  window.__growth = [];
  new MutationObserver(() => {
    const answers = root.querySelectorAll('.assistant');
    const last = answers[answers.length - 1];
    if (last) window.__growth.push([performance.now(), last.textContent.length]);
  }).observe(root.querySelector('.log'), {childList: true, subtree: true, characterData: true});
}"""


def origin_of(server: TestServer, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.port}"


def demo_url(backend: TestServer, gateway: Gateway, key: str, host: str = "127.0.0.1") -> str:
    query = urlencode({"gateway": gateway.url, "key": key, "model": "demo"})
    return f"{origin_of(backend, host)}/demo?{query}"


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not true in time"
        await asyncio.sleep(0.02)


class Traffic:
    """The page's requests to the gateway, by API route."""

    def __init__(self, context: BrowserContext, gateway: Gateway) -> None:
        self.requests: list[Request] = []
        context.on("request", self._seen)
        self._gateway = gateway.url

    def _seen(self, request: Request) -> None:
        if request.url.startswith(self._gateway):
            self.requests.append(request)

    def count(self, fragment: str, method: str = "GET") -> int:
        return sum(1 for r in self.requests if fragment in r.url and r.method == method)


async def open_demo(browser: BrowserContext, url: str) -> tuple[Page, list[str]]:
    page = await browser.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    await page.goto(url)
    return page, console


async def send(page: Page, text: str) -> None:
    box = page.get_by_role("textbox", name="Your message")
    await expect(box).to_be_enabled()
    await box.fill(text)
    await box.press("Enter")


async def test_demo_page_chat_streams_and_reloads_history(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer, tmp_path: Path
) -> None:
    gateway: Gateway = await gateway_factory()
    key = await gateway.create_key(origins=(origin_of(backend),))
    traffic = Traffic(browser, gateway)
    page, console = await open_demo(browser, demo_url(backend, gateway, key))

    dialog = page.get_by_role("dialog", name="Plant assistant")
    await expect(dialog).to_be_visible()
    await eventually(lambda: traffic.count("/message/token/demo") == 1)  # on open

    await page.evaluate(RECORD_GROWTH)
    await send(page, QUESTION)
    answer = page.locator(".assistant").last
    await expect(answer).to_have_attribute("data-state", "done", timeout=15_000)
    await expect(answer).to_have_text(ANSWER)

    growth: list[list[float]] = await page.evaluate("window.__growth")
    lengths = [int(n) for _, n in growth]
    partial = [n for n in lengths if 0 < n < len(ANSWER)]
    assert lengths == sorted(lengths), lengths  # it only ever grows
    assert len(set(partial)) >= 4, lengths  # shown piece by piece, not at once
    first_partial = next(t for t, n in growth if 0 < n < len(ANSWER))
    complete = next(t for t, n in growth if n == len(ANSWER))
    # the first words were on screen while the model was still writing the rest
    assert complete - first_partial >= 3 * WORD_DELAY * 1000, growth

    # history comes back from the gateway, not from what the page still shows
    await page.evaluate(
        "document.querySelector('[data-agent-gateway-chat]').shadowRoot"
        ".querySelector('.log').textContent = ''"
    )
    await expect(page.locator(".msg")).to_have_count(0)
    reads = traffic.count("/public/messages/")
    await page.get_by_role("button", name="Reload the conversation").click()
    await expect(page.locator(".msg")).to_have_count(2)
    assert traffic.count("/public/messages/") == reads + 1
    await expect(page.locator(".msg.user")).to_have_text(QUESTION)
    await expect(page.locator(".msg.assistant")).to_have_text(ANSWER)
    await expect(page.locator(".status")).to_be_hidden()

    # the token never left memory
    stored = await page.evaluate("[localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]

    await page.get_by_role("textbox", name="Your message").focus()
    await page.mouse.move(10, 700)
    shot = tmp_path / "widget-demo.png"
    await page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    target = os.environ.get("WIDGET_SCREENSHOT")
    if target:  # `make screenshot` refreshes docs/widget-demo.png
        shutil.copyfile(shot, target)
    assert not [line for line in console if "error" in line.lower()], console


async def test_a_page_on_a_disallowed_origin_cannot_get_a_token(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer
) -> None:
    gateway: Gateway = await gateway_factory()
    key = await gateway.create_key(origins=(origin_of(backend),))
    # the same page from http://localhost:PORT: another origin, not on the key
    page, console = await open_demo(browser, demo_url(backend, gateway, key, host="localhost"))

    status = page.locator(".status")
    await expect(status).to_be_visible()
    await expect(status).to_contain_text("Cannot reach the chat service")
    outcome = await page.evaluate(
        """async ([url, key]) => {
          try {
            const resp = await fetch(url, {headers: {Authorization: 'Bearer ' + key}});
            return 'read ' + resp.status;
          } catch (err) {
            return err.name;
          }
        }""",
        [gateway.url + TOKEN_URL.format(model="demo"), key],
    )
    assert outcome == "TypeError"  # the browser refused to hand the answer to the page
    assert any("CORS" in line for line in console), console

    # what the gateway said to that browser, asked directly
    async with gateway.http.options(
        gateway.url + TOKEN_URL.format(model="demo"),
        headers={
            "Origin": origin_of(backend, "localhost"),
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    ) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_refused_token_shows_a_clear_message_and_a_new_conversation_recovers(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer
) -> None:
    gateway: Gateway = await gateway_factory()
    key = await gateway.create_key(origins=(origin_of(backend),))
    issued: list[str] = []

    async def keep_token(response: Any) -> None:
        if "/message/token/" in response.url and response.status == 200:
            issued.append((await response.json())["token"])

    browser.on("response", keep_token)
    page, _ = await open_demo(browser, demo_url(backend, gateway, key))
    await eventually(lambda: len(issued) == 1)
    await send(page, "hello")
    await expect(page.locator(".assistant").last).to_have_attribute("data-state", "done")

    claims = jwt.decode(issued[0], options={"verify_signature": False})
    gateway.services.admissions.remember_revoked(claims["jti"], claims["exp"])
    await send(page, "are you still there")
    status = page.locator(".status")
    await expect(status).to_have_attribute("data-status", "403")
    await expect(status).to_have_attribute("data-code", "token_revoked")
    await expect(status).to_contain_text("no longer valid")

    await page.get_by_role("button", name="Reload the conversation").click()
    await eventually(lambda: len(issued) == 2)
    await expect(page.locator(".msg")).to_have_count(0)  # a new, empty conversation
    await expect(status).to_be_hidden()
    await send(page, "fresh start")
    await expect(page.locator(".assistant").last).to_have_text("You said: fresh start")


async def test_the_token_is_renewed_before_it_expires_for_the_same_conversation(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer
) -> None:
    gateway: Gateway = await gateway_factory(tokens={"ttl_seconds": 120})
    key = await gateway.create_key(origins=(origin_of(backend),))
    traffic = Traffic(browser, gateway)
    await browser.clock.install()
    page, _ = await open_demo(browser, demo_url(backend, gateway, key))
    await eventually(lambda: traffic.count("/message/token/demo") == 1)
    await send(page, "hello")
    await expect(page.locator(".assistant").last).to_have_attribute("data-state", "done")

    # ttl 120 s, renewed 12 s before expiry (10 %, at least 5 s, at most 60 s)
    await page.clock.fast_forward(100_000)
    assert traffic.count("/message/token/demo") == 1
    await page.clock.fast_forward(10_000)
    # renewed for the same conversation: no new token from the key, no new conversation
    await eventually(lambda: traffic.count("/public/token/refresh", "POST") == 1)
    assert traffic.count("/message/token/demo") == 1
    await send(page, "still here")
    await expect(page.locator(".assistant").last).to_have_text("You said: still here")
    await expect(page.locator(".note")).to_have_count(0)
    await expect(page.locator(".user")).to_have_text(["hello", "still here"])


async def test_a_rate_limited_message_shows_when_to_retry(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer
) -> None:
    gateway: Gateway = await gateway_factory(
        policies="""
policies:
  - {name: send-per-token, match: {routes: [send]}, partition: [token], limit: {rate: 1, per: 3s, burst: 1}}
"""
    )
    key = await gateway.create_key(origins=(origin_of(backend),))
    page, _ = await open_demo(browser, demo_url(backend, gateway, key))
    await send(page, "first")
    await expect(page.locator(".assistant").last).to_have_attribute("data-state", "done")
    await send(page, "second, too soon")
    status = page.locator(".status")
    await expect(status).to_have_attribute("data-status", "429")
    await expect(status).to_have_attribute("data-code", "rate_limited")
    # Retry-After crossed the origin boundary (an exposed header): the page says when
    await expect(status).to_contain_text("Please wait 3 seconds")
    await asyncio.sleep(3.1)
    await send(page, "third, after waiting")
    await expect(page.locator(".assistant").last).to_have_text("You said: third, after waiting")
    await expect(status).to_be_hidden()
