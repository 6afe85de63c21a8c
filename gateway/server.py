"""Running the gateway: listeners, signals, shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping

import structlog
from aiohttp import web

from gateway.config import Config
from gateway.web.app import create_app
from gateway.web.state import SERVICES

log = structlog.get_logger("gateway")


async def serve(config: Config, environ: Mapping[str, str]) -> None:
    app = create_app(config, environ=environ)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(
        runner,
        config.server.host,
        config.server.port,
        shutdown_timeout=config.server.shutdown_grace_seconds,
        backlog=1024,
    )
    await site.start()
    log.info(
        "listening",
        public=f"http://{config.server.host}:{config.server.port}",
        store=config.store.type,
        keys=config.keys.type,
        upstream=config.upstream.url,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    policies = app[SERVICES].admissions.policies
    loop.add_signal_handler(signal.SIGHUP, policies.reload, "sighup")
    try:
        await stop.wait()
        log.info("shutting_down", grace_seconds=config.server.shutdown_grace_seconds)
    finally:
        await runner.cleanup()
        log.info("stopped")


def run(config: Config, environ: Mapping[str, str]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(serve(config, environ))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(config, environ))
