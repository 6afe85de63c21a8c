"""The reference backend's demo page and private conversation API."""

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from chat_backend.app import create_app
from chat_backend.demo import DemoSettings
from chat_backend.models import EchoModel


@pytest.fixture
async def served() -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    app = create_app(
        EchoModel(0), demo_settings=DemoSettings("http://127.0.0.1:9", "pak_default", "demo")
    )
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as http:
        yield http, str(server.make_url("")).rstrip("/")
    await server.close()


async def test_demo_page_embeds_the_widget_under_a_strict_csp(served) -> None:
    http, url = served
    async with http.get(
        url + "/demo", params={"gateway": "http://127.0.0.1:8080/", "key": "pak_abc"}
    ) as resp:
        page = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert '<script src="http://127.0.0.1:8080/widget.js" defer' in page
    assert 'data-key="pak_abc"' in page and 'data-model="demo"' in page
    assert "default-src 'none'" in csp
    assert "script-src http://127.0.0.1:8080;" in csp
    assert "connect-src http://127.0.0.1:8080;" in csp
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<style nonce="{nonce}">' in page


async def test_demo_page_defaults_and_instructions(served) -> None:
    http, url = served
    async with http.get(url + "/demo") as resp:
        page = await resp.text()
    assert 'data-key="pak_default"' in page and "http://127.0.0.1:9/widget.js" in page
    async with http.get(url + "/demo", params={"key": ""}) as resp:
        page = await resp.text()
    assert "<script" not in page and 'id="no-key"' in page
    assert f"--origin {url}" in page


@pytest.mark.parametrize(
    "params",
    [
        {"gateway": 'http://x"><script>alert(1)</script>'},
        {"gateway": "javascript:alert(1)"},
        {"key": "pak_<b>"},
        {"model": "a b"},
    ],
)
async def test_demo_page_refuses_what_it_cannot_embed_safely(served, params) -> None:
    http, url = served
    async with http.get(url + "/demo", params=params) as resp:
        assert resp.status == 400
        assert "<script" not in await resp.text()


async def test_private_api_needs_the_gateways_subject_and_keeps_subjects_apart(served) -> None:
    http, url = served
    base = url + "/internal/private"
    async with http.get(base + "/conversations") as resp:
        assert resp.status == 401
    alice = {"X-Auth-Subject": "alice", "X-Auth-Scopes": "chat:read chat:write"}
    bob = {"X-Auth-Subject": "bob"}
    body = {"model_id": "demo", "message": "hi"}
    async with http.post(base + "/conversations/c1/messages", json=body, headers=alice) as resp:
        assert resp.status == 200
        assert (await resp.json())["message"]["content"] == "You said: hi"
    async with http.get(base + "/conversations/c1/messages", headers=alice) as resp:
        view = await resp.json()
        assert view["conversation_id"] == "c1" and len(view["messages"]) == 2
    async with http.get(base + "/conversations/c1/messages", headers=bob) as resp:
        assert resp.status == 404
    async with http.get(base + "/conversations", headers=alice) as resp:
        assert (await resp.json())["conversations"] == [
            {"conversation_id": "c1", "model_id": "demo", "messages": 2}
        ]
    async with http.get(base + "/conversations", headers=bob) as resp:
        assert (await resp.json())["conversations"] == []
    async with http.get(base + "/whoami", headers=alice) as resp:
        assert await resp.json() == {
            "subject": "alice",
            "scopes": ["chat:read", "chat:write"],
            "client_id": None,
            "received_authorization": False,
            "received_cookie": False,
        }
    async with http.delete(base + "/conversations/c1", headers=bob) as resp:
        assert resp.status == 404
    async with http.delete(base + "/conversations/c1", headers=alice) as resp:
        assert resp.status == 204
    async with http.get(base + "/conversations/c1/messages", headers=alice) as resp:
        assert resp.status == 404
