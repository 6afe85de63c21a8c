"""The project's CORS layer against aiohttp-cors, its reference: the same routes and keys
served by each, the same generated requests sent to both, the same statuses and
``Access-Control-*`` and ``Vary`` headers and problem codes back.

The reference is aiohttp-cors 0.8.1 (a dev dependency) with the router adapter the gateway
used before it had its own layer, copied here as it was. Two lists are compared as sets:
aiohttp-cors joins ``Access-Control-Allow-Headers`` and ``-Expose-Headers`` from a
``frozenset``, so their order changes with the process's string hashing.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import aiohttp_cors
import pytest
from aiohttp import hdrs, web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp_cors.urldispatcher_router_adapter import ResourcesUrlDispatcherRouterAdapter

from gateway.core.origins import normalise_origin, origin_allowed
from gateway.errors import ProblemError
from gateway.keystore.base import KeyRecord
from gateway.observability.metrics import Metrics
from gateway.web.cors import (
    ALLOWED_HEADERS,
    EXPOSED_HEADERS,
    FIELD_NAME,
    KEY_ORIGINS,
    PREFLIGHT_MAX_AGE,
    OriginIndex,
    admit_origin,
    setup_public_cors,
)
from gateway.web.middlewares import make_context_middleware

Handler = Any
ResponseHook = Any

# -- the reference: the gateway's aiohttp-cors adapter before its own layer ------------------


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


def setup_reference_cors(app: web.Application, paths: list[str], store: Any) -> None:
    """``setup_public_cors`` as it was, on aiohttp-cors."""
    wanted = set(paths)
    chosen = frozenset(
        r for r in app.router.resources() if isinstance(r, web.Resource) and r.canonical in wanted
    )
    adapter = KeyOriginsAdapter(app.router, OriginIndex(store))
    cors = aiohttp_cors.CorsConfig(app, router_adapter=adapter)
    for resource in chosen:
        cors.add(resource)
    app.on_response_prepare.append(vary_on_origin(chosen))


# -- the same application, twice --------------------------------------------------------------

SHOP, BLOG = "https://shop.example", "http://127.0.0.1:8081"
TOKEN, MESSAGES, SEND, REFUSING, OTHER = "/t/{model}", "/m/{token}", "/send", "/refusing", "/other"
CORS_PATHS = [TOKEN, MESSAGES, SEND, REFUSING]


def record(key_id: str, origins: tuple[str, ...], revoked: bool = False) -> KeyRecord:
    return KeyRecord(
        key_id=key_id,
        hash="$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
        models=("demo",),
        origins=origins,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        revoked_at=datetime(2026, 1, 2, tzinfo=UTC) if revoked else None,
    )


KEYS = {
    "shop": record("ShopKey00001", (SHOP,)),
    "blog": record("BlogKey00001", (BLOG, "https://xn--bcher-kva.example")),
    "none": record("NoOrigin0001", ()),
    "revoked": record("Revoked00001", ("https://revoked.example",), revoked=True),
}


class Snapshot:
    """A key store as the CORS layer sees it: its local snapshot."""

    def __init__(self) -> None:
        self._records = {r.key_id: r for r in KEYS.values()}

    def snapshot(self) -> Mapping[str, KeyRecord]:
        return self._records


async def keyed(request: web.Request) -> web.Response:
    """A handler that learns its key (from ``X-Key``) and admits the origin, as the token
    and message routes do."""
    name = request.headers.get("X-Key")
    if name is not None:
        admit_origin(request, KEYS[name].origins)
    return web.json_response({"ok": True}, headers={"RateLimit": "limit=1"})


async def refusing(request: web.Request) -> web.Response:
    raise ProblemError("token_invalid", "refused before any key is known")


def application(cors: str) -> web.Application:
    app = web.Application(middlewares=[make_context_middleware((), Metrics())])
    app.router.add_get(TOKEN, keyed, allow_head=False)
    app.router.add_get(MESSAGES, keyed)  # with HEAD
    app.router.add_post(SEND, keyed)
    app.router.add_route("PUT", SEND, keyed)
    app.router.add_get(REFUSING, refusing, allow_head=False)
    app.router.add_get(OTHER, keyed, allow_head=False)
    if cors == "gateway":
        setup_public_cors(app, CORS_PATHS, Snapshot())  # type: ignore[arg-type]
    else:
        setup_reference_cors(app, CORS_PATHS, Snapshot())
    return app


# -- the requests -----------------------------------------------------------------------------

ORIGINS = [
    None,
    SHOP,
    BLOG,
    "https://bücher.example",
    "https://xn--bcher-kva.example",
    "https://revoked.example",
    "https://evil.example",
    "null",
    "HTTPS://SHOP.EXAMPLE",
    "https://shop.example/",
    "https://shop.example:443",
    "not an origin",
    "",
]
REQUEST_METHODS = [None, "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "post", ""]
REQUEST_HEADERS = [
    None,
    "",
    "authorization",
    "Authorization, Content-Type",
    " content-type ,\tAUTHORIZATION ",
    "authorization,,content-type,",
    "authorization, authorization",
    "x-secret",
    "Authorization, X-Other, x-more",
    "bad header",
    "authorization, {json}",
    "a\tb",
]
PATHS = {
    TOKEN: "/t/demo",
    MESSAGES: "/m/abc",
    SEND: "/send",
    REFUSING: "/refusing",
    OTHER: "/other",
}
ACTUAL = {
    TOKEN: ["GET", "POST"],
    MESSAGES: ["GET", "HEAD"],
    SEND: ["POST", "PUT", "GET"],
    REFUSING: ["GET"],
    OTHER: ["GET"],
}


class Sent(NamedTuple):
    method: str
    path: str
    headers: dict[str, str]


def generated() -> list[Sent]:
    sent: list[Sent] = []
    for route, origin in itertools.product(PATHS, ORIGINS):
        base = {} if origin is None else {"Origin": origin}
        for method, names in itertools.product(REQUEST_METHODS, REQUEST_HEADERS):
            headers = dict(base)
            if method is not None:
                headers["Access-Control-Request-Method"] = method
            if names is not None:
                headers["Access-Control-Request-Headers"] = names
            sent.append(Sent("OPTIONS", PATHS[route], headers))
        for method, key in itertools.product(ACTUAL[route], [None, *KEYS]):
            if key == "revoked":
                continue
            headers = dict(base) if key is None else {**base, "X-Key": key}
            sent.append(Sent(method, PATHS[route], headers))
    return sent


class Answer(NamedTuple):
    status: int
    cors: dict[str, Any]
    #: the problem code of a refusal
    code: str | None


LISTS = {"access-control-allow-headers", "access-control-expose-headers"}


async def answer(client: TestClient, sent: Sent) -> Answer:
    async with client.request(sent.method, sent.path, headers=sent.headers) as resp:
        body = await resp.read()
        code = json.loads(body)["code"] if resp.status >= 400 and body else None
        cors: dict[str, Any] = {}
        for name in {n.lower() for n in resp.headers}:
            if name.startswith("access-control-") or name == "vary":
                values = resp.headers.getall(name)
                if name in LISTS:
                    cors[name] = [sorted(v.split(",")) for v in values]
                else:
                    cors[name] = values
        return Answer(resp.status, cors, code)


@pytest.fixture
async def clients() -> AsyncIterator[tuple[TestClient, TestClient]]:
    ours = TestClient(TestServer(application("gateway")))
    reference = TestClient(TestServer(application("aiohttp-cors")))
    await ours.start_server()
    await reference.start_server()
    yield ours, reference
    await ours.close()
    await reference.close()


async def test_the_same_answers_as_aiohttp_cors(clients: tuple[TestClient, TestClient]) -> None:
    ours, reference = clients
    requests = generated()
    differ = []
    statuses: set[int] = set()
    granted = 0
    for sent in requests:
        got, expected = await answer(ours, sent), await answer(reference, sent)
        statuses.add(expected.status)
        granted += "access-control-allow-origin" in expected.cors
        if got != expected:
            differ.append((sent, got, expected))
    assert differ == [], f"{len(differ)} of {len(requests)} differ, first: {differ[:3]}"
    # the set exercises every branch: granted and refused preflights and actual requests
    assert len(requests) == COMPARED
    assert statuses >= {200, 400, 403, 405} and granted > 100


#: the number of requests compared (README, docs/browser.md)
COMPARED = len(generated())
