"""The widget as site owners ship it, in real Chromium against the real gateway and the
reference backend: the visitor's language, theming and isolation from the page's CSS,
accessibility checked by axe-core, the pinned script with its SRI hash, screenshots."""

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, BrowserContext, Page, Route, expect

from gateway.web.widget import load_widget, versioned_path
from tests.browser.pages import ROOT, Pages, page_html, say, shadow, widget_tag
from tests.support.dpop import ProofKey
from tests.support.harness import MESSAGES_URL, Gateway
from tests.support.processes import run_cli
from tests.support.stack import write_config

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a Chromium process

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
#: WCAG 2.0, 2.1 and 2.2 at levels A and AA
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22a", "wcag22aa"]
#: one message per 90 minutes: the second one waits 5,400 seconds, 1.5 hours
SLOW_SENDS = """
policies:
  - {name: send-per-token, match: {routes: [send]}, partition: [token], limit: {rate: 1, per: 90m, burst: 1}}
"""
MARKDOWN = (
    "Pour une salle de bains ombragée : **la fougère de Boston** et le *pothos*.\n\n"
    "- arrosage : `une fois par semaine`\n- lumière : indirecte\n\n"
    "Plus d'idées sur [notre guide](https://example.com/fougeres)."
)


async def open_page(context: BrowserContext, url: str) -> tuple[Page, list[str]]:
    page = await context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.on("pageerror", lambda error: console.append(f"error: {error}"))
    await page.goto(url)
    return page, console


def widget_page(
    pages: Pages,
    gateway: Gateway,
    key: str,
    *,
    lang: str | None = "en",
    head: str = "",
    body: str = "<main><h1>Shop</h1><p>Plants.</p></main>",
    **data: str,
) -> str:
    attrs = {"data-key": key, "data-model": "demo", **{f"data-{k}": v for k, v in data.items()}}
    return pages.add(
        f"/page{len(pages.texts)}",
        page_html(lang=lang, head=head, body=body + widget_tag(gateway.url + "/widget.js", attrs)),
    )


async def answered(page: Page, message: str) -> None:
    await say(page, message)
    await expect(page.locator(".assistant").last).to_have_attribute("data-state", "done")


FRENCH = {
    "launcher": "Discussion",
    "placeholder": "Écrivez un message…",
    "send": "Envoyer",
    "reload": "Recharger la conversation",
    "close": "Fermer la discussion",
    "wait": "Trop de messages. Veuillez patienter 1,5 heure avant de réessayer.",
}
ENGLISH = {
    "launcher": "Chat",
    "placeholder": "Type a message…",
    "send": "Send",
    "reload": "Reload the conversation",
    "close": "Close the chat",
    "wait": "Too many messages. Please wait 1.5 hours and try again.",
}
LOCALES: dict[str, dict[str, Any]] = {
    # data-locale wins over the page's lang and the browser's language
    "fr": {"browser": "en-US", "page": {"lang": "en", "locale": "fr"}, **FRENCH},
    # the page's lang wins over the browser's language
    "en": {"browser": "fr-FR", "page": {"lang": "en-GB"}, **ENGLISH},
    # neither: the browser's language
    "fr-by-browser": {"browser": "fr-CA", "page": {"lang": None}, **FRENCH},
}


@pytest.mark.parametrize("name", list(LOCALES))
async def test_every_text_is_in_the_visitors_language(
    name: str, chromium: Browser, gateway_factory: Any, backend: TestServer, pages: Pages
) -> None:
    case = LOCALES[name]
    gateway: Gateway = await gateway_factory(policies=SLOW_SENDS)
    key = await gateway.create_key(origins=(pages.origin,))
    context = await chromium.new_context(locale=case["browser"])
    url = widget_page(pages, gateway, key, **case["page"])
    page, console = await open_page(context, url)

    launcher = page.get_by_role("button", name=case["launcher"], exact=True)
    await launcher.click()
    dialog = page.get_by_role("dialog", name=case["launcher"])
    await expect(dialog).to_be_visible()
    await expect(page.locator("textarea")).to_have_attribute("placeholder", case["placeholder"])
    await expect(page.get_by_role("button", name=case["send"], exact=True)).to_be_visible()
    await expect(page.get_by_role("button", name=case["reload"])).to_be_visible()
    await expect(page.get_by_role("button", name=case["close"])).to_be_visible()
    lang = case["page"].get("locale") or (case["page"]["lang"] or case["browser"])
    assert await shadow(page, "root.querySelector('.w').lang") == lang[:2]

    await answered(page, "bonjour")
    await say(page, "encore")
    status = page.locator(".status")
    await expect(status).to_have_attribute("data-code", "rate_limited")
    await expect(status).to_have_text(case["wait"])  # the visitor's words and numbers
    await expect(page.locator("textarea")).to_be_disabled()
    assert not [line for line in console if "error" in line.lower()], console
    await context.close()


