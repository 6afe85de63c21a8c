"""Running the gateway: the public and admin listeners, signals, graceful shutdown.

On SIGTERM (or SIGINT):

1. readiness turns false (``/readyz`` answers 503) and answers carry
   ``Connection: close``, while the public listener keeps accepting for
   ``server.drain_seconds`` so load balancers notice and stop sending new connections
   (a second signal ends this wait early);
2. the public listener closes and idle keep-alive connections are closed; requests and
   streams in flight get ``server.shutdown_grace_seconds`` to finish, once for all of
   them (:meth:`gateway.web.listener.ListenerServer.shutdown`); then the streams still
   running end with a final ``shutting_down`` event asking the client to retry on a new
   connection (:class:`gateway.web.relay.OpenStreams`), the other handlers are cancelled
   with their upstream calls (logged as 499), and their connections close;
3. the application's resources (upstream pool, store, key store) close, then the admin
   listener (on a thread of its own: :mod:`gateway.web.admin_thread`), which answers
   probes and scrapes until the end; the process exits 0.

From the signal to the exit: at most ``drain_seconds + shutdown_grace_seconds +
SHUTDOWN_MARGIN_SECONDS``; a pod's ``terminationGracePeriodSeconds`` must cover that
(tests/deploy checks the manifests). The margin is a bound, not the usual cost: with
streams and slow requests cut at the end of the grace, the process exits about 0.1 s
after it (tests/e2e/test_shutdown.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Mapping

import structlog
from aiohttp import web
from prometheus_client import disable_created_metrics

from gateway.config import Config
from gateway.observability.logging import context_var
from gateway.observability.logging import flush as flush_logs
from gateway.observability.metrics import Metrics
from gateway.supervisor import WORKER_ADMIN_ENV, WORKER_ENV
from gateway.web.admin import create_admin_app
from gateway.web.admin_thread import AdminThread
from gateway.web.app import create_app, health_of
from gateway.web.listener import Listener, ListenerRunner
from gateway.web.state import SERVICES

log = structlog.get_logger("gateway")
LAG_INTERVAL = 0.5
#: how often a worker checks that its supervisor still runs
PARENT_INTERVAL = 1.0
#: past drain and grace, the most shutdown takes (see ListenerServer.shutdown): the public
#: listener's final events and cancelled handlers (END_SECONDS + 2 * CLOSE_SECONDS, 1.2 s),
#: then the admin listener's grace (1 s) and the same again, closing the resources;
#: measured: about 0.1 s when streams and requests are ended at the end of the grace
SHUTDOWN_MARGIN_SECONDS = 5.0


async def watch_loop_lag(metrics: Metrics, interval: float = LAG_INTERVAL) -> None:
    """Observe how late a periodic timer fires: blocking work on the loop shows here."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        metrics.loop_lag.observe(max(0.0, loop.time() - due))


def settle_heap() -> None:
    """Collect once, then move every object that startup built (modules, configuration,
    compiled policies, clients) into the collector's permanent generation.

    They live as long as the process, yet a full collection would walk them all: tens of
    milliseconds on the loop, often enough to push an in-flight store call past its
    deadline. After this, full collections walk only what requests allocate; and the
    young generation is collected every 10,000 net allocations instead of 700, which
    cuts the collector's share of a busy process's CPU (about 4% to under 1% under the
    POST benchmark) while each pass stays well under a millisecond."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def _in_flight(metrics: Metrics) -> dict[str, float]:
    sample = metrics.registry.get_sample_value
    return {
        "requests": sample("gateway_http_requests_in_flight") or 0.0,
        "streams": sample("gateway_streams_in_flight") or 0.0,
    }


async def watch_parent(stop: asyncio.Event, interval: float = PARENT_INTERVAL) -> None:
    """A worker whose supervisor is gone (killed) drains and stops as on SIGTERM."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells a process its parent died
        await asyncio.sleep(interval)
    log.error("supervisor_gone", parent=parent)
    stop.set()


async def serve(config: Config, environ: Mapping[str, str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = environ.get(WORKER_ENV)  # one of ``gateway serve --workers N``'s processes
    admin_socket = environ.get(WORKER_ADMIN_ENV)
    if worker is not None:
        context_var("worker").set(int(worker))  # every line, access lines too
    server = config.server
    disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
    metrics = Metrics(process=True)
    health = health_of(config, metrics)
    app = create_app(config, environ=environ, metrics=metrics, health=health)
    public = ListenerRunner(
        app,
        Listener.public(server, metrics),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=server.shutdown_grace_seconds,
    )
    await public.setup()  # runs the application's startup: services are built here
    policies = app[SERVICES].policies
    loop.add_signal_handler(signal.SIGHUP, policies.reload, "sighup")
    admin: AdminThread | None = None
    lag = asyncio.create_task(watch_loop_lag(metrics), name="loop-lag")
    parent = asyncio.create_task(watch_parent(stop), name="parent") if worker else None
    try:
        # The public port is bound first: a probe that finds /readyz answering must
        # find the public listener accepting too (the other order let a rollout send
        # traffic to a port not bound yet: connection refused).
        await web.TCPSite(
            public, server.host, server.port, backlog=1024, reuse_port=worker is not None
        ).start()
        if config.admin.enabled:  # its own thread and loop: never behind public traffic
            admin = AdminThread(
                create_admin_app(app),
                Listener.admin(server),
                host=config.admin.host,
                port=config.admin.port,
                path=admin_socket,  # a worker's: the supervisor serves the admin port
            )
            await asyncio.to_thread(admin.start)
        settle_heap()
        log.info(
            "listening",
            public=f"http://{server.host}:{server.port}",
            admin=admin_socket
            or (f"http://{config.admin.host}:{config.admin.port}" if admin else None),
            store=config.store.type,
            keys=config.keys.type,
            upstream=config.upstream.url,
        )
        await stop.wait()
        health.start_draining()
        log.info(
            "draining",
            drain_seconds=server.drain_seconds,
            grace_seconds=server.shutdown_grace_seconds,
            **_in_flight(metrics),
        )
        if server.drain_seconds > 0:
            stop.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), server.drain_seconds)
        log.info("shutting_down", **_in_flight(metrics))
    finally:
        await public.cleanup()
        if admin is not None:
            await admin.stop_async()
        for task in (lag, parent):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info("stopped")


def run(config: Config, environ: Mapping[str, str]) -> None:
    try:
        _run(config, environ)
    finally:
        flush_logs()  # the lines of the last loop turn


def _run(config: Config, environ: Mapping[str, str]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(serve(config, environ))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(config, environ))
