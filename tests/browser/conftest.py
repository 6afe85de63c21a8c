"""Real Chromium (Debian's package) driven by Playwright, against a real gateway and the
reference backend on two different origins."""

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, BrowserContext, async_playwright

from chat_backend.app import create_app as create_backend
from chat_backend.models import EchoModel
from tests.browser.pages import Pages

#: Debian's chromium; Playwright never downloads a browser here
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: pace of the echo model: slow enough to watch an answer grow word by word
WORD_DELAY = 0.12


def _require_chromium() -> None:
    if os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return
    message = (
        f"Chromium not found at {CHROMIUM}: THE BROWSER TESTS DID NOT RUN. "
        "Install it with 'apt-get install chromium' (.ci/run does)."
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@asynccontextmanager
async def echo_backend(word_delay: float) -> AsyncIterator[TestServer]:
    """The reference backend (serving /demo), its echo model ``word_delay`` s per word."""
    server = TestServer(create_backend(EchoModel(word_delay=word_delay)), host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def backend() -> AsyncIterator[TestServer]:
    """The reference backend, slower than the suite's default."""
    async with echo_backend(WORD_DELAY) as server:
        yield server


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    _require_chromium()
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1100, "height": 720},
        )
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
async def pages() -> AsyncIterator[Pages]:
    """A website of test pages on its own origin (no CSP unless a page brings one)."""
    site = Pages()
    await site.server.start_server()
    yield site
    await site.server.close()


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    """The same Chromium, for tests that need contexts of their own (a locale, a phone)."""
    _require_chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        try:
            yield launched
        finally:
            await launched.close()
