"""OAuth2-protected private routes: forwarded to the upstream only with a valid access token.

Each configured prefix (``oauth.routes``) is served by one handler that picks the route for
the method, authenticates the bearer token (:mod:`gateway.oauth`), checks the route's
scopes, and forwards the request with the rest of its path and its query unchanged. The
upstream learns who is calling from ``X-Auth-Subject``, ``X-Auth-Scopes`` and
``X-Auth-Client-Id``; it never sees the bearer token or the caller's cookies. Answers
stream back chunk by chunk.

Errors follow RFC 6750 section 3: no token, 401 with a bare ``Bearer`` challenge; a bad
one, 401 ``error="invalid_token"``; a missing scope, 403 ``error="insufficient_scope"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from urllib.parse import unquote

import aiohttp
import structlog
from aiohttp import web

from gateway.errors import ProblemError
from gateway.oauth.access_token import AccessToken, TokenInvalid, TokenKeyUnknown, TokenOutOfTime
from gateway.oauth.authenticator import Authenticator
from gateway.oauth.jwks import JwksCache, JwksUnavailable
from gateway.oauth.settings import OAuthSettings, PrivateRoute
from gateway.web.payloads import bearer_credential, client_of
from gateway.web.relay import relay, response_for
from gateway.web.state import CLIENT_IP, REQUEST_ID, SERVICES

REALM = "agent-gateway"
#: end-to-end request headers worth passing on; everything else is dropped
FORWARDED_HEADERS = (
    "Accept",
    "Accept-Language",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "If-Modified-Since",
    "If-Unmodified-Since",
)
OAUTH = web.AppKey("oauth", Authenticator)
#: the JWKS cache's clock when set before start (tests); ``time.monotonic`` otherwise
JWKS_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("jwks_clock")
OAUTH_HINT = "send an OAuth2 access token as 'Authorization: Bearer <token>'"

log = structlog.get_logger("gateway")
security_log = structlog.get_logger("gateway.security")


def challenge(error: str | None = None, description: str = "", scope: str = "") -> str:
    """A ``WWW-Authenticate: Bearer`` value (RFC 6750 section 3)."""
    params = [f'realm="{REALM}"']
    if error:
        params.append(f'error="{error}"')
    if description:
        params.append('error_description="' + description.replace('"', "'") + '"')
    if scope:
        params.append(f'scope="{scope}"')
    return "Bearer " + ", ".join(params)


async def authenticate(request: web.Request) -> AccessToken:
    token = bearer_credential(request, OAUTH_HINT, challenge())
    try:
        return await request.app[OAUTH].authenticate(token)
    except TokenInvalid as exc:
        # expired tokens are ordinary; a key not fetched yet (a rotation at the provider)
        # proves nothing; everything else, a bad signature under a known key included, is
        # what a forger gets and counts towards the penalty box
        counted = not isinstance(exc, TokenOutOfTime | TokenKeyUnknown)
        security_log.info(
            "access_token_refused", reason=str(exc), route=request.path, counted=counted
        )
        if counted:
            await request.app[SERVICES].admissions.failed(client_of(request), "invalid_token")
        raise ProblemError(
            "invalid_token", str(exc), {"WWW-Authenticate": challenge("invalid_token", str(exc))}
        ) from None
    except JwksUnavailable:
        raise ProblemError(
            "identity_provider_unavailable",
            "the access token cannot be checked right now",
            {"Retry-After": "5"},
        ) from None


def upstream_path(request: web.Request, route: PrivateRoute) -> str:
    """The upstream path and query: ``route``'s upstream prefix, then the request's path
    after the prefix and its query, byte for byte. Segments that could climb out of the
    prefix (``..``, encoded slashes) or carry control characters are refused."""
    raw = request.rel_url.raw_path
    if raw != route.prefix and not raw.startswith(route.prefix + "/"):
        raise ProblemError("invalid_request", "the path does not start with the route's prefix")
    tail = raw[len(route.prefix) :]
    for segment in tail.split("/")[1:]:
        decoded = unquote(segment)
        if decoded in (".", "..") or any(c in decoded for c in "/\\") or not decoded.isprintable():
            raise ProblemError("invalid_request", "the path has a segment that is not forwarded")
    query = request.rel_url.raw_query_string
    return route.target_prefix + tail + (f"?{query}" if query else "")


class PrefixHandler:
    """The routes of one prefix, by method."""

    def __init__(self, routes: Sequence[PrivateRoute]) -> None:
        self._by_method: dict[str, PrivateRoute] = {
            method: route for route in routes for method in route.methods
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = self._by_method.get(request.method)
        if route is None:
            allowed = ",".join(sorted(self._by_method))
            raise ProblemError(
                "method_not_allowed", f"{request.method} is not routed here", {"Allow": allowed}
            )
        admissions = request.app[SERVICES].admissions
        client = client_of(request)
        admissions.refuse_if_penalized(client)
        caller = await authenticate(request)
        missing = [scope for scope in route.scopes if scope not in caller.scopes]
        if missing:
            needed = " ".join(route.scopes)
            raise ProblemError(
                "insufficient_scope",
                f"this route needs the scopes: {needed}",
                {"WWW-Authenticate": challenge("insufficient_scope", scope=needed)},
            )
        limits = await admissions.admit_request("private", client, request.method)
        path = upstream_path(request, route)
        body = await request.read() if request.body_exists else None
        headers = {
            name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers
        }
        headers.update(
            {
                "X-Auth-Subject": caller.subject,
                "X-Auth-Scopes": " ".join(sorted(caller.scopes)),
                "X-Request-Id": request[REQUEST_ID],
                "X-Forwarded-For": request[CLIENT_IP],
            }
        )
        if caller.client_id:
            headers["X-Auth-Client-Id"] = caller.client_id
        upstream = request.app[SERVICES].upstream
        with await upstream.forward(request.method, path, headers, body) as resp:
            out = response_for(request, resp, limits)
            out.headers.setdefault("Cache-Control", "private, no-store")
            return await relay(request, resp, out, operation="forward", error_event=False)


def setup_private_routes(app: web.Application, settings: OAuthSettings) -> None:
    """Route ``settings.routes`` (longest prefix first) and own the JWKS client."""
    groups: dict[str, list[PrivateRoute]] = defaultdict(list)
    for route in settings.routes:
        groups[route.prefix].append(route)
    for prefix in sorted(groups, key=len, reverse=True):
        handler = PrefixHandler(groups[prefix]).handle
        app.router.add_route("*", prefix, handler)
        app.router.add_route("*", prefix + "/{tail:.*}", handler)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        jwks = JwksCache(
            settings.jwks_url,
            session,
            algorithms=settings.algorithms,
            cache_seconds=settings.jwks_cache_seconds,
            min_refresh_seconds=settings.jwks_min_refresh_seconds,
            timeout_seconds=settings.jwks_timeout_seconds,
            clock=app.get(JWKS_CLOCK, time.monotonic),
        )
        app[OAUTH] = Authenticator(settings, jwks)
        warm = asyncio.create_task(jwks.prime(), name="jwks-prime")
        try:
            yield
        finally:
            warm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await warm
            await jwks.close()
            await session.close()

    app.cleanup_ctx.append(lifecycle)