@pytest.mark.parametrize(
    ("locale", "words"),
    [
        (
            "fr",
            "Cette discussion a été ouverte ailleurs. Commencez une nouvelle conversation avec ↻.",
        ),
        ("en", "This chat was opened elsewhere. Start a new conversation with ↻."),
    ],
)
async def test_a_token_used_elsewhere_first_says_so_and_a_new_conversation_recovers(
    locale: str,
    words: str,
    browser: BrowserContext,
    gateway_factory: Any,
    backend: TestServer,
    pages: Pages,
) -> None:
    gateway: Gateway = await gateway_factory()
    key = await gateway.create_key(origins=(pages.origin,))
    page = await browser.new_page()
    stolen: list[str] = []

    async def use_it_first(route: Route) -> None:
        """Another client uses the page's first token before the page does."""
        response = await route.fetch()
        if not stolen:
            stolen.append((await response.json())["token"])
            # the token is bound to the page's key: without it the token is refused, with a
            # key of its own the thief is recognised, and the conversation revoked
            url = gateway.url + MESSAGES_URL.format(token=stolen[0])
            proof = ProofKey().proof("GET", url, token=stolen[0])
            async with gateway.messages(stolen[0], **{"User-Agent": "curl/8"}) as resp:
                assert resp.status == 401
            async with gateway.messages(stolen[0], DPoP=proof) as resp:
                assert resp.status == 403
        await route.fulfill(response=response)

    await page.route(gateway.url + "/v1/chat/conversation/public/message/token/*", use_it_first)
    await page.goto(widget_page(pages, gateway, key, locale=locale, open="true"))
    status = page.locator(".status")
    await expect(status).to_have_attribute("data-code", "token_reuse_suspected")
    await expect(status).to_have_text(words)
    await page.locator(".reload").click()
    await expect(status).to_be_hidden()
    await answered(page, "hello again")


#: what a careless site's stylesheet does to everything it can reach
AGGRESSIVE = """<style>
  body, body * { all: unset !important; font-family: "Comic Sans MS", cursive !important;
    font-size: 31px !important; color: rgb(255, 0, 0) !important;
    background: rgb(0, 255, 0) !important; line-height: 3 !important; }
  div, section, button, textarea, form, header { display: none !important;
    visibility: hidden !important; }
  [data-agent-gateway-chat] { display: none !important; opacity: 0 !important;
    transform: scale(0) !important; position: absolute !important; width: 0 !important; }
  .panel, .launcher, .log, .msg { display: none !important; }
  :root { --agc-accent: rgb(128, 0, 64); --agc-radius: 3px; --agc-font: Georgia, serif;
    --agc-left: 24px; --agc-right: auto; }
</style>"""

#: the page's own elements and how they look, to compare before and after the widget
PAGE_LOOK = """() => {
  const props = ['display', 'color', 'background-color', 'font-family', 'font-size',
    'visibility', 'margin-top', 'padding-left', 'width', 'height'];
  return {
    sheets: document.styleSheets.length,
    adopted: document.adoptedStyleSheets.length,
    html: document.documentElement.getAttributeNames().map((n) => [n, document.documentElement.getAttribute(n)]),
    body: document.body.getAttributeNames().map((n) => [n, document.body.getAttribute(n)]),
    elements: [...document.querySelectorAll('html, html *')]
      .filter((e) => !e.closest('[data-agent-gateway-chat]') && e.tagName !== 'SCRIPT')
      .map((e) => [e.tagName, ...props.map((p) => getComputedStyle(e).getPropertyValue(p))]),
  };
}"""


