"""The reference backend's HTTP API (the gateway's upstream contract)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from chat_backend import demo, private
from chat_backend.answers import MODEL, STATS, Stats, parse_message, problem, read_body, reply
from chat_backend.conversations import Conversations
from chat_backend.demo import DemoSettings
from chat_backend.models import Model

MESSAGES_PATH = "/internal/conversations/{conversation_id}/messages"
CONVERSATIONS = web.AppKey("conversations", Conversations)


async def echo_request_id(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Every answer names the request it answers, as a good upstream does: the gateway
    checks the echo, and only a connection whose answers prove whose they are is used
    for another request."""
    request_id = request.headers.get("X-Request-Id")
    if request_id:
        response.headers["X-Request-Id"] = request_id


@web.middleware
async def record_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    request.app[STATS].recent_headers.append(dict(request.headers))
    response: web.StreamResponse = await handler(request)
    return response


async def get_messages(request: web.Request) -> web.Response:
    conversation = request.app[CONVERSATIONS].get(request.match_info["conversation_id"])
    if conversation is None:
        return problem(404, "no such conversation")
    return web.json_response(conversation.view())


async def post_message(request: web.Request) -> web.StreamResponse:
    parsed = parse_message(await read_body(request))
    if isinstance(parsed, web.Response):
        return parsed
    model_id, message, stream = parsed
    conversation = request.app[CONVERSATIONS].get_or_create(
        request.match_info["conversation_id"], model_id
    )
    return await reply(request, conversation, model_id, message, stream)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "conversations": len(request.app[CONVERSATIONS])})


def create_app(
    model: Model, *, max_conversations: int = 10_000, demo_settings: DemoSettings | None = None
) -> web.Application:
    app = web.Application(middlewares=[record_headers])
    app.on_response_prepare.append(echo_request_id)
    app[CONVERSATIONS] = Conversations(max_conversations)
    app[MODEL] = model
    app[STATS] = Stats()
    app.router.add_get(MESSAGES_PATH, get_messages)
    app.router.add_post(MESSAGES_PATH, post_message)
    app.router.add_get("/healthz", healthz)
    private.add_routes(app, max_conversations)
    demo.add_routes(app, demo_settings or DemoSettings())
    return app
