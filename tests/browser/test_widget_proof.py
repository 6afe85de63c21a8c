"""Proof of possession in real Chromium against the real gateway: the widget binds its
token to a WebCrypto key that never leaves the page, so the chat goes on when the
visitor's address changes (a phone moving from Wi-Fi to mobile data, seen through a
trusted proxy), and a token copied out of the page is useless without the key; a proof
by another key ends the conversation, and the widget says so."""

import time
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import BrowserContext, Route, expect

from tests.browser.pages import Pages, page_html, say
from tests.browser.test_widget_renewal import answered, chat_page
from tests.support.dpop import ProofKey
from tests.support.harness import SEND_URL, Gateway

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a Chromium process

#: the policies' binding: proofs required, the network fingerprint as strict as it gets
PROOF_POLICIES = "binding: {mode: proof, components: [client_ip, user_agent]}\n"


async def test_a_chat_keeps_working_when_the_visitor_s_address_changes(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer, pages: Pages
) -> None:
    gateway: Gateway = await gateway_factory(
        policies=PROOF_POLICIES,
        server={"trusted_proxies": ["127.0.0.0/8"]},
        tokens={"ttl_seconds": 6, "rotation_overlap_seconds": 1},
    )
    key = await gateway.create_key(origins=(pages.origin,))
    address = {"now": "198.51.100.7"}  # what the trusted proxy says the visitor is

    async def through_the_proxy(route: Route) -> None:
        headers = {**route.request.headers, "x-forwarded-for": address["now"]}
        await route.continue_(headers=headers)

    await browser.route(gateway.url + "/v1/**", through_the_proxy)
    page, tokens = await chat_page(browser, pages, gateway, key)
    await answered(page, "on the home Wi-Fi", 1)
    token = tokens.issued[0]
    bound = gateway.services.codec.decode(token, time.time())
    assert bound.jkt is not None and bound.fingerprint is None
    address["now"] = "203.0.113.50"  # mobile data: another network altogether
    await answered(page, "on the train", 2)
    await tokens.renewals(1, timeout=30)  # renewed from the new network, same key
    address["now"] = "2001:db8:4::17"
    await answered(page, "at the office", 3)
    await page.locator(".reload").click()  # the history, read again under the latest token
    await expect(page.locator(".user")).to_have_text(
        ["on the home Wi-Fi", "on the train", "at the office"]
    )
    assert len(tokens.issued) == 1 and tokens.refused == []
    await expect(page.locator(".status")).to_be_hidden()


async def test_a_token_copied_out_of_the_page_is_useless_and_kills_the_conversation(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer, pages: Pages
) -> None:
    gateway: Gateway = await gateway_factory(policies=PROOF_POLICIES)
    key = await gateway.create_key(origins=(pages.origin,))
    page, tokens = await chat_page(browser, pages, gateway, key)
    await answered(page, "my address is 12 rue des Lilas", 1)
    copied = tokens.issued[0]  # e.g. read by a browser extension or from the network panel
    # another page, without the key: the copied token alone is refused
    thief = await browser.new_page()  # a page of the same site, without the widget's key
    await thief.goto(pages.add("/elsewhere", page_html(body="<main><h1>Shop</h1></main>")))
    answer = await thief.evaluate(
        """async ([url, token]) => {
            const resp = await fetch(url, {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({client_token: token, message: "hi"})});
            return [resp.status, (await resp.json()).code,
                    resp.headers.get("WWW-Authenticate")];
        }""",
        [gateway.url + SEND_URL, copied],
    )
    assert answer[:2] == [401, "invalid_dpop_proof"]
    assert answer[2].startswith('DPoP error="invalid_dpop_proof"')
    # with a key of its own, the copy is recognised for what it is: the conversation ends
    other = ProofKey()
    async with gateway.send(
        copied, DPoP=other.proof("POST", gateway.url + SEND_URL, token=copied)
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["code"] == "token_reuse_suspected"
    await say(page, "are you there?")
    status = page.locator(".status")
    await expect(status).to_have_attribute("data-code", "token_reuse_suspected")
    await expect(page.locator(".user").first).to_have_text("my address is 12 rue des Lilas")
    issued = len(tokens.issued)
    await page.locator(".reload").click()  # a new conversation, under a new token
    await answered(page, "hello again", 1)
    assert len(tokens.issued) == issued + 1


async def test_a_visitor_with_a_wrong_clock_still_chats(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer, pages: Pages
) -> None:
    gateway: Gateway = await gateway_factory(policies=PROOF_POLICIES)
    key = await gateway.create_key(origins=(pages.origin,))
    await browser.clock.install(time=time.time() - 600)  # ten minutes slow
    page, tokens = await chat_page(browser, pages, gateway, key)
    await answered(page, "my clock is wrong", 1)
    await answered(page, "still wrong", 2)
    # the first proof was refused as too old; the gateway's Date header set the widget right
    assert tokens.refused == [401] and len(tokens.issued) == 1
    assert gateway.sample("gateway_dpop_proofs_refused_total", reason="time") == 1


async def test_a_wrong_clock_without_the_date_header_chats_through_the_nonce(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer, pages: Pages
) -> None:
    """Where the gateway's ``Date`` does not reach the page (a proxy in between drops it),
    the widget cannot correct its clock: its first proof, refused for its time, comes back
    with a ``DPoP-Nonce``, which the retry's proof and every later one carry (each answer
    brings a fresh one): refused once, not once per request, which the penalty box would
    count until it refused the visitor."""
    gateway: Gateway = await gateway_factory(policies=PROOF_POLICIES)
    key = await gateway.create_key(origins=(pages.origin,))

    async def without_date(route: Route) -> None:
        response = await route.fetch()
        headers = {k: v for k, v in response.headers.items() if k.lower() != "date"}
        await route.fulfill(response=response, headers=headers)

    await browser.route(gateway.url + "/v1/**", without_date)
    await browser.clock.install(time=time.time() - 600)  # ten minutes slow
    page, tokens = await chat_page(browser, pages, gateway, key)
    for n, text in enumerate(["my clock is wrong", "still wrong", "and again"], start=1):
        await answered(page, text, n)
    assert len(tokens.issued) == 1
    assert gateway.sample("gateway_dpop_proofs_refused_total", reason="time") == 1
    assert gateway.sample("gateway_dpop_proofs_refused_total", reason="nonce") == 0
    await expect(page.locator(".status")).to_be_hidden()
