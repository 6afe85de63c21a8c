"""The answers handlers build themselves: JSON bodies, kept out of every cache."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

#: answers about one client or one moment: never stored by a cache
NO_STORE: Mapping[str, str] = {"Cache-Control": "no-store"}


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=NO_STORE
    )
