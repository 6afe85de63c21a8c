"""A streamed answer on a private route is relayed and counted like one on the public
API: in flight, time to first byte, how it ended, and upstream failures mid-stream."""

from typing import Any

import aiohttp
import pytest

from tests.oauth.conftest import oauth_section
from tests.support.harness import Gateway
from tests.support.identity_provider import IdentityProvider
from tests.support.upstreams import Script

PREFIX = "/v1/private"
EVENT = b'data: {"delta": "x"}\n\n'


async def private_streams(gateway_factory: Any, idp: IdentityProvider, url: str) -> Gateway:
    routes = [{"prefix": PREFIX, "upstream_prefix": "/internal/conversations"}]
    gw: Gateway = await gateway_factory(
        upstream={"url": url, "timeouts": {"stream_idle": 0.3}},
        oauth=oauth_section(idp, routes=routes),
    )
    return gw


async def read_into(resp: aiohttp.ClientResponse, chunks: list[bytes]) -> None:
    async for chunk in resp.content.iter_any():
        chunks.append(chunk)


async def test_a_private_stream_is_in_flight_and_counted_when_done(
    gateway_factory: Any, idp: IdentityProvider, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.chunks = [(0.0, EVENT), (0.1, EVENT)]
    gw = await private_streams(gateway_factory, idp, url)
    headers = {"Authorization": f"Bearer {idp.sign()}"}
    async with gw.http.get(gw.url + PREFIX + "/c-1/messages", headers=headers) as resp:
        assert resp.status == 200
        assert await resp.content.readuntil(b"\n\n") == EVENT
        in_flight = gw.sample("gateway_streams_in_flight")
        await resp.read()
    assert in_flight == 1
    assert gw.sample("gateway_streams_in_flight") == 0
    assert gw.sample("gateway_streams_total", outcome="completed") == 1
    assert gw.sample("gateway_stream_time_to_first_byte_seconds_count") == 1


async def test_a_private_stream_the_upstream_abandons_is_counted(
    gateway_factory: Any, idp: IdentityProvider, scripted: tuple[Script, str]
) -> None:
    script, url = scripted
    script.chunks = [(0.0, EVENT), (0.0, b"data: {"), (2.0, EVENT)]  # silent mid-event
    gw = await private_streams(gateway_factory, idp, url)
    headers = {"Authorization": f"Bearer {idp.sign()}"}
    async with gw.http.get(gw.url + PREFIX + "/c-1/messages", headers=headers) as resp:
        assert resp.status == 200
        chunks: list[bytes] = []
        with pytest.raises(aiohttp.ClientPayloadError):  # cut: no clean end
            await read_into(resp, chunks)
    body = b"".join(chunks)
    assert body.startswith(EVENT)
    assert b"event: error" not in body  # a private stream is the upstream's own format
    errors = "gateway_upstream_errors_total"
    assert gw.sample(errors, operation="forward", reason="timeout") == 1
    assert gw.sample("gateway_streams_total", outcome="truncated") == 1
    assert gw.sample("gateway_streams_in_flight") == 0
