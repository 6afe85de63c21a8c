"""``create_app``: validates the configuration and wires the application; on startup
``start_services`` opens every resource in one exit stack, closed on cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime

import structlog
from aiohttp import web

from gateway.admission import Admissions
from gateway.config import Config
from gateway.config.settings import TokenSettings
from gateway.config.signing_keys import load_keyset
from gateway.core.dpop import ProofNonces, ProofVerifier
from gateway.core.key_hash import VerifiedKeyCache
from gateway.core.renewal import RenewalRules
from gateway.core.token_codec import TokenCodec
from gateway.doctor.keys import log_if_empty
from gateway.keystore.base import Found, KeyRecord, KeyStore, KeyStoreError
from gateway.keystore.factory import open_keystore
from gateway.keystore.verifier import KeyVerifier
from gateway.observability.decision_log import DecisionLog, load_secret
from gateway.observability.health import Health
from gateway.observability.metrics import Metrics
from gateway.observability.redaction import register_secret
from gateway.policies.live import LivePolicies
from gateway.redis_connect import url_password
from gateway.store.base import StateStore
from gateway.store.factory import open_store, sharding_of
from gateway.store.memory import MemoryStore
from gateway.upstream import UpstreamClient, open_transport
from gateway.web import openapi, overload, public, widget
from gateway.web.admin import dependency_checks
from gateway.web.cors import setup_public_cors
from gateway.web.middlewares import make_context_middleware, make_response_hook
from gateway.web.private import setup_private_routes
from gateway.web.state import HEALTH, METRICS, SERVICES, Services
from gateway.web.token_issuer import TokenIssuer
from gateway.web.token_renewer import TokenRenewer

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


class StartedKeyStore:
    """The key store the application's lifecycle opens, for what is wired before it
    starts (CORS reads the origins of the keys): an empty snapshot until then."""

    def __init__(self) -> None:
        self._store: KeyStore | None = None

    def bind(self, store: KeyStore) -> None:
        self._store = store

    @property
    def store(self) -> KeyStore:
        if self._store is None:
            raise KeyStoreError("the key store is not open yet")
        return self._store

    def lookup(self, key_id: str) -> KeyRecord | None:
        return None if self._store is None else self._store.lookup(key_id)

    def snapshot(self) -> Mapping[str, KeyRecord]:
        return {} if self._store is None else self._store.snapshot()

    async def find(self, key_id: str) -> Found:
        return await self.store.find(key_id)

    async def refresh(self) -> None:
        await self.store.refresh()

    async def run(self, stop: asyncio.Event) -> None:
        await self.store.run(stop)

    async def create(self, record: KeyRecord) -> None:
        await self.store.create(record)

    async def list(self) -> list[KeyRecord]:
        return await self.store.list()

    async def revoke(self, key_id: str, at: datetime) -> KeyRecord | None:
        return await self.store.revoke(key_id, at)

    async def close(self) -> None:
        await self.store.close()


@dataclass(frozen=True, slots=True)
class Parts:
    """What :func:`create_app` validated or was given; :func:`start_services` opens the
    rest. ``store``/``keystore``: the caller's, which it closes itself."""

    config: Config
    codec: TokenCodec
    policies: LivePolicies
    metrics: Metrics
    store: StateStore | None = None
    keystore: KeyStore | None = None


def renewal_rules(tokens: TokenSettings) -> RenewalRules:
    """The renewal rules of the ``tokens`` settings."""
    return RenewalRules(
        grace_seconds=tokens.refresh_grace_seconds,
        overlap_seconds=tokens.rotation_overlap_seconds,
        max_conversation_seconds=tokens.max_conversation_seconds,
        ttl_seconds=tokens.ttl_seconds,
        leeway_seconds=tokens.leeway_seconds,
    )