async def test_a_hostile_stylesheet_neither_breaks_the_widget_nor_is_broken_by_it(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer, pages: Pages
) -> None:
    gateway: Gateway = await gateway_factory()
    key = await gateway.create_key(origins=(pages.origin,))
    url = pages.add(
        "/aggressive",
        page_html(head=AGGRESSIVE, body="<main><h1>Shop</h1><div><p>Plants.</p></div></main>"),
    )
    page, console = await open_page(browser, url)
    before = await page.evaluate(PAGE_LOOK)
    # the script arrives after the page has its look
    await page.evaluate(
        """([src, key]) => {
          const s = document.createElement('script');
          Object.assign(s.dataset, {key, model: 'demo'});
          s.src = src;
          document.body.appendChild(s);
        }""",
        [gateway.url + "/widget.js", key],
    )
    launcher = page.get_by_role("button", name="Chat", exact=True)
    await launcher.click()
    await answered(page, "still **readable**")
    await expect(page.locator(".assistant strong")).to_have_text("readable")

    look = await shadow(
        page,
        """(() => {
          const panel = root.querySelector('.panel').getBoundingClientRect();
          const launcher = root.querySelector('.launcher').getBoundingClientRect();
          const style = getComputedStyle(root.querySelector('.panel'));
          return {panel: [panel.width, panel.height], left: launcher.left,
            font: getComputedStyle(root.querySelector('.msg')).fontFamily,
            size: getComputedStyle(root.querySelector('.msg')).fontSize,
            accent: getComputedStyle(root.querySelector('.launcher')).backgroundColor,
            radius: style.borderTopLeftRadius, background: style.backgroundColor};
        })()""",
    )
    # the page's rules do not reach in; its custom properties theme it, as documented
    assert look["panel"] == [370, 500], look
    assert look["font"] == "Georgia, serif" and look["size"] == "14px", look
    assert look["accent"] == "rgb(128, 0, 64)" and look["radius"] == "3px", look
    assert look["left"] == 24, look
    assert look["background"] == "rgb(255, 255, 255)", look
    # and the widget changed nothing in the page
    after = await page.evaluate(PAGE_LOOK)
    assert after == before
    assert not [line for line in console if "error" in line.lower()], console


async def test_dark_scheme_and_reduced_motion_are_respected(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer, pages: Pages
) -> None:
    gateway: Gateway = await gateway_factory()
    key = await gateway.create_key(origins=(pages.origin,))
    page, _ = await open_page(browser, widget_page(pages, gateway, key, open="true"))
    await expect(page.locator("textarea")).to_be_enabled()
    look = "(() => { const s = getComputedStyle(root.querySelector('.panel')); return [s.backgroundColor, s.animationName]; })()"
    assert await shadow(page, look) == ["rgb(255, 255, 255)", "agc-in"]
    await page.emulate_media(color_scheme="dark", reduced_motion="reduce")
    assert await shadow(page, look) == ["rgb(28, 33, 40)", "none"]
    await page.emulate_media(color_scheme="dark", reduced_motion="no-preference")
    assert await shadow(page, look) == ["rgb(28, 33, 40)", "agc-in"]


#: records each change of the widget's live regions, and whether the answer is inside one
LIVE = """() => {
  const root = SHADOW_ROOT;
  window.__spoken = [];
  const regions = root.querySelectorAll('[aria-live], [role=log], [role=status], [role=alert]');
  regions.forEach((region) => new MutationObserver(() => {
    if (region.textContent) __spoken.push(region.textContent);
  }).observe(region, {childList: true, subtree: true, characterData: true}));
  new MutationObserver(() => {
    const answer = root.querySelector('.assistant');
    if (answer && answer.closest('[aria-live], [role=log], [role=status], [role=alert]'))
      __spoken.push('answer inside a live region');
  }).observe(root.querySelector('.log'), {childList: true, subtree: true});
}""".replace("SHADOW_ROOT", ROOT)


async def axe_violations(page: Page, ran: set[str]) -> list[dict[str, Any]]:
    if not AXE.is_file():
        pytest.fail(
            f"{AXE} is missing: THE ACCESSIBILITY TEST CANNOT RUN. Install the pinned axe-core "
            "with 'npm ci' (make test does it from package-lock.json)."
        )
    if not await page.evaluate("typeof axe !== 'undefined'"):
        await page.add_script_tag(path=str(AXE))
    result = await page.evaluate(
        "(tags) => axe.run({include: [['[data-agent-gateway-chat]']]}, "
        "{runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})",
        AXE_TAGS,
    )
    checked = {rule["id"] for rule in result["passes"]}
    assert ran <= checked, checked  # the rules did run on the widget
    return [
        {"id": v["id"], "nodes": [n["target"] for n in v["nodes"]]} for v in result["violations"]
    ]


