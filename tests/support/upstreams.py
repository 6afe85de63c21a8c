"""Small real upstreams (aiohttp apps on sockets) that misbehave on purpose."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiohttp import web

PATH = "/internal/conversations/{conversation_id}/messages"


@dataclass
class Script:
    """What the scripted upstream does, and what it saw."""

    status: int = 200
    headers_delay: float = 0.0
    #: (delay before, bytes) for each chunk of a streamed answer
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    extra_headers: dict[str, str] = field(default_factory=dict)
    #: answer with the request's X-Request-Id, as a good upstream does
    echo_request_id: bool = True
    body: bytes = b'{"messages": []}'
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    chunk_sent_at: list[float] = field(default_factory=list)
    finished_at: float | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


SCRIPT = web.AppKey("script", Script)


async def _handle(request: web.Request) -> web.StreamResponse:
    script = request.app[SCRIPT]
    script.seen_headers.append(dict(request.headers))
    echo = {"X-Request-Id": request.headers["X-Request-Id"]} if script.echo_request_id else {}
    if request.can_read_body:
        await request.read()
    try:
        if script.headers_delay:
            await asyncio.sleep(script.headers_delay)
        if not script.chunks:
            return web.Response(
                status=script.status,
                body=script.body,
                content_type="application/json",
                headers={**echo, **script.extra_headers},
            )
        response = web.StreamResponse(
            status=script.status,
            headers={"Content-Type": "text/event-stream", **echo, **script.extra_headers},
        )
        await response.prepare(request)
        for delay, chunk in script.chunks:
            if delay:
                await asyncio.sleep(delay)
            await response.write(chunk)
            script.chunk_sent_at.append(time.monotonic())
        await response.write_eof()
        script.finished_at = time.monotonic()
        return response
    except asyncio.CancelledError:
        script.cancelled.set()
        raise


def scripted_app(script: Script) -> web.Application:
    app = web.Application()
    app[SCRIPT] = script
    app.router.add_route("*", PATH, _handle)
    return app