async def start_services(parts: Parts, stack: contextlib.AsyncExitStack) -> Services:
    """Open and start every resource of the application, each closed by ``stack`` (last
    opened, first closed): a start that fails half-way closes what it had opened."""
    config, metrics = parts.config, parts.metrics
    state_store = parts.store
    if state_store is None:
        state_store = open_store(
            config.store,
            on_deadline_extended=metrics.store_deadline_extended,
            on_breaker_change=metrics.store_circuit,
        )
        stack.push_async_callback(state_store.close)
    key_store = parts.keystore
    if key_store is None:
        key_store = open_keystore(config)
        stack.push_async_callback(key_store.close)
    await key_store.refresh()
    log_if_empty(config, key_store.snapshot())
    await state_store.start()
    metrics.config_reload("config", ok=True)
    verifier = KeyVerifier(
        key_store,
        VerifiedKeyCache(config.keys.verified_cache_seconds, config.keys.verified_cache_size),
        metrics=metrics,
    )
    stack.callback(verifier.close)
    transport = open_transport(config.upstream)
    stack.push_async_callback(transport.close)
    metrics.watch_upstream_pool(transport)
    admissions = Admissions(
        parts.codec,
        state_store,
        parts.policies,
        fallback=MemoryStore(),
        key_active=verifier.key_active,
        max_token_chars=config.server.max_token_chars,
        metrics=metrics,
        renewal=renewal_rules(config.tokens),
        sharding=sharding_of(config.store),
        proofs=ProofVerifier(
            window_seconds=config.tokens.proof_window_seconds,
            # replicas' clocks may differ by as much as tokens tolerate
            nonces=ProofNonces(
                parts.codec.secrets,
                config.tokens.proof_window_seconds,
                margin_seconds=config.tokens.leeway_seconds,
            ),
            replay_margin_seconds=max(config.tokens.leeway_seconds, 1),
        ),
    )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(key_store.run(stop), name="keystore-sync")]
    if config.policies.watch:
        tasks.append(asyncio.create_task(parts.policies.run(stop), name="policy-watch"))
    stack.push_async_callback(_stop_tasks, stop, tasks)
    return Services(
        config=config,
        codec=parts.codec,
        store=state_store,
        policies=parts.policies,
        keys=verifier,
        admissions=admissions,
        tokens=TokenIssuer(
            codec=parts.codec,
            admissions=admissions,
            keys=verifier,
            models=config.models,
            metrics=metrics,
        ),
        renewals=TokenRenewer(
            codec=parts.codec,
            admissions=admissions,
            keys=verifier,
            models=config.models,
            metrics=metrics,
        ),
        upstream=UpstreamClient(config.upstream, transport, metrics),
        metrics=metrics,
    )


def _decision_log(
    config: Config, environ: Mapping[str, str], policies: LivePolicies, metrics: Metrics
) -> DecisionLog | None:
    """The decision log when ``observability.decision_log`` is set (its secret checked
    now, so a missing one stops the start)."""
    settings = config.observability
    if settings.decision_log is None:
        return None
    secret = load_secret(environ)
    register_secret(secret)
    return DecisionLog(
        settings.decision_log,
        secret,
        lambda: policies.current,
        metrics.decision_log_dropped.inc,
        max_queue=settings.decision_log_queue,
    )


async def _stop_tasks(
    stop: asyncio.Event, tasks: list[asyncio.Task[None]], *, cancel: bool = False
) -> None:
    stop.set()
    for task in tasks:
        if cancel:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, timeout=5)


def health_of(config: Config, metrics: Metrics) -> Health:
    """The process's :class:`Health`, with the admin section's stall thresholds."""
    admin = config.admin
    return Health(
        metrics, stall_seconds=admin.loop_stall_seconds, dead_seconds=admin.loop_dead_seconds
    )


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
    """The public application. Here only what validates the configuration (the signing
    keys, the policy set); every resource is opened on startup by :func:`start_services`
    and closed on cleanup. ``store``/``keystore`` replace the configured ones (the caller
    then owns them). ``metrics`` defaults to a fresh registry per application."""
    environ = os.environ if environ is None else environ
    metrics = metrics if metrics is not None else Metrics()
    health = health if health is not None else health_of(config, metrics)
    register_url_passwords(config)
    codec = build_codec(config, environ)
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
    parts = Parts(config, codec, live_policies, metrics, store=store, keystore=keystore)
    key_store = StartedKeyStore()

    # shedding before any key, token or store work (docs/operations.md, "Overload")
    shedder = overload.make_shedder(config.overload, metrics)
    decisions = _decision_log(config, environ, live_policies, metrics)
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[
            make_context_middleware(config.server.trusted_proxies, metrics, shedder, decisions)
        ],
    )
    if shedder is not None:
        app[overload.SHEDDER] = shedder
    app[METRICS] = metrics
    app[HEALTH] = health
    public.add_routes(app)
    app.on_response_prepare.append(make_response_hook(health))
    # browsers: per-key CORS on the public API (docs/browser.md)
    setup_public_cors(app, public.PATHS, key_store)
    widget.add_routes(app)
    openapi.add_routes(app)  # the public API's description (docs/openapi.json)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            services = await start_services(parts, stack)
            key_store.bind(services.keys.store)
            if decisions is not None:
                decisions.start()
                stack.callback(decisions.stop)
                services.admissions.record_decisions = True
            app[SERVICES] = services
            if shedder is not None:
                shedder.start()
                stack.callback(shedder.stop)
            # readiness for the admin listener: first checks now, then the heartbeat
            checks = dependency_checks(services)
            await health.refresh(checks)
            watch = asyncio.create_task(health.watch(checks), name="heartbeat")
            stack.push_async_callback(_stop_tasks, asyncio.Event(), [watch], cancel=True)
            yield

    app.cleanup_ctx.append(lifecycle)
    if config.oauth is not None:  # OAuth2-protected private routes (docs/oauth.md)
        setup_private_routes(app, config.oauth)
    return app
