"""The bare pass-through proxy: the floor for any Python proxy on this machine.

aiohttp server and pooled aiohttp client on uvloop, with the gateway's garbage-collector
settings (:func:`gateway.server.settle_heap`), and none of its work: every request is
forwarded unchanged (method, path, body, ``Content-Type`` and ``Accept``) and the answer
relayed, streamed chunk by chunk when it is ``text/event-stream``.
``python -m bench.passthrough PORT UPSTREAM_URL``.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import uvloop
from aiohttp import web

from gateway.server import settle_heap

FORWARDED = ("Content-Type", "Accept")


def create_app(upstream: str) -> web.Application:
    base = upstream.rstrip("/")
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=100, keepalive_timeout=30)
        app[session_key] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        yield
        await app[session_key].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {h: request.headers[h] for h in FORWARDED if h in request.headers}
        async with app[session_key].request(
            request.method, base + request.path_qs, data=body or None, headers=headers
        ) as resp:
            if resp.content_type == "text/event-stream":
                out = web.StreamResponse(status=resp.status)
                out.content_type = resp.content_type
                await out.prepare(request)
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
            return web.Response(
                status=resp.status,
                body=await resp.read(),
                headers={"Content-Type": resp.headers.get("Content-Type", "application/json")},
            )

    app = web.Application()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


async def _serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    settle_heap()  # as `gateway serve` does: the floor gets every runtime tuning
    try:
        await asyncio.Event().wait()  # until SIGTERM ends the process
    finally:
        await runner.cleanup()


def serve(app: web.Application, port: int) -> None:
    """Run ``app`` on uvloop (as ``gateway serve`` does) until the process is stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(app, port))


def main() -> None:
    serve(create_app(sys.argv[2]), int(sys.argv[1]))


if __name__ == "__main__":
    main()
