"""Both transports, for tests that hold every implementation to the same behaviour; and
`gateway serve` with each of them in front of a hostile upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from gateway.upstream.aiohttp_session import AiohttpTransport
from gateway.upstream.base import Transport
from gateway.upstream.http1 import Http1Pool
from tests.support.raw_upstream import ThreadedRawServer, echoing
from tests.support.served import ServedGateway, served_gateway

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


# -- the gateway as a process in front of a hostile upstream (the conformance suite) --------
@pytest.fixture(scope="package")
def hostile() -> Iterator[ThreadedRawServer]:
    """One raw-socket upstream for the package; each test sets what it answers."""
    server = ThreadedRawServer(echoing)
    yield server
    server.close()


#: short timeouts so that drips and endless streams end within seconds; a pool smaller than
#: the clients so that connections are handed from one request to the next
SERVED_UPSTREAM = {
    "max_connections": 8,
    "timeouts": {"connect": 1, "read": 2, "stream_idle": 1, "stream_max": 3},
}


@pytest.fixture(scope="package", params=CLIENTS)
def served(
    request: pytest.FixtureRequest,
    hostile: ThreadedRawServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedGateway]:
    """``gateway serve`` with each upstream client in front of ``hostile``, and 24 tokens."""
    client = str(request.param)
    room = tmp_path_factory.mktemp(f"served-{client}")
    with served_gateway(room, hostile.url, client, tokens=24, upstream=SERVED_UPSTREAM) as gw:
        yield gw