async def test_axe_finds_no_violation_and_focus_and_announcements_behave(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer, pages: Pages
) -> None:
    gateway: Gateway = await gateway_factory()
    key = await gateway.create_key(origins=(pages.origin,))
    page, _ = await open_page(browser, widget_page(pages, gateway, key))
    launcher = page.get_by_role("button", name="Chat", exact=True)
    await expect(launcher).to_have_attribute("aria-expanded", "false")
    assert await axe_violations(page, {"button-name", "color-contrast"}) == []  # closed

    await launcher.click()
    await expect(launcher).to_have_attribute("aria-expanded", "true")
    box = page.get_by_role("textbox", name="Your message")
    await expect(box).to_be_focused()  # focus moved into the panel

    await page.evaluate(LIVE)
    await answered(page, MARKDOWN)
    answer = page.locator(".assistant").last
    text = await answer.inner_text()  # its words as shown, not the Markdown marks
    assert text.startswith("You said: Pour une salle") and "**" not in text
    assert await page.evaluate("window.__spoken") == [f"Assistant: {text}"]  # once, at the end

    for scheme in ("light", "dark"):
        await page.emulate_media(color_scheme=scheme)
        ran = {"color-contrast", "label", "link-name", "list", "aria-allowed-attr"}
        assert await axe_violations(page, ran) == [], scheme

    await box.focus()
    await page.keyboard.press("Escape")
    await expect(page.get_by_role("dialog")).to_be_hidden()
    await expect(launcher).to_be_focused()  # back where the visitor was
    await expect(launcher).to_have_attribute("aria-expanded", "false")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("dialog")).to_be_visible()
    await expect(box).to_be_focused()
    await page.get_by_role("button", name="Close the chat").click()
    await expect(launcher).to_be_focused()


async def test_the_snippet_the_cli_prints_loads_with_its_integrity_hash(
    browser: BrowserContext, gateway_factory: Any, pages: Pages, tmp_path: Path
) -> None:
    gateway: Gateway = await gateway_factory()
    key = await gateway.create_key(origins=(pages.origin,))
    config = write_config(tmp_path)  # the same key store as the gateway's
    key_id = key.split("_")[1]
    printed = run_cli(
        "widget", "snippet", "--key-id", key_id, "--key", key, "--gateway-url", gateway.url,
        "--locale", "fr", "--config", str(config),
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    tag = printed.stdout.strip()
    assert f'src="{gateway.url}{versioned_path(load_widget())}"' in tag

    page, console = await open_page(browser, pages.add("/pinned", page_html(body=tag)))
    await expect(page.get_by_role("button", name="Discussion", exact=True)).to_be_visible()

    tampered = tag.replace('integrity="sha384-', 'integrity="sha384-A')
    page, console = await open_page(browser, pages.add("/tampered", page_html(body=tampered)))
    await expect(page.locator("p")).to_have_count(0)
    await page.wait_for_load_state("load")
    assert await page.locator("[data-agent-gateway-chat]").count() == 0
    assert any("integrity" in line for line in console), console


PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1100, "height": 720}}
SHOP_FR = """<style>
  body { margin: 0; font: 16px/1.6 Georgia, serif; color: #1d2a1f; background: #f6f4ee; }
  header { padding: 24px 32px; background: #23402b; color: #f6f4ee; }
  h1 { margin: 0; font-size: 28px; } main { max-width: 640px; padding: 16px 32px; }
  @media (prefers-color-scheme: dark) { body { background: #15191d; color: #dfe6dd; } }
</style>"""


@pytest.mark.parametrize("device", ["desktop", "phone"])
async def test_screenshots_in_french(
    device: str,
    chromium: Browser,
    gateway_factory: Any,
    backend: TestServer,
    pages: Pages,
    tmp_path: Path,
) -> None:
    """docs/widget-fr-<device>-<scheme>.png (``make screenshot`` refreshes them)."""
    gateway: Gateway = await gateway_factory()
    key = await gateway.create_key(origins=(pages.origin,))
    body = (
        "<header><h1>Fougère &amp; Champ</h1><div>Plantes d'intérieur, livrées.</div></header>"
        "<main><h2>Notre assistant</h2><p>Posez vos questions sur l'entretien de vos plantes."
        "</p></main>"
    )
    url = widget_page(
        pages, gateway, key, lang="fr", head=SHOP_FR, body=body, title="Assistant jardin"
    )
    for scheme in ("light", "dark"):
        context = await chromium.new_context(
            locale="fr-FR", color_scheme=scheme, **(PHONE if device == "phone" else DESKTOP)
        )
        page, console = await open_page(context, url)
        await page.get_by_role("button", name="Assistant jardin").click()
        await answered(page, MARKDOWN)
        await page.locator("textarea").blur()
        shot = tmp_path / f"widget-fr-{device}-{scheme}.png"
        await page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        target = os.environ.get("WIDGET_SCREENSHOTS")
        if target:  # `make screenshot`
            shutil.copyfile(shot, Path(target) / shot.name)
        assert not [line for line in console if "error" in line.lower()], console
        await context.close()
