"""The answers the gateway builds itself: JSON bodies and problems, kept out of every
cache. Answers made inside the application also get the response hook's headers
(``gateway.web.middlewares.make_response_hook``); those made outside it (the listener's
refusals, :mod:`gateway.web.connection` and :mod:`gateway.web.early_answers`) add
:data:`NOSNIFF` themselves."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

from gateway.errors import ProblemError

#: answers about one client or one moment: never stored by a cache
NO_STORE: Mapping[str, str] = {"Cache-Control": "no-store"}
#: browsers take the answer for its declared type
NOSNIFF: Mapping[str, str] = {"X-Content-Type-Options": "nosniff"}


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=NO_STORE
    )


def problem_response(err: ProblemError, headers: Mapping[str, str] | None = None) -> web.Response:
    """``err`` as ``application/problem+json``, with its own headers and ``headers``."""
    return web.Response(
        status=err.status,
        body=orjson.dumps(err.body()),
        content_type="application/problem+json",
        headers={**NO_STORE, **err.headers, **(headers or {})},
    )
