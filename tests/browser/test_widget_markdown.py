"""Answers as Markdown, safely: hostile answers from the real reference backend, through the
real gateway, into Chromium. The page has no Content-Security-Policy, so markup the widget
let through would run; every element and attribute in the answers must be the renderer's."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import BrowserContext, Dialog, Page, expect

from tests.browser.conftest import echo_backend
from tests.browser.pages import ROOT, Pages, page_html, say, shadow, widget_tag
from tests.support.harness import Gateway

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # a Chromium process

#: the echo model answers "You said: <message>", one space-separated word at a time
ECHO = "You said: "

#: checks every element the widget adds to the log, as it is added, and the page around it;
#: what breaks the rules goes to window.__violations
AUDIT = """() => {
  const root = SHADOW_ROOT;
  const ALLOWED = {P: [], STRONG: [], EM: [], DEL: [], CODE: [], PRE: ['tabindex'], UL: [],
    OL: ['start'], LI: [], A: ['href', 'rel', 'target'], BR: [], BLOCKQUOTE: [], HR: []};
  const BUBBLE = ['class', 'data-role', 'data-state', 'aria-busy'];
  const scripts = document.querySelectorAll('script').length;
  window.__violations = [];
  window.__growth = [];
  const check = (node) => {
    if (node.nodeType !== 1) return;
    if (node.parentNode === root.querySelector('.log')) {
      for (const a of node.getAttributeNames()) if (!BUBBLE.includes(a)) __violations.push('bubble@' + a);
      node.querySelectorAll('*').forEach(check);
      return;
    }
    const allowed = ALLOWED[node.tagName];
    if (!allowed) { __violations.push('<' + node.tagName + '>'); return; }
    for (const a of node.getAttributeNames()) {
      if (!allowed.includes(a)) __violations.push(node.tagName + '@' + a);
    }
    if (node.tagName === 'A') {
      const url = new URL(node.getAttribute('href'));
      if (!['http:', 'https:', 'mailto:'].includes(url.protocol)) __violations.push('href ' + url.href);
      if (node.rel !== 'noopener noreferrer' || node.target !== '_blank') __violations.push('a ' + node.outerHTML);
    }
    node.querySelectorAll('*').forEach(check);
  };
  window.__audit = () => {
    root.querySelectorAll('.log > *').forEach(check);
    if (document.querySelectorAll('script').length !== scripts) __violations.push('a script in the page');
    if (document.images.length || root.querySelector('img, script, iframe, style, svg, object'))
      __violations.push('foreign element');
  };
  new MutationObserver((records) => {
    for (const record of records) {
      if (record.type === 'attributes') check(record.target);
      else record.addedNodes.forEach((node) => check(node.nodeType === 1 ? node : record.target));
    }
    const answers = root.querySelectorAll('.assistant');
    const last = answers[answers.length - 1];
    if (last && last.textContent.length < 2000)
      __growth.push([!!last.querySelector('strong'), last.textContent.includes('**')]);
  }).observe(root.querySelector('.log'), {childList: true, subtree: true, attributes: true});
}""".replace("SHADOW_ROOT", ROOT)


@pytest.fixture
async def backend() -> AsyncIterator[TestServer]:
    """The reference backend, with a short pause between words so each arrives alone."""
    async with echo_backend(0.02) as server:
        yield server


async def answer_of(page: Page, message: str, timeout: float = 15_000) -> Any:
    await say(page, message)
    answer = page.locator(".assistant").last
    await expect(answer).to_have_attribute("data-state", "done", timeout=timeout)
    await expect(page.locator(".status")).to_be_hidden()
    await page.evaluate("window.__audit()")
    return answer


async def test_hostile_answers_are_rendered_by_the_renderer_alone(
    browser: BrowserContext, gateway_factory: Any, backend: TestServer, pages: Pages
) -> None:
    gateway: Gateway = await gateway_factory(
        server={"max_body_bytes": 4 * 1024 * 1024, "max_message_chars": 1_000_000}
    )
    key = await gateway.create_key(origins=(pages.origin,))
    tag = widget_tag(
        gateway.url + "/widget.js", {"data-key": key, "data-model": "demo", "data-open": "true"}
    )
    url = pages.add("/hostile", page_html(body="<main><p>Shop</p></main>" + tag))
    page = await browser.new_page()
    dialogs: list[str] = []

    async def refuse(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", refuse)
    await page.goto(url)
    await expect(page.locator("textarea")).to_be_enabled()
    await page.evaluate(AUDIT)

    # HTML in an answer is text
    answer = await answer_of(
        page,
        "<script>window.__pwned='script'</script> **bold words here** and *em* and `<b>code</b>`",
    )
    await expect(answer.locator("strong")).to_have_text("bold words here")
    await expect(answer.locator("em")).to_have_text("em")
    await expect(answer.locator("code")).to_have_text("<b>code</b>")
    await expect(answer).to_contain_text("<script>window.__pwned='script'</script>")
    # drawn progressively: the opening ** was shown as typed until its closing one arrived
    growth: list[list[bool]] = await page.evaluate("window.__growth")
    assert [False, True] in growth and growth[-1] == [True, False], growth

    # links: http, https and mailto only, opened apart from the page
    answer = await answer_of(
        page,
        "[click](javascript:window.__pwned='link') [ok](https://example.com/a?b=1) "
        "[mail](mailto:a@example.com) [data](data:text/html,<script>alert(1)</script>) "
        "[case](JaVaScRiPt:alert(1)) [tab](java\tscript:alert(1)) [rel](/relative) "
        "and http://example.org/x.",
    )
    hrefs = await answer.locator("a").evaluate_all("(links) => links.map((a) => a.href)")
    assert hrefs == ["https://example.com/a?b=1", "mailto:a@example.com", "http://example.org/x"]
    for label in ("click", "data", "case", "tab", "rel"):
        await expect(answer).to_contain_text(label)

    # entities stay as written; markup in them too
    answer = await answer_of(
        page,
        "<img src=x onerror=\"window.__pwned='img'\"> &lt;img src=x onerror=alert(1)&gt; &amp; &#60;b&#62;",
    )
    await expect(answer).to_contain_text("<img src=x onerror=\"window.__pwned='img'\">")
    await expect(answer).to_contain_text("&lt;img src=x onerror=alert(1)&gt; &amp; &#60;b&#62;")

    # blocks, and markers left open while (and after) the answer streams
    answer = await answer_of(
        page,
        "list:\n\n- **unclosed item\n- `open code\n- [half](https://example.com\n\n"
        "```html\n<script>window.__pwned='fence'</script>\n```\n\n1. one\n2. *two*",
    )
    await expect(answer.locator("pre code")).to_have_text("<script>window.__pwned='fence'</script>")
    await expect(answer.locator("ul > li")).to_have_count(3)
    await expect(answer.locator("ul > li").first).to_have_text("**unclosed item")
    await expect(answer.locator("ol > li")).to_have_text(["one", "two"])
    await expect(answer.locator("ol em")).to_have_text("two")

    # a 1 MB answer of the same, in 100 paragraphs of about 10 kB (two words each; few
    # characters that JSON escapes: the backend takes bodies up to 1 MiB)
    unit = "**b**,<img/src=x/onerror=window.__pwned=1>,[x](javascript:window.__pwned=2),`c`,"
    paragraph = "p " + unit * (10_000 // len(unit))
    big = (paragraph + "\n\n") * 101
    big = big[: 1_000_000 - len(ECHO)]
    answer = await answer_of(page, big, timeout=90_000)
    paragraphs = big.split("\n\n")
    await expect(answer.locator(":scope > p")).to_have_count(
        len([p for p in paragraphs if p.strip()])
    )
    strong = await answer.locator("strong").count()
    assert strong == big.count("**b**"), strong
    assert await answer.locator("a").count() == 0

    violations = await page.evaluate("window.__violations")
    assert violations == []
    assert await page.evaluate("window.__pwned") is None
    assert dialogs == []
    assert await shadow(page, "root.querySelectorAll('.assistant').length") == 5
