"""``create_app``: builds every service from the configuration and owns their lifecycles."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping

import structlog
from aiohttp import web

from gateway.admission import Admissions
from gateway.config import Config
from gateway.config.signing_keys import load_keyset
from gateway.core.key_hash import VerifiedKeyCache
from gateway.core.token_codec import TokenCodec
from gateway.doctor.keys import log_if_empty
from gateway.keystore.base import KeyStore
from gateway.keystore.factory import open_keystore
from gateway.keystore.verifier import KeyVerifier
from gateway.observability.health import Health
from gateway.observability.metrics import Metrics
from gateway.observability.redaction import register_secret
from gateway.policies.live import LivePolicies
from gateway.redis_connect import url_password
from gateway.store.base import StateStore
from gateway.store.factory import open_store
from gateway.store.memory import MemoryStore
from gateway.upstream import UpstreamClient, open_transport
from gateway.web import openapi, public, widget
from gateway.web.cors import setup_public_cors
from gateway.web.middlewares import make_context_middleware, make_response_hook
from gateway.web.private import setup_private_routes
from gateway.web.state import HEALTH, METRICS, SERVICES, Services
from gateway.web.token_issuer import TokenIssuer

log = structlog.get_logger("gateway")


def build_codec(config: Config, environ: Mapping[str, str]) -> TokenCodec:
    keyset = load_keyset(
        environ, config.tokens.signing_keys_file, allow_generated=config.store.type == "memory"
    )
    if keyset.generated:
        log.warning(
            "signing_key_generated",
            detail="tokens will not survive a restart; set GATEWAY_SIGNING_KEYS to keep them",
        )
    for key in keyset.keys:
        register_secret(key.secret)
    tokens = config.tokens
    return TokenCodec(
        keyset,
        issuer=tokens.issuer,
        audience=tokens.audience,
        ttl_seconds=tokens.ttl_seconds,
        algorithm=tokens.algorithm,
        leeway_seconds=tokens.leeway_seconds,
    )


def register_url_passwords(config: Config) -> None:
    """Store URLs may carry a password: never log it."""
    for url in (config.store.url, config.key_store_redis_url):
        with contextlib.suppress(ValueError):
            password = url_password(url)
            if password:
                register_secret(password)


def create_app(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    store: StateStore | None = None,
    keystore: KeyStore | None = None,
    policies: LivePolicies | None = None,
    metrics: Metrics | None = None,
    health: Health | None = None,
) -> web.Application:
    """The public application. ``store``/``keystore`` replace the configured ones (the
    caller then owns them); everything else is built here and closed on cleanup.
    ``metrics`` defaults to a fresh registry per application."""
    environ = os.environ if environ is None else environ
    metrics = metrics if metrics is not None else Metrics()
    health = health if health is not None else Health(metrics)
    register_url_passwords(config)
    codec = build_codec(config, environ)
    state_store = (
        store
        if store is not None
        else open_store(
            config.store,
            on_deadline_extended=metrics.store_deadline_extended,
            on_breaker_change=metrics.store_circuit,
        )
    )
    key_store = keystore if keystore is not None else open_keystore(config)
    verifier = KeyVerifier(
        key_store,
        VerifiedKeyCache(config.keys.verified_cache_seconds, config.keys.verified_cache_size),
        metrics=metrics,
    )
    live_policies = (
        policies
        if policies is not None
        else LivePolicies(
            config.policies.path,
            on_reload=lambda result: metrics.config_reload("policies", result == "success"),
            allow_unprotected=config.policies.allow_unprotected,
        )
    )
    live_policies.load()  # an invalid or unprotected set stops the start with a precise error
    metrics.config_reload("policies", ok=True)
    admissions = Admissions(
        codec,
        state_store,
        live_policies,
        fallback=MemoryStore(),
        key_active=verifier.key_active,
        max_token_chars=config.server.max_token_chars,
        metrics=metrics,
    )

    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[make_context_middleware(config.server.trusted_proxies, metrics)],
    )
    app[METRICS] = metrics
    app[HEALTH] = health
    public.add_routes(app)
    app.on_response_prepare.append(make_response_hook(health))
    # browsers: per-key CORS on the public API (docs/browser.md)
    setup_public_cors(app, public.PATHS, key_store)
    widget.add_routes(app)
    openapi.add_routes(app)  # the public API's description (docs/openapi.json)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await key_store.refresh()
        log_if_empty(config, key_store.snapshot())
        await state_store.start()
        metrics.config_reload("config", ok=True)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(key_store.run(stop), name="keystore-sync")]
        if config.policies.watch:
            tasks.append(asyncio.create_task(live_policies.run(stop), name="policy-watch"))
        transport = open_transport(config.upstream)
        metrics.watch_upstream_pool(transport)
        app[SERVICES] = Services(
            config=config,
            codec=codec,
            store=state_store,
            policies=live_policies,
            keys=verifier,
            admissions=admissions,
            tokens=TokenIssuer(
                codec=codec,
                admissions=admissions,
                keys=verifier,
                models=config.models,
                metrics=metrics,
            ),
            upstream=UpstreamClient(config.upstream, transport, metrics),
            metrics=metrics,
        )
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, timeout=5)
            await transport.close()
            verifier.close()
            if keystore is None:
                await key_store.close()
            if store is None:
                await state_store.close()

    app.cleanup_ctx.append(lifecycle)
    if config.oauth is not None:  # OAuth2-protected private routes (docs/oauth.md)
        setup_private_routes(app, config.oauth)
    return app
