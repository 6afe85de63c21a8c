"""The conformance suite's two bounds under load, through `gateway serve` with each client:

- an upstream that sends every answer a second time 5 ms later (while it goes on serving
  the connection) never gets an answer to the wrong visitor in 5,000 concurrent requests;
- an upstream whose answers' heads never end, hammered for seconds by concurrent
  visitors, leaves the gateway's memory within 50 MB of where it started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from tests.support.raw_upstream import ThreadedRawServer
from tests.support.served import RssWatch, ServedGateway
from tests.upstream.hostile import OWN, OWN_ERROR, P502, endless_headers, stray_later
from tests.upstream.visitors import (
    KINDS,
    MISMATCH,
    Result,
    outcome,
    post_ids_sent_twice,
    session,
    settle,
    tally,
    visit,
)

pytestmark = pytest.mark.slow
REQUESTS = 5000
WORKERS = 64
RSS_BOUND = 50 * 1024 * 1024


async def hammer(
    gw: ServedGateway, *, count: int | None = None, seconds: float | None = None
) -> list[Result]:
    """``WORKERS`` visitors at once, each request with a token and kind in turn, until
    ``count`` requests were sent or ``seconds`` have passed."""
    results: list[Result] = []
    started = time.monotonic()
    sent = 0

    def more() -> bool:
        if count is not None:
            return sent < count
        return time.monotonic() - started < (seconds or 0)

    async with session(WORKERS) as http:

        async def worker() -> None:
            nonlocal sent
            while more():
                index = sent
                sent += 1
                token = gw.tokens[index % len(gw.tokens)]
                results.append(await visit(http, gw, KINDS[index % len(KINDS)], token))

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return results


async def run_against(
    served: ServedGateway,
    hostile: ThreadedRawServer,
    answer: Callable[..., Awaitable[None] | None],
    **how: float,
) -> tuple[list[Result], RssWatch, int]:
    hostile.answer = answer
    await asyncio.to_thread(settle, served, hostile)
    since = len(hostile.raw.requests)
    with RssWatch(served) as rss:
        results = await hammer(served, **how)  # type: ignore[arg-type]
    return results, rss, since


@pytest.mark.parametrize("echo", [True, False], ids=["echoing", "not-echoing"])
async def test_no_answer_reaches_the_wrong_visitor_with_strays_5ms_late(
    served: ServedGateway, hostile: ThreadedRawServer, echo: bool
) -> None:
    started = time.monotonic()
    mismatches_before = sum(
        served.metric("gateway_upstream_errors_total", operation=op, reason="request_id_mismatch")
        for op in ("get_messages", "send_message")
    )
    results, rss, since = await run_against(
        served, hostile, stray_later(0.005, echo=echo), count=REQUESTS
    )
    elapsed = time.monotonic() - started
    outcomes = tally(results)
    assert len(results) == REQUESTS
    mixed = [r.describe() for r in results if outcome(r) == MISMATCH]
    assert not mixed, f"{len(mixed)} answers reached the wrong visitor: {mixed[:3]}"
    assert {outcome(r) for r in results} <= {OWN, OWN_ERROR, P502}, outcomes
    assert any(outcome(r) == OWN for r in results)
    assert post_ids_sent_twice(hostile, since) == []
    assert rss.growth < RSS_BOUND
    stopped = (
        sum(
            served.metric(
                "gateway_upstream_errors_total", operation=op, reason="request_id_mismatch"
            )
            for op in ("get_messages", "send_message")
        )
        - mismatches_before
    )
    print(
        f"\n{served.client}, {'echoing' if echo else 'not echoing'}: {REQUESTS} requests in "
        f"{elapsed:.1f} s, {outcomes}, stray answers stopped by the echo check: {stopped:g}, "
        f"upstream requests: {len(hostile.raw.requests) - since}, "
        f"RSS +{rss.growth / 2**20:.1f} MiB"
    )


async def test_endless_heads_for_seconds_keep_memory_bounded(
    served: ServedGateway, hostile: ThreadedRawServer
) -> None:
    results, rss, _since = await run_against(served, hostile, endless_headers, seconds=5.0)
    outcomes = tally(results)
    assert rss.growth < RSS_BOUND, f"RSS grew by {rss.growth / 2**20:.1f} MiB ({outcomes})"
    assert results and all(outcome(r) == P502 for r in results), outcomes
    print(
        f"\n{served.client}: endless heads, {len(results)} requests in 5 s, RSS from "
        f"{rss.start / 2**20:.1f} MiB to a peak of {rss.peak / 2**20:.1f} MiB"
    )
