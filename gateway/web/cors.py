"""Per-key CORS for the public agent API, built on aiohttp-cors.

aiohttp-cors answers preflights and decorates responses from a fixed
``{origin: options}`` table per route. Here each agent key lists its own origins and keys
change while the gateway runs, so the table is computed per request through the
library's router-adapter extension point (:class:`KeyOriginsAdapter`); the library keeps
doing the Fetch-standard mechanics (preflight parsing, allowed methods and headers,
``Access-Control-*`` response headers).

The decision (see docs/browser.md):

- A preflight carries no credentials, so the key is unknown: it is granted when *some*
  active key lists the origin (:class:`OriginIndex`). Granting a preflight only lets the
  browser send the actual request; it exposes nothing.
- An actual request is granted once the handler knows the key (the verified key on the
  token route, the token's key on the message routes, see :func:`admit_origin`) only for
  that key's origins, and :func:`admit_origin` refuses the request itself (403
  ``origin_not_allowed``) when a browser sends an ``Origin`` outside them, so a page
  cannot cause side effects with someone else's key or token. A request refused before
  its key is known (no key, bad token, rate limited) is granted for the same origins as
  a preflight, so an embedding page can read why it failed; such answers carry no data.
- Credentials mode is never granted (no ``Access-Control-Allow-Credentials``): the API
  uses bearer keys and tokens, not cookies.
- ``Vary: Origin`` is on every response of these routes, granted or not, so a shared
  cache never serves one origin's answer to another.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping

import aiohttp_cors
from aiohttp import hdrs, web
from aiohttp_cors.urldispatcher_router_adapter import ResourcesUrlDispatcherRouterAdapter

from gateway.core.origins import normalise_origin, origin_allowed, origin_set, stored_origin_set
from gateway.errors import ProblemError
from gateway.keystore.base import KeyRecord, KeyStore

#: response headers a page's script may read, beside the CORS-safelisted ones
EXPOSED_HEADERS = ("Retry-After", "RateLimit", "RateLimit-Policy", "X-Request-Id")
#: request headers a page may send, beside the CORS-safelisted ones
ALLOWED_HEADERS = ("Authorization", "Content-Type")
#: how long a browser may cache a preflight answer (Chromium caps it at 2 hours)
PREFLIGHT_MAX_AGE = 600

#: the normalised origins of the request's key, once the handler knows the key
KEY_ORIGINS = web.RequestKey("key_origins", frozenset)
#: a field name (RFC 9110 section 5.1: a token)
FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


class OriginIndex:
    """The union of the origins of active keys, from the key store's local snapshot.

    Rebuilt only when the store hands out a new snapshot, so a preflight costs a set
    lookup. No I/O.
    """

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._source: Mapping[str, KeyRecord] | None = None
        self._origins: frozenset[str] = frozenset()

    def origins(self) -> frozenset[str]:
        snapshot = self._store.snapshot()
        if snapshot is not self._source:
            self._origins = frozenset().union(
                *(origin_set(r.origins) for r in snapshot.values() if r.active)
            )
            self._source = snapshot
        return self._origins

    def allows(self, origin: str) -> bool:
        return origin_allowed(origin, self.origins())


def admit_origin(request: web.Request, origins: tuple[str, ...]) -> None:
    """Record the key's origins for the CORS grant, and refuse a browser request whose
    ``Origin`` the key does not list. Requests without ``Origin`` (servers, curl) pass."""
    allowed = stored_origin_set(origins)
    request[KEY_ORIGINS] = allowed
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None and not origin_allowed(origin, allowed):
        shown = normalise_origin(origin) or "this origin"
        raise ProblemError(
            "origin_not_allowed",
            f"the agent key does not allow requests from {shown}; "
            "add it with 'gateway keys create --origin'",
        )


def require_field_names(request: web.Request) -> None:
    """Refuse a preflight whose ``Access-Control-Request-Headers`` is not a list of header
    names, before aiohttp-cors echoes the names it does not allow (which it cannot do for
    bytes that are not UTF-8)."""
    requested = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS)
    if requested is None:
        return
    for item in requested.split(","):
        name = item.strip(" \t")
        if name and FIELD_NAME.fullmatch(name) is None:
            raise web.HTTPForbidden(
                text="CORS preflight request failed: "
                "Access-Control-Request-Headers must list header names"
            )


class KeyOriginsAdapter(ResourcesUrlDispatcherRouterAdapter):
    """aiohttp-cors' router adapter, with each table computed for the request at hand."""

    def __init__(self, router: web.UrlDispatcher, index: OriginIndex) -> None:
        super().__init__(router, defaults={})
        self._index = index
        self._options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
            allow_credentials=False,
            expose_headers=EXPOSED_HEADERS,
            allow_headers=ALLOWED_HEADERS,
            max_age=PREFLIGHT_MAX_AGE,
        )

    def add_preflight_handler(
        self,
        routing_entity: web.Resource | web.StaticResource | web.ResourceRoute,
        handler: Handler,
        webview: bool = False,
    ) -> None:
        async def preflight(request: web.Request) -> web.StreamResponse:
            try:
                require_field_names(request)
                return await handler(request)
            except web.HTTPForbidden as exc:
                raise self._refusal(request, exc.text or "") from None

        super().add_preflight_handler(routing_entity, preflight)

    def _refusal(self, request: web.Request, detail: str) -> ProblemError:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and not self._index.allows(origin):
            shown = normalise_origin(origin) or "this origin"
            return ProblemError("origin_not_allowed", f"no agent key allows requests from {shown}")
        return ProblemError("invalid_request", detail)

    async def get_preflight_request_config(
        self, preflight_request: web.Request, origin: str, requested_method: str
    ) -> dict[str, aiohttp_cors.ResourceOptions]:
        resource = self._request_resource(preflight_request)
        methods = {route.method for route in resource} - {hdrs.METH_OPTIONS}
        if requested_method not in methods:
            raise KeyError(requested_method)  # aiohttp-cors refuses the preflight
        return {origin: self._options} if self._index.allows(origin) else {}

    def is_cors_enabled_on_request(self, request: web.Request) -> bool:
        """Whether aiohttp-cors' response hook has anything to do. Never for a request
        without ``Origin``: that is no CORS request, and the hook would end up leaving the
        answer untouched after looking up its configuration."""
        return hdrs.ORIGIN in request.headers and super().is_cors_enabled_on_request(request)

    def get_non_preflight_request_config(
        self, request: web.Request
    ) -> dict[str, aiohttp_cors.ResourceOptions]:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return {}
        key_origins = request.get(KEY_ORIGINS)
        if key_origins is not None:
            allowed = origin_allowed(origin, key_origins)
        else:
            allowed = self._index.allows(origin)
        return {origin: self._options} if allowed else {}


