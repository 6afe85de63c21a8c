"""The reference backend's private conversation API, behind the gateway's OAuth2 routes.

The gateway forwards here only requests with a valid access token, and says who the
caller is in ``X-Auth-Subject`` (and ``X-Auth-Scopes``, ``X-Auth-Client-Id``); each
subject sees only its own conversations. Without ``X-Auth-Subject`` the request did not
come through the gateway and is refused.
"""

from __future__ import annotations

from aiohttp import web

from chat_backend.answers import parse_message, problem, read_body, reply
from chat_backend.conversations import Conversations

PREFIX = "/internal/private"
CONVERSATION_ID = r"[A-Za-z0-9._-]{1,128}"
PRIVATE_CONVERSATIONS = web.AppKey("private_conversations", Conversations)


def _subject(request: web.Request) -> str | web.Response:
    subject = request.headers.get("X-Auth-Subject", "")
    if not subject:
        return problem(401, "no X-Auth-Subject: private routes are reached through the gateway")
    return subject


def _key(subject: str, conversation_id: str) -> str:
    return f"{subject}\n{conversation_id}"


async def whoami(request: web.Request) -> web.Response:
    subject = _subject(request)
    if isinstance(subject, web.Response):
        return subject
    scopes = request.headers.get("X-Auth-Scopes", "")
    return web.json_response(
        {
            "subject": subject,
            "scopes": scopes.split() if scopes else [],
            "client_id": request.headers.get("X-Auth-Client-Id"),
            "received_authorization": "Authorization" in request.headers,
            "received_cookie": "Cookie" in request.headers,
        }
    )


async def list_conversations(request: web.Request) -> web.Response:
    subject = _subject(request)
    if isinstance(subject, web.Response):
        return subject
    store = request.app[PRIVATE_CONVERSATIONS]
    mine = [
        {"conversation_id": c.conversation_id, "model_id": c.model_id, "messages": len(c.messages)}
        for c in store.values()
        if c.owner == subject
    ]
    return web.json_response({"conversations": mine})


async def get_messages(request: web.Request) -> web.Response:
    subject = _subject(request)
    if isinstance(subject, web.Response):
        return subject
    conversation_id = request.match_info["conversation_id"]
    conversation = request.app[PRIVATE_CONVERSATIONS].get(_key(subject, conversation_id))
    if conversation is None:
        return problem(404, "no such conversation")
    return web.json_response(conversation.view())


async def post_message(request: web.Request) -> web.StreamResponse:
    subject = _subject(request)
    if isinstance(subject, web.Response):
        return subject
    parsed = parse_message(await read_body(request))
    if isinstance(parsed, web.Response):
        return parsed
    model_id, message, stream = parsed
    conversation_id = request.match_info["conversation_id"]
    conversation = request.app[PRIVATE_CONVERSATIONS].get_or_create(
        _key(subject, conversation_id), model_id, display_id=conversation_id, owner=subject
    )
    return await reply(request, conversation, model_id, message, stream)


async def delete_conversation(request: web.Request) -> web.Response:
    subject = _subject(request)
    if isinstance(subject, web.Response):
        return subject
    key = _key(subject, request.match_info["conversation_id"])
    if not request.app[PRIVATE_CONVERSATIONS].delete(key):
        return problem(404, "no such conversation")
    return web.Response(status=204)


def add_routes(app: web.Application, max_conversations: int) -> None:
    app[PRIVATE_CONVERSATIONS] = Conversations(max_conversations)
    one = f"{PREFIX}/conversations/{{conversation_id:{CONVERSATION_ID}}}"
    app.router.add_get(f"{PREFIX}/whoami", whoami)
    app.router.add_get(f"{PREFIX}/conversations", list_conversations)
    app.router.add_get(one + "/messages", get_messages)
    app.router.add_post(one + "/messages", post_message)
    app.router.add_delete(one, delete_conversation)
