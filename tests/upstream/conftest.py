"""Both transports, for tests that hold every implementation to the same behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.upstream.aiohttp_session import AiohttpTransport
from gateway.upstream.base import Transport
from gateway.upstream.http1 import Http1Pool

CLIENTS = ("builtin", "aiohttp")
TransportFactory = Callable[..., Transport]


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def aiohttp_differs(client: str, request: pytest.FixtureRequest, reason: str) -> None:
    """Mark the running test an expected failure with aiohttp, for ``reason`` (what aiohttp
    does): strict, so that it is noticed the day aiohttp behaves."""
    if client == "aiohttp":
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


@pytest.fixture
async def new_transport(client: str) -> AsyncIterator[TransportFactory]:
    """``new_transport(url, max_connections=4, ...)``: a transport of the kind under test,
    closed at the end of the test."""
    made: list[Transport] = []

    def make(url: str, **kw: Any) -> Transport:
        kw.setdefault("max_connections", 4)
        kw.setdefault("connect_timeout", 2.0)
        cls = Http1Pool if client == "builtin" else AiohttpTransport
        transport: Transport = cls(url, **kw)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.close()
