"""Typed application state and per-request context keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.admission import Admissions
from gateway.config import Config
from gateway.core.token_codec import TokenCodec
from gateway.keystore.verifier import KeyVerifier
from gateway.observability.health import Health
from gateway.observability.metrics import Metrics
from gateway.policies.live import LivePolicies
from gateway.store.base import StateStore
from gateway.upstream import UpstreamClient

if TYPE_CHECKING:  # it imports (through payloads) the request keys below
    from gateway.web.token_issuer import TokenIssuer
    from gateway.web.token_renewer import TokenRenewer


@dataclass
class Services:
    """Everything a handler needs; built by :func:`gateway.web.app.create_app`."""

    config: Config
    codec: TokenCodec
    store: StateStore
    policies: LivePolicies
    keys: KeyVerifier
    admissions: Admissions
    tokens: TokenIssuer
    renewals: TokenRenewer
    upstream: UpstreamClient
    metrics: Metrics


SERVICES = web.AppKey("services", Services)
#: built with the application (before startup), for middlewares and the admin listener
METRICS = web.AppKey("metrics", Metrics)
HEALTH = web.AppKey("health", Health)

# per-request values set by middlewares and handlers, read by the access log
REQUEST_ID = web.RequestKey("request_id", str)
#: ``time.perf_counter()`` at the request's arrival
REQUEST_STARTED = web.RequestKey("request_started", float)
CLIENT_IP = web.RequestKey("client_ip", str)
KEY_ID = web.RequestKey("key_id", str)
TOKEN_HASH = web.RequestKey("token_hash", str)
