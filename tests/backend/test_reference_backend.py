"""The reference backend: echo model, and an OpenAI-compatible server behind it."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from chat_backend.app import create_app
from chat_backend.models import EchoModel, OpenAIChatModel

PATH = "/internal/conversations/{cid}/messages"


@pytest.fixture
async def completions() -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
    """A small OpenAI-compatible /v1/chat/completions server that streams two pieces."""
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in ("Bon", "jour"):
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.01)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield seen, str(server.make_url("")).rstrip("/")
    await server.close()


async def start(app: web.Application) -> tuple[TestServer, str]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, str(server.make_url("")).rstrip("/")


async def test_echo_conversation() -> None:
    server, url = await start(create_app(EchoModel(word_delay=0)))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + PATH.format(cid="c1")) as resp:
                assert resp.status == 404
            body = {"model_id": "demo", "message": "hi there", "stream": False}
            async with http.post(url + PATH.format(cid="c1"), json=body) as resp:
                answer = await resp.json()
            assert answer["message"]["content"] == "You said: hi there"
            async with http.post(
                url + PATH.format(cid="c1"), json={**body, "stream": True}
            ) as resp:
                assert resp.content_type == "text/event-stream"
                text = await resp.text()
            assert text.count("data: ") == 5 and "event: done" in text
            async with http.get(url + PATH.format(cid="c1")) as resp:
                history = await resp.json()
            assert len(history["messages"]) == 4
            async with http.post(url + PATH.format(cid="c1"), json={"message": 1}) as resp:
                assert resp.status == 400
    finally:
        await server.close()


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_openai_compatible_backend_streams_and_keeps_history(
    completions: tuple[list[dict[str, Any]], str], suffix: str
) -> None:
    """The base URL as the OpenAI SDKs document it (ending in /v1) or without /v1."""
    seen, base = completions
    base += suffix
    async with aiohttp.ClientSession() as session:
        model = OpenAIChatModel(session, base, api_key="sk-test", model_map={"demo": "gpt-x"})
        server, url = await start(create_app(model))
        try:
            async with aiohttp.ClientSession() as http:
                body = {"model_id": "demo", "message": "salut", "stream": True}
                async with http.post(url + PATH.format(cid="c2"), json=body) as resp:
                    text = await resp.text()
                deltas = [
                    json.loads(line[6:])["delta"]
                    for line in text.splitlines()
                    if line.startswith("data: ") and '"delta"' in line
                ]
                assert deltas == ["Bon", "jour"]
                body = {"model_id": "demo", "message": "encore", "stream": False}
                async with http.post(url + PATH.format(cid="c2"), json=body) as resp:
                    assert (await resp.json())["message"]["content"] == "Bonjour"
        finally:
            await server.close()
    assert seen[0]["auth"] == "Bearer sk-test"
    assert seen[0]["body"]["model"] == "gpt-x" and seen[0]["body"]["stream"] is True
    # the second call carries the whole conversation
    assert [m["content"] for m in seen[1]["body"]["messages"]] == [
        "salut",
        "Bonjour",
        "encore",
    ]


async def test_unreachable_completions_server_is_502() -> None:
    async with aiohttp.ClientSession() as session:
        model = OpenAIChatModel(session, "http://127.0.0.1:1")
        server, url = await start(create_app(model))
        try:
            async with aiohttp.ClientSession() as http:
                body = {"model_id": "demo", "message": "x", "stream": False}
                async with http.post(url + PATH.format(cid="c3"), json=body) as resp:
                    assert resp.status == 502
        finally:
            await server.close()
