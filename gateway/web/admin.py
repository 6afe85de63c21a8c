"""The admin listener: ``/metrics``, ``/healthz`` and ``/readyz`` on their own port.

It is never part of the public Service: probes and Prometheus reach it on the pod's
address. It reads the public application's services (store, upstream) and shares its
:class:`~gateway.observability.metrics.Metrics` and
:class:`~gateway.observability.health.Health`.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from gateway.observability.health import CachedCheck, Health
from gateway.observability.metrics import Metrics
from gateway.web.early_answers import SERVER
from gateway.web.responses import NO_STORE, json_response
from gateway.web.state import HEALTH, METRICS, SERVICES

#: how long an upstream reachability result is reused
UPSTREAM_CHECK_TTL = 2.0
#: the store ping gets the store timeout, but never less than this
MIN_STORE_CHECK_SECONDS = 0.25


class ReadinessChecks:
    """The dependency checks, built once the public application's services exist."""

    def __init__(self, public: web.Application) -> None:
        self._public = public
        self._checks: list[CachedCheck] | None = None

    def get(self) -> list[CachedCheck] | None:
        if self._checks is None:
            services = self._public.get(SERVICES)
            if services is None:
                return None
            config = services.config
            policies = services.policies

            def store_required() -> bool:
                # a replica that fails open keeps serving under local limits: still ready
                return policies.current.on_store_error == "fail_closed"

            self._checks = [
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
        return self._checks


CHECKS = web.AppKey("readiness_checks", ReadinessChecks)
ADMIN_HEALTH = web.AppKey("admin_health", Health)
ADMIN_METRICS = web.AppKey("admin_metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[ADMIN_METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": content_type, **NO_STORE})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: answering at all means the process and its event loop run."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    report = await request.app[ADMIN_HEALTH].readiness(request.app[CHECKS].get())
    return json_response(report.body(), 200 if report.ready else 503)


async def security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER
    response.headers["X-Content-Type-Options"] = "nosniff"


def create_admin_app(public: web.Application) -> web.Application:
    app = web.Application()
    app.on_response_prepare.append(security_headers)
    app[ADMIN_METRICS] = public[METRICS]
    app[ADMIN_HEALTH] = public[HEALTH]
    app[CHECKS] = ReadinessChecks(public)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
