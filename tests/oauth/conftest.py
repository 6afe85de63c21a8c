"""A local identity provider on a real socket, and gateways that trust it."""

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.web.private import JWKS_CLOCK
from tests.support.clock import FixedClock
from tests.support.harness import Gateway, deep_merge
from tests.support.identity_provider import (
    AUDIENCE,
    JWKS_PATH,
    IdentityProvider,
    SigningKey,
    identity_provider_app,
)

PRIVATE = "/v1/chat/conversation/private"


@pytest.fixture(scope="session")
def key_pool() -> dict[str, SigningKey]:
    """Keys are slow to generate: once per session."""
    return {
        "rsa-1": SigningKey.rsa("rsa-1"),
        "rsa-2": SigningKey.rsa("rsa-2"),
        "ps-1": SigningKey.rsa("ps-1", "PS256"),
        "ec-1": SigningKey.ec("ec-1"),
        "ec-2": SigningKey.ec("ec-2"),
    }


@pytest.fixture
async def idp(key_pool: dict[str, SigningKey]) -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider(keys=[key_pool["rsa-1"], key_pool["ec-1"]])
    server = TestServer(identity_provider_app(provider), host="127.0.0.1")
    await server.start_server()
    provider.issuer = str(server.make_url("")).rstrip("/")
    yield provider
    await server.close()


def oauth_section(idp: IdentityProvider, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "issuer": idp.issuer,
        "audience": AUDIENCE,
        "jwks_url": idp.issuer + JWKS_PATH,
        "algorithms": ["RS256", "PS256", "ES256"],
        "leeway_seconds": 5,
        "jwks_min_refresh_seconds": 1,
        "jwks_cache_seconds": 600,
        "routes": [
            {
                "prefix": PRIVATE,
                "upstream_prefix": "/internal/private/conversations",
                "methods": ["GET"],
                "scopes": ["chat:read"],
            },
            {
                "prefix": PRIVATE,
                "upstream_prefix": "/internal/private/conversations",
                "methods": ["POST"],
                "scopes": ["chat:read", "chat:write"],
            },
            {
                "prefix": PRIVATE,
                "upstream_prefix": "/internal/private/conversations",
                "methods": ["DELETE"],
                "scopes": ["chat:admin"],
            },
            {"prefix": "/v1/whoami", "upstream_prefix": "/internal/private/whoami"},
        ],
    }
    return deep_merge(section, overrides)


@pytest.fixture
def jwks_clock() -> FixedClock:
    """The clock of the gateway's JWKS cache: ``jwks_clock.advance(1.05)`` passes
    ``jwks_min_refresh_seconds`` without waiting for it."""
    return FixedClock()


def with_jwks_clock(clock: FixedClock) -> Callable[[web.Application], None]:
    """A ``prepare`` hook for ``gateway_factory``: the gateway's JWKS cache reads ``clock``."""

    def prepare(app: web.Application) -> None:
        app[JWKS_CLOCK] = clock

    return prepare


@pytest.fixture
async def private_gateway(
    gateway_factory, idp: IdentityProvider, jwks_clock: FixedClock
) -> Gateway:
    gateway: Gateway = await gateway_factory(
        oauth=oauth_section(idp), prepare=with_jwks_clock(jwks_clock)
    )
    return gateway
