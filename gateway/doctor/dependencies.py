"""What the running gateway depends on: Redis, the upstream, the identity provider's keys.

Not start conditions for ``serve`` (readiness reports them while it runs); ``gateway
doctor`` asks each once, with a time budget.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from redis.exceptions import RedisClusterException, RedisError

from gateway.config import Config, UpstreamSettings
from gateway.doctor.findings import Finding, error, ok
from gateway.oauth.jwks import MAX_JWKS_BYTES, KeySet
from gateway.oauth.settings import OAuthSettings
from gateway.observability.metrics import Metrics
from gateway.redis_connect import RedisUrlError, connect, safe_url
from gateway.upstream import UpstreamClient, open_transport

#: seconds a Redis server gets to answer PING (a cold connection, TLS included)
REDIS_SECONDS = 3.0


async def ping_redis(url: str) -> None:
    client = connect(url, socket_timeout=REDIS_SECONDS, max_connections=2)
    try:
        async with asyncio.timeout(REDIS_SECONDS * 2):
            await client.ping()
    finally:
        await client.aclose()


async def store(config: Config) -> list[Finding]:
    if config.store.type != "redis":
        return []
    where = safe_url(config.store.url)
    try:
        await ping_redis(config.store.url)
    except (RedisError, RedisClusterException, RedisUrlError, OSError, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        return [
            error(
                "store",
                f"the store {where} does not answer: {detail}",
                "start Redis or correct store.url (GATEWAY__STORE__URL); until it answers, "
                "requests get 503 (fail_closed) or only per-replica limits (fail_open)",
            )
        ]
    return [ok("store", f"{where} answered PING")]


async def probe(settings: UpstreamSettings) -> None:
    """The running gateway's upstream readiness probe (``UpstreamClient.probe``), once."""
    transport = open_transport(settings)
    try:
        # the probe counts nothing: its own registry, not the process's
        await UpstreamClient(settings, transport, Metrics()).probe()
    finally:
        await transport.close()


async def upstream(config: Config) -> list[Finding]:
    settings = config.upstream
    what = settings.url + (settings.health_path or "")
    try:
        async with asyncio.timeout(settings.timeouts.connect + 1):
            await probe(settings)
    except Exception as exc:  # any failure of the probe is the finding
        detail = str(exc) or type(exc).__name__
        return [
            error(
                "upstream",
                f"the upstream {what} is not reachable: {detail}",
                "start the chat backend or correct upstream.url / upstream.health_path; "
                "until then /readyz answers 503",
            )
        ]
    return [ok("upstream", f"{what} answered")]


async def fetch_jwks(oauth: OAuthSettings) -> KeySet:
    """The identity provider's key set, parsed as the gateway parses it."""
    timeout = aiohttp.ClientTimeout(total=oauth.jwks_timeout_seconds)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(oauth.jwks_url, headers={"Accept": "application/json"}) as resp,
    ):
        if resp.status != 200:
            raise ValueError(f"answered {resp.status}")
        body = await resp.content.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
    return KeySet.parse(orjson.loads(body), oauth.algorithms)


async def jwks(config: Config) -> list[Finding]:
    oauth = config.oauth
    if oauth is None:
        return []
    try:
        keys = await fetch_jwks(oauth)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        detail = str(exc) or type(exc).__name__
        return [
            error(
                "oauth.jwks",
                f"the JWKS {oauth.jwks_url} cannot be used: {detail}",
                "correct oauth.jwks_url (the provider's jwks_uri); until it answers, "
                "private routes answer 503",
            )
        ]
    if keys.size == 0:
        return [
            error(
                "oauth.jwks",
                f"the JWKS {oauth.jwks_url} has no key for {', '.join(oauth.algorithms)}",
                "make oauth.algorithms match the provider's keys (kty, crv, alg)",
            )
        ]
    return [ok("oauth.jwks", f"{oauth.jwks_url}: {keys.size} usable key(s)")]


async def check(config: Config) -> list[Finding]:
    results = await asyncio.gather(store(config), upstream(config), jwks(config))
    return [finding for found in results for finding in found]
