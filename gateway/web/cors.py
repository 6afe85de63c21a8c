"""Per-key CORS for the public agent API: a preflight handler and a response hook.

Each agent key lists its own origins and keys change while the gateway runs, so the grant
is decided per request. aiohttp-cors' public API takes a fixed ``{origin: options}`` table
per route; deciding per request needed its private router adapter (``_request_resource``,
fragile past the version it was written for), so the gateway does the Fetch-standard
mechanics itself (they are small), as aiohttp-cors 0.8.1 did them; a differential test
holds the two to the same answers (tests/web/test_cors_differential.py):

- a preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) on a
  public route is answered 200 with ``Access-Control-Allow-Origin`` (the request's
  ``Origin``, echoed), ``-Allow-Methods`` (the requested method, one of the route's),
  ``-Allow-Headers`` (the requested names, upper-cased, when every one is allowed: see
  :data:`ALLOWED_HEADERS`) and ``-Max-Age``; otherwise it is refused: 403
  ``origin_not_allowed`` for an origin no key lists, else 400 ``invalid_request`` naming
  what is wrong (no ``Origin``, no or another method, a header not allowed, a list that
  is not of header names);
- a granted actual request gets ``Access-Control-Allow-Origin`` and
  ``Access-Control-Expose-Headers`` (:data:`EXPOSED_HEADERS`).

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
from collections.abc import Iterable, Mapping

from aiohttp import hdrs, web

from gateway.core.origins import normalise_origin, origin_allowed, origin_set, stored_origin_set
from gateway.errors import ProblemError
from gateway.keystore.base import KeyRecord, KeyStore

#: response headers a page's script may read, beside the CORS-safelisted ones
EXPOSED_HEADERS = (
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "X-Request-Id",
    "WWW-Authenticate",
    "Date",
    "DPoP-Nonce",
)
#: request headers a page may send, beside the CORS-safelisted ones
ALLOWED_HEADERS = ("Authorization", "Content-Type", "DPoP")
#: how long a browser may cache a preflight answer (Chromium caps it at 2 hours)
PREFLIGHT_MAX_AGE = 600

#: the normalised origins of the request's key, once the handler knows the key
KEY_ORIGINS = web.RequestKey("key_origins", frozenset)
#: a field name (RFC 9110 section 5.1: a token)
FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


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


class _Refused(Exception):
    """A preflight the Fetch mechanics refuse; ``detail`` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = "CORS preflight request failed: " + detail


def requested_headers(request: web.BaseRequest) -> list[str]:
    """The names of ``Access-Control-Request-Headers``, upper-cased, without repeats or
    empty items, in their order; :class:`_Refused` when one is not a header name (which
    could not be echoed: bytes that are not UTF-8, spaces inside a name)."""
    value = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS)
    if value is None:
        return []
    names: list[str] = []
    for item in value.split(","):
        name = item.strip(" \t")
        if not name:
            continue
        if FIELD_NAME.fullmatch(name) is None:
            raise _Refused("Access-Control-Request-Headers must list header names")
        upper = name.upper()
        if upper not in names:
            names.append(upper)
    return names


class PublicCors:
    """CORS on the public routes: the preflight handler (``OPTIONS`` on each) and the
    response hook that grants actual requests and adds ``Vary``."""

    def __init__(self, resources: frozenset[web.Resource], index: OriginIndex) -> None:
        self._resources = resources
        self._index = index
        self._allowed = frozenset(name.upper() for name in ALLOWED_HEADERS)
        self._exposed = ",".join(EXPOSED_HEADERS)
        self._max_age = str(PREFLIGHT_MAX_AGE)

    async def preflight(self, request: web.Request) -> web.StreamResponse:
        """Answer a preflight, or raise the problem that refuses it."""
        headers = request.headers
        origin = headers.get(hdrs.ORIGIN)
        try:
            requested = requested_headers(request)
            if origin is None:
                raise _Refused("origin header is not specified in the request")
            method = headers.get(hdrs.ACCESS_CONTROL_REQUEST_METHOD)
            if method is None:
                raise _Refused("'Access-Control-Request-Method' header is not specified")
            if method not in self._methods(request):
                raise _Refused(f"request method {method!r} is not allowed for {origin!r} origin")
            if not self._index.allows(origin):
                raise _Refused("no origins are allowed")
            refused = [name for name in requested if name not in self._allowed]
            if refused:
                raise _Refused(f"headers are not allowed: {', '.join(refused)}")
        except _Refused as exc:
            raise self._refusal(origin, exc.detail) from None
        response = web.Response()
        answer = response.headers
        answer[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        answer[hdrs.ACCESS_CONTROL_MAX_AGE] = self._max_age
        answer[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = method
        if requested:
            answer[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ",".join(requested)
        return response

    @staticmethod
    def _methods(request: web.Request) -> set[str]:
        resource = request.match_info.route.resource
        routes = resource if resource is not None else ()
        return {route.method for route in routes} - {hdrs.METH_OPTIONS}

    def _refusal(self, origin: str | None, detail: str) -> ProblemError:
        if origin is not None and not self._index.allows(origin):
            shown = normalise_origin(origin) or "this origin"
            return ProblemError("origin_not_allowed", f"no agent key allows requests from {shown}")
        return ProblemError("invalid_request", detail)

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Grant an actual request from an allowed origin; ``Vary`` on every answer."""
        resource = request.match_info.route.resource
        if resource is None or resource not in self._resources:
            return
        headers = response.headers
        preflight = request.method == hdrs.METH_OPTIONS
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and not preflight and self._grants(request, origin):
            headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = self._exposed
            headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        if not preflight and hdrs.VARY not in headers:
            headers[hdrs.VARY] = hdrs.ORIGIN  # the usual case, without parsing
            return
        wanted = [hdrs.ORIGIN]
        if preflight:
            wanted += [hdrs.ACCESS_CONTROL_REQUEST_METHOD, hdrs.ACCESS_CONTROL_REQUEST_HEADERS]
        present = {
            item.strip().lower()
            for value in headers.getall(hdrs.VARY, [])
            for item in value.split(",")
        }
        missing = [name for name in wanted if name.lower() not in present]
        if missing:
            headers.add(hdrs.VARY, ", ".join(missing))

    def _grants(self, request: web.Request, origin: str) -> bool:
        key_origins = request.get(KEY_ORIGINS)
        if key_origins is not None:
            return origin_allowed(origin, key_origins)
        return self._index.allows(origin)


def setup_public_cors(app: web.Application, paths: Iterable[str], store: KeyStore) -> None:
    """Enable per-key CORS on the routes of ``paths`` (the public agent API's)."""
    wanted = set(paths)
    chosen = frozenset(
        r for r in app.router.resources() if isinstance(r, web.Resource) and r.canonical in wanted
    )
    if len(chosen) != len(wanted):
        raise ValueError(f"no route for some of {sorted(wanted)}")
    cors = PublicCors(chosen, OriginIndex(store))
    for resource in chosen:
        if any(route.method in (hdrs.METH_OPTIONS, hdrs.METH_ANY) for route in resource):
            raise ValueError(f"{resource!r} already answers OPTIONS")
        resource.add_route(hdrs.METH_OPTIONS, cors.preflight)
    app.on_response_prepare.append(cors.on_response_prepare)
