"""Answering a message: the JSON or server-sent-events reply shared by every route."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from chat_backend.conversations import Conversation
from chat_backend.models import Model, ModelError


@dataclass
class Stats:
    streams_started: int = 0
    streams_completed: int = 0
    streams_cancelled: int = 0
    #: headers of recent requests, newest last (for inspection in tests and demos)
    recent_headers: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=100))


MODEL = web.AppKey("model", Model)
STATS = web.AppKey("stats", Stats)


def problem(status: int, detail: str) -> web.Response:
    return web.json_response(
        {"title": detail, "status": status, "detail": detail},
        status=status,
        content_type="application/problem+json",
    )


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def parse_message(body: Any) -> tuple[str, str, bool] | web.Response:
    """``(model_id, message, stream)`` from a request body, or the 400 to answer."""
    if not isinstance(body, dict):
        return problem(400, "the body must be a JSON object")
    model_id, message, stream = body.get("model_id"), body.get("message"), body.get("stream", False)
    if not isinstance(model_id, str) or not isinstance(message, str) or not message:
        return problem(400, "'model_id' and 'message' must be non-empty strings")
    if not isinstance(stream, bool):
        return problem(400, "'stream' must be a boolean")
    return model_id, message, stream


async def read_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


async def reply(
    request: web.Request, conversation: Conversation, model_id: str, message: str, stream: bool
) -> web.StreamResponse:
    """Add the user's message, answer it as JSON or as server-sent events."""
    conversation.add("user", message)
    history = list(conversation.messages)
    model = request.app[MODEL]
    if not stream:
        try:
            text = "".join([piece async for piece in model.answer(model_id, history)])
        except ModelError as exc:
            return problem(502, str(exc))
        added = conversation.add("assistant", text)
        return web.json_response(
            {"conversation_id": conversation.conversation_id, "message": added}
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
            await response.write(sse({"delta": piece}))
        added = conversation.add("assistant", "".join(pieces))
        await response.write(
            sse({"conversation_id": conversation.conversation_id, "message": added}, "done")
        )
        stats.streams_completed += 1
    except ModelError as exc:
        await response.write(sse({"detail": str(exc)}, "error"))
    except (asyncio.CancelledError, ConnectionResetError):
        stats.streams_cancelled += 1
        raise
    await response.write_eof()
    return response