def vary_on_origin(resources: frozenset[web.Resource]) -> ResponseHook:
    """The hook that puts ``Vary: Origin`` on every response of ``resources``."""

    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        resource = request.match_info.route.resource
        if resource is None or resource not in resources:
            return
        if request.method != hdrs.METH_OPTIONS and hdrs.VARY not in response.headers:
            response.headers[hdrs.VARY] = hdrs.ORIGIN  # the usual case, without parsing
            return
        wanted = [hdrs.ORIGIN]
        if request.method == hdrs.METH_OPTIONS:
            wanted += [hdrs.ACCESS_CONTROL_REQUEST_METHOD, hdrs.ACCESS_CONTROL_REQUEST_HEADERS]
        present = {
            item.strip().lower()
            for value in response.headers.getall(hdrs.VARY, [])
            for item in value.split(",")
        }
        missing = [name for name in wanted if name.lower() not in present]
        if missing:
            response.headers.add(hdrs.VARY, ", ".join(missing))

    return hook


def setup_public_cors(app: web.Application, paths: Iterable[str], store: KeyStore) -> None:
    """Enable per-key CORS on the routes of ``paths`` (the public agent API's)."""
    wanted = set(paths)
    chosen = frozenset(
        r for r in app.router.resources() if isinstance(r, web.Resource) and r.canonical in wanted
    )
    if len(chosen) != len(wanted):
        raise ValueError(f"no route for some of {sorted(wanted)}")
    adapter = KeyOriginsAdapter(app.router, OriginIndex(store))
    cors = aiohttp_cors.CorsConfig(app, router_adapter=adapter)
    for resource in chosen:
        cors.add(resource)
    app.on_response_prepare.append(vary_on_origin(chosen))
