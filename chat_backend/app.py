"""The reference backend's HTTP API (the gateway's upstream contract)."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from chat_backend.conversations import Conversations
from chat_backend.models import Model, ModelError

MESSAGES_PATH = "/internal/conversations/{conversation_id}/messages"


@dataclass
class Stats:
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0
    #: headers of recent requests, newest last (for inspection in tests and demos)
    recent_headers: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=100))


CONVERSATIONS = web.AppKey("conversations", Conversations)
MODEL = web.AppKey("model", Model)
STATS = web.AppKey("stats", Stats)


def _problem(status: int, detail: str) -> web.Response:
    return web.json_response(
        {"title": detail, "status": status, "detail": detail},
        status=status,
        content_type="application/problem+json",
    )


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@web.middleware
async def record_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    request.app[STATS].recent_headers.append(dict(request.headers))
    response: web.StreamResponse = await handler(request)
    return response


async def get_messages(request: web.Request) -> web.Response:
    conversation = request.app[CONVERSATIONS].get(request.match_info["conversation_id"])
    if conversation is None:
        return _problem(404, "no such conversation")
    return web.json_response(conversation.view())


async def post_message(request: web.Request) -> web.StreamResponse:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _problem(400, "the body must be JSON")
    if not isinstance(body, dict):
        return _problem(400, "the body must be a JSON object")
    model_id, message, stream = body.get("model_id"), body.get("message"), body.get("stream", False)
    if not isinstance(model_id, str) or not isinstance(message, str) or not message:
        return _problem(400, "'model_id' and 'message' must be non-empty strings")
    if not isinstance(stream, bool):
        return _problem(400, "'stream' must be a boolean")
    conversation = request.app[CONVERSATIONS].get_or_create(
        request.match_info["conversation_id"], model_id
    )
    conversation.add("user", message)
    history = list(conversation.messages)
    model = request.app[MODEL]
    if not stream:
        try:
            text = "".join([piece async for piece in model.answer(model_id, history)])
        except ModelError as exc:
            return _problem(502, str(exc))
        reply = conversation.add("assistant", text)
        return web.json_response(
            {"conversation_id": conversation.conversation_id, "message": reply}
        )

    stats = request.app[STATS]
    stats.streams_started += 1
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    pieces: list[str] = []
    try:
        async for piece in model.answer(model_id, history):
            pieces.append(piece)
            await response.write(_sse({"delta": piece}))
        reply = conversation.add("assistant", "".join(pieces))
        await response.write(
            _sse({"conversation_id": conversation.conversation_id, "message": reply}, "done")
        )
        stats.streams_completed += 1
    except ModelError as exc:
        await response.write(_sse({"detail": str(exc)}, "error"))
    except (asyncio.CancelledError, ConnectionResetError):
        stats.streams_cancelled += 1
        raise
    await response.write_eof()
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "conversations": len(request.app[CONVERSATIONS])})


def create_app(model: Model, *, max_conversations: int = 10_000) -> web.Application:
    app = web.Application(middlewares=[record_headers])
    app[CONVERSATIONS] = Conversations(max_conversations)
    app[MODEL] = model
    app[STATS] = Stats()
    app.router.add_get(MESSAGES_PATH, get_messages)
    app.router.add_post(MESSAGES_PATH, post_message)
    app.router.add_get("/healthz", healthz)
    return app
