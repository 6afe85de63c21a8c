"""The fast upstream: canned answers of the upstream contract, as fast as possible.

nginx with ``return 200`` when it is installed; otherwise this module's aiohttp app
(``python -m bench.upstream PORT``). Both answer the internal conversation routes the
gateway calls and, for the bare pass-through proxy which forwards paths unchanged, the
public routes, with the same bodies.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web

HISTORY = (
    b'{"conversation_id":"c-bench","messages":[{"role":"user","content":"hello"},'
    b'{"role":"assistant","content":"You said: hello"}]}'
)
ANSWER = b'{"conversation_id":"c-bench","message":{"role":"assistant","content":"You said: hello"}}'
SSE = (
    b'event: message\ndata: {"delta":"You "}\n\n'
    b'event: message\ndata: {"delta":"said: "}\n\n'
    b'event: message\ndata: {"delta":"hello"}\n\n'
    b'event: done\ndata: {"conversation_id":"c-bench","message":{"role":"assistant",'
    b'"content":"You said: hello"}}\n\n'
)
#: streams for this model (``X-Model-Id``) drip at DRIP_BYTES_PER_SECOND (``make soak``)
DRIP_MODEL = "drip"
DRIP_BYTES_PER_SECOND = 64
#: nginx counts the head in ``limit_rate_after``: about 200 bytes of head, then the first
#: DRIP_BYTES_PER_SECOND of the stream at once, as the aiohttp upstream sends them
DRIP_FIRST_BYTES = 200 + DRIP_BYTES_PER_SECOND
TOKEN = b'{"token":"bench","expires_in":900,"expires_at":"2030-01-01T00:00:00Z"}'


def _nginx_string(body: bytes) -> str:
    text = body.decode()
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_conf(port: int, work: Path) -> str:
    """One worker; POSTs with ``Accept: text/event-stream`` get the streamed answer."""
    temp = "\n".join(
        f"  {name}_temp_path {work / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""worker_processes 1;
daemon off;
pid {work / "nginx.pid"};
error_log {work / "nginx-error.log"} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
{temp}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    # a good upstream names the request each answer is for (the gateway checks it)
    add_header X-Request-Id $http_x_request_id always;
    location = /healthz {{ return 200 'ok'; }}
    location = /_answer {{
      internal; default_type application/json; return 200 {_nginx_string(ANSWER)};
    }}
    location = /_sse {{
      internal; default_type text/event-stream; return 200 {_nginx_string(SSE)};
    }}
    location = /_sse_drip {{
      internal; default_type text/event-stream;
      limit_rate {DRIP_BYTES_PER_SECOND}; limit_rate_after {DRIP_FIRST_BYTES};
      return 200 {_nginx_string(SSE)};
    }}
    location ~ ^/internal/conversations/[^/]+/messages$ {{
      set $stream "$http_accept:$http_x_model_id";
      if ($stream = "text/event-stream:{DRIP_MODEL}") {{ rewrite ^ /_sse_drip last; }}
      if ($http_accept = "text/event-stream") {{ rewrite ^ /_sse last; }}
      if ($request_method = POST) {{ rewrite ^ /_answer last; }}
      default_type application/json;
      return 200 {_nginx_string(HISTORY)};
    }}
    location = /v1/chat/conversation/public/message {{
      if ($http_accept = "text/event-stream") {{ rewrite ^ /_sse last; }}
      rewrite ^ /_answer last;
    }}
    location ^~ /v1/chat/conversation/public/messages/ {{
      default_type application/json;
      return 200 {_nginx_string(HISTORY)};
    }}
    location ^~ /v1/chat/conversation/public/message/token/ {{
      default_type application/json;
      return 200 {_nginx_string(TOKEN)};
    }}
    location = /v1/chat/conversation/public/token/refresh {{
      default_type application/json;
      return 200 {_nginx_string(TOKEN)};
    }}
  }}
}}
"""


def aiohttp_app() -> web.Application:
    async def history(request: web.Request) -> web.Response:
        return web.Response(body=HISTORY, content_type="application/json")

    async def send(request: web.Request) -> web.StreamResponse:
        await request.read()
        if request.headers.get("Accept") == "text/event-stream":
            if request.headers.get("X-Model-Id") == DRIP_MODEL:
                return await drip(request)
            return web.Response(body=SSE, content_type="text/event-stream")
        return web.Response(body=ANSWER, content_type="application/json")

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for offset in range(0, len(SSE), DRIP_BYTES_PER_SECOND):
            await response.write(SSE[offset : offset + DRIP_BYTES_PER_SECOND])
            await asyncio.sleep(1)
        await response.write_eof()
        return response

    async def token(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=TOKEN, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def echo_request_id(request: web.BaseRequest, response: web.StreamResponse) -> None:
        request_id = request.headers.get("X-Request-Id")
        if request_id:  # a good upstream names the request each answer is for
            response.headers["X-Request-Id"] = request_id

    app = web.Application()
    app.on_response_prepare.append(echo_request_id)
    app.router.add_get("/internal/conversations/{cid}/messages", history)
    app.router.add_post("/internal/conversations/{cid}/messages", send)
    app.router.add_post("/v1/chat/conversation/public/message", send)
    app.router.add_get("/v1/chat/conversation/public/messages/{token}", history)
    app.router.add_get("/v1/chat/conversation/public/message/token/{model}", token)
    app.router.add_post("/v1/chat/conversation/public/token/refresh", token)
    app.router.add_get("/healthz", health)
    return app


def main() -> None:
    from bench.passthrough import serve

    serve(aiohttp_app(), int(sys.argv[1]))


if __name__ == "__main__":
    main()
