"""The admin listener: ``/metrics``, ``/healthz`` and ``/readyz`` on their own port.

It is never part of the public Service: probes and Prometheus reach it on the pod's
address. ``gateway serve`` runs it on a thread of its own
(:mod:`gateway.web.admin_thread`), so it never queues behind public traffic; it shares the
public application's :class:`~gateway.observability.metrics.Metrics` and reads the
:class:`~gateway.observability.health.Health` snapshot that the public loop publishes: the
dependency checks (run there, on the public loop's store and upstream clients), its
heartbeat and the draining flag.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from gateway.observability.health import CachedCheck, Health
from gateway.observability.metrics import Metrics
from gateway.web.early_answers import SERVER
from gateway.web.responses import NO_STORE, json_response
from gateway.web.state import HEALTH, METRICS, Services

#: how long an upstream reachability result is reused
UPSTREAM_CHECK_TTL = 2.0
#: the store ping gets the store timeout, but never less than this
MIN_STORE_CHECK_SECONDS = 0.25
#: a probe finding the checks older than this has the public loop run them again,
#: answering with the last result meanwhile (probes every few seconds keep it fresh)...
REFRESH_SECONDS = 0.5
#: ... unless they are older than this: then it waits up to STALE_WAIT_SECONDS for them
STALE_SECONDS = 10.0
STALE_WAIT_SECONDS = 1.0


def dependency_checks(services: Services) -> list[CachedCheck]:
    """What ``/readyz`` checks, run on the public loop (:meth:`Health.watch`)."""
    config = services.config
    policies = services.policies

    def store_required() -> bool:
        # a replica that fails open keeps serving under local limits: still ready
        return policies.current.on_store_error == "fail_closed"

    return [
        CachedCheck(
            "store",
            services.store.ping,
            timeout=max(config.store.timeout_ms / 1000, MIN_STORE_CHECK_SECONDS),
            required=store_required,
        ),
        CachedCheck(
            "upstream",
            services.upstream.probe,
            timeout=config.upstream.timeouts.connect,
            ttl=UPSTREAM_CHECK_TTL,
        ),
    ]


ADMIN_HEALTH = web.AppKey("admin_health", Health)
ADMIN_METRICS = web.AppKey("admin_metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[ADMIN_METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": content_type, **NO_STORE})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process runs, and its public event loop turned within
    ``admin.loop_dead_seconds``."""
    health = request.app[ADMIN_HEALTH]
    if health.alive():
        return json_response({"status": "ok"})
    stalled = f"stalled {health.stalled_for():.1f}s"
    return json_response({"status": "not_alive", "checks": {"event_loop": stalled}}, 503)


async def readyz(request: web.Request) -> web.Response:
    """The readiness the public loop last published (see the module doc)."""
    health = request.app[ADMIN_HEALTH]
    age = health.checked_ago()
    if age > REFRESH_SECONDS:
        pending = health.request_refresh()
        stalled = health.stalled_for() >= health.stall_seconds
        if pending is not None and age > STALE_SECONDS and not stalled:
            # not probed for a while, and the loop turns: this answer waits for checks of
            # its own (a stalled loop would not run them: answer at once)
            with contextlib.suppress(Exception):  # a timeout, or the checks' own failure
                fresh = asyncio.wrap_future(pending)
                await asyncio.wait_for(asyncio.shield(fresh), STALE_WAIT_SECONDS)
    report = health.snapshot()
    return json_response(report.body(), 200 if report.ready else 503)


async def security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER
    response.headers["X-Content-Type-Options"] = "nosniff"


def create_admin_app(public: web.Application) -> web.Application:
    app = web.Application()
    app.on_response_prepare.append(security_headers)
    app[ADMIN_METRICS] = public[METRICS]
    app[ADMIN_HEALTH] = public[HEALTH]
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
