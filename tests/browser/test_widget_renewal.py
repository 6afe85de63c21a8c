"""Token renewal in real Chromium against the real gateway: the widget renews its token
for the same conversation ahead of expiry, and when a copied old token is used by
another client the gateway revokes the conversation and the widget says so."""

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import BrowserContext, Page, Response, Route, expect

from tests.browser.pages import Pages, page_html, say, widget_tag
from tests.support.dpop import ProofKey
from tests.support.harness import MESSAGES_URL, Gateway

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a Chromium process

TOKEN_ROUTE = "/v1/chat/conversation/public/message/token/"
REFRESH_ROUTE = "/v1/chat/conversation/public/token/refresh"


class Tokens:
    """The tokens the page received, by the route that gave them."""

    def __init__(self, page: Page) -> None:
        self.issued: list[str] = []
        self.renewed: list[str] = []
        self.refused: list[int] = []
        self.changed = asyncio.Event()
        page.on("response", self._seen)

    async def _seen(self, response: Response) -> None:
        if TOKEN_ROUTE in response.url or response.url.endswith(REFRESH_ROUTE):
            if response.request.method == "OPTIONS":
                return
            if not response.ok:
                self.refused.append(response.status)
                return
            token = (await response.json())["token"]
            (self.renewed if response.url.endswith(REFRESH_ROUTE) else self.issued).append(token)
            self.changed.set()

    async def renewals(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self.renewed) < count:
                self.changed.clear()
                await self.changed.wait()


async def chat_page(
    browser: BrowserContext, pages: Pages, gateway: Gateway, key: str
) -> tuple[Page, Tokens]:
    page = await browser.new_page()
    tokens = Tokens(page)
    attrs = {"data-key": key, "data-model": "demo", "data-open": "true", "data-locale": "en"}
    await page.goto(
        pages.add(
            f"/chat{len(pages.texts)}",
            page_html(
                body="<main><h1>Shop</h1></main>" + widget_tag(gateway.url + "/widget.js", attrs)
            ),
        )
    )
    return page, tokens


async def page_key(
    gateway_factory: Any, pages: Pages, *, ttl: int, overlap: int
) -> tuple[Gateway, str]:
    """A gateway whose tokens live ``ttl`` s (retired ones pass ``overlap`` s more), and an
    agent key for the test pages' origin."""
    gateway: Gateway = await gateway_factory(
        tokens={"ttl_seconds": ttl, "rotation_overlap_seconds": overlap}
    )
    return gateway, await gateway.create_key(origins=(pages.origin,))


async def answered(page: Page, message: str, count: int) -> None:
    await say(page, message)
    await expect(page.locator(".assistant")).to_have_count(count)
    await expect(page.locator(".assistant").last).to_have_attribute("data-state", "done")


async def test_a_conversation_survives_four_renewals_of_a_three_second_token(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer, pages: Pages
) -> None:
    gateway, key = await page_key(gateway_factory, pages, ttl=3, overlap=1)
    page, tokens = await chat_page(browser, pages, gateway, key)
    await answered(page, "first words", 1)
    await tokens.renewals(2, timeout=30)
    await answered(page, "between renewals", 2)
    await tokens.renewals(4, timeout=30)
    await answered(page, "after four renewals", 3)
    # the history as the gateway keeps it, read again from it, under the latest token
    await page.locator(".reload").click()
    await expect(page.locator(".user")).to_have_text(
        ["first words", "between renewals", "after four renewals"]
    )
    await expect(page.locator(".assistant")).to_have_count(3)
    assert len(tokens.issued) == 1, "one conversation: every later token is a renewal"
    assert len(set(tokens.renewed)) == len(tokens.renewed) >= 4
    assert tokens.refused == []
    await expect(page.locator(".note")).to_have_count(0)  # no "new conversation"
    await expect(page.locator(".status")).to_be_hidden()


async def test_a_copied_old_token_used_elsewhere_ends_the_conversation_and_the_widget_says_so(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer, pages: Pages
) -> None:
    gateway, key = await page_key(gateway_factory, pages, ttl=9, overlap=1)
    page, tokens = await chat_page(browser, pages, gateway, key)
    await answered(page, "my address is 12 rue des Lilas", 1)
    copied = tokens.issued[0]  # e.g. from a shared screenshot of the network panel
    await tokens.renewals(1, timeout=30)  # 6 s in: the widget renewed, the copy is retired
    await asyncio.sleep(1.5)  # past the rotation overlap, before the copy expires
    # the page's tokens are bound to its key: the copier signs with a key of its own
    url = gateway.url + MESSAGES_URL.format(token=copied)
    proof = ProofKey().proof("GET", url, token=copied)
    async with gateway.messages(copied, **{"User-Agent": "curl/8", "DPoP": proof}) as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "token_reuse_suspected"
        assert "rue des Lilas" not in await resp.text()
    # the page's own, current token belongs to the revoked conversation too
    await say(page, "are you there?")
    status = page.locator(".status")
    await expect(status).to_have_attribute("data-code", "token_reuse_suspected")
    await expect(status).to_have_text(
        "This chat was opened elsewhere. Start a new conversation with ↻."
    )
    await expect(page.locator(".user").first).to_have_text("my address is 12 rue des Lilas")
    issued = len(tokens.issued)
    await page.locator(".reload").click()
    await expect(status).to_be_hidden()
    await expect(page.locator(".msg")).to_have_count(0)  # a new, empty conversation
    await answered(page, "hello again", 1)
    assert len(tokens.issued) == issued + 1


async def test_a_renewal_whose_answer_is_lost_is_asked_again_within_the_overlap(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer, pages: Pages
) -> None:
    """The gateway rotated the token but its answer never reached the page (a Wi-Fi
    handoff): the widget asks again within the rotation overlap and gets the same
    successor, instead of presenting the retired token later and being taken for a
    thief."""
    gateway, key = await page_key(gateway_factory, pages, ttl=3, overlap=2)
    lost: list[str] = []

    async def lose_the_first_answer(route: Route) -> None:
        if route.request.method == "POST" and not lost:
            response = await route.fetch()  # the gateway rotates the token...
            lost.append((await response.json())["token"])
            await route.abort("connectionreset")  # ...and the page never hears of it
            return
        await route.continue_()

    page = await browser.new_page()
    await page.route(gateway.url + REFRESH_ROUTE, lose_the_first_answer)
    tokens = Tokens(page)
    attrs = {"data-key": key, "data-model": "demo", "data-open": "true", "data-locale": "en"}
    await page.goto(
        pages.add("/lost", page_html(body=widget_tag(gateway.url + "/widget.js", attrs)))
    )
    await answered(page, "before the handoff", 1)
    await tokens.renewals(2, timeout=30)
    assert tokens.renewed[0] == lost[0]  # asked again: the same successor
    await answered(page, "after the handoff", 2)
    await expect(page.locator(".status")).to_be_hidden()
    assert tokens.refused == [] and len(tokens.issued) == 1
