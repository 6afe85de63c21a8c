"""A private stream still running when the shutdown grace is over is cut (a private route
relays the upstream's own format: no event of the gateway's), its upstream call is
cancelled, and it is counted as truncated."""

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.oauth.test_private_streams import EVENT, PREFIX, private_streams, read_into
from tests.support.identity_provider import IdentityProvider
from tests.support.upstreams import Script
from tests.web.test_shutdown_streams import BOUND, GRACE, shut_down


async def test_a_private_stream_past_the_grace_is_cut_and_its_upstream_call_cancelled(
    gateway_factory: Any,
    idp: IdentityProvider,
    scripted: tuple[Script, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    script, url = scripted
    script.chunks = [(0.05, EVENT) for _ in range(2000)]  # about 100 s
    gw = await private_streams(gateway_factory, idp, url)
    headers = {"Authorization": f"Bearer {idp.sign()}"}
    chunks: list[bytes] = []
    async with gw.http.get(gw.url + PREFIX + "/c-1/messages", headers=headers) as resp:
        assert resp.status == 200
        reading = asyncio.create_task(read_into(resp, chunks))
        await asyncio.sleep(0.3)
        took = await shut_down(gw, GRACE)
        with pytest.raises(aiohttp.ClientPayloadError):  # cut: no clean end
            await asyncio.wait_for(reading, 5)
    assert GRACE <= took < BOUND, took
    body = b"".join(chunks)
    assert body.startswith(EVENT) and b"event: error" not in body
    await asyncio.wait_for(script.cancelled.wait(), 2)
    assert gw.sample("gateway_streams_total", outcome="truncated") == 1
    assert gw.sample("gateway_streams_in_flight") == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
