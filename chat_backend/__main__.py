"""``python -m chat_backend``: run the reference backend."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from chat_backend.app import create_app
from chat_backend.demo import DemoSettings
from chat_backend.models import EchoModel, Model, OpenAIChatModel


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="chat-backend", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--word-delay", type=float, default=0.05, help="echo model pacing (s)")
    parser.add_argument(
        "--openai-base-url",
        default=os.environ.get("OPENAI_BASE_URL"),
        help="answer with an OpenAI-compatible server instead of the echo model "
        "(with or without the trailing /v1: https://api.openai.com/v1 or http://litellm:4000)",
    )
    parser.add_argument(
        "--openai-api-key-env", default="OPENAI_API_KEY", help="variable holding its API key"
    )
    parser.add_argument(
        "--model-map",
        action="append",
        default=[],
        metavar="PUBLIC=UPSTREAM",
        help="model id sent to the completions server (repeatable)",
    )
    demo = parser.add_argument_group("demo page (/demo)")
    demo.add_argument(
        "--demo-gateway", default="http://127.0.0.1:8080", help="gateway base URL for /demo"
    )
    demo.add_argument(
        "--demo-key",
        default=os.environ.get("DEMO_AGENT_KEY", ""),
        help="public agent key for /demo (default: $DEMO_AGENT_KEY; or ?key= in the URL)",
    )
    demo.add_argument("--demo-model", default="demo", help="model id for /demo")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    session: aiohttp.ClientSession | None = None
    model: Model
    if args.openai_base_url:
        session = aiohttp.ClientSession()
        mapping = dict(item.split("=", 1) for item in args.model_map if "=" in item)
        model = OpenAIChatModel(
            session,
            args.openai_base_url,
            api_key=os.environ.get(args.openai_api_key_env),
            model_map=mapping,
        )
    else:
        model = EchoModel(args.word_delay)
    demo = DemoSettings(args.demo_gateway.rstrip("/"), args.demo_key, args.demo_model)
    app = create_app(model, demo_settings=demo)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port, shutdown_timeout=5).start()
    kind = f"OpenAI-compatible at {args.openai_base_url}" if args.openai_base_url else "echo"
    print(
        f"chat-backend: http://{args.host}:{args.port} ({kind} model); "
        f"demo page http://{args.host}:{args.port}/demo",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if session is not None:
            await session.close()


def main(argv: Sequence[str] | None = None) -> int:
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
