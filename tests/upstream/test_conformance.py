"""The hostile-upstream conformance suite: `gateway serve`, with each upstream client, in
front of a raw-socket upstream that misbehaves one way per case (:mod:`.hostile`).

Every case sends concurrent requests (reads, sends, streamed sends) from visitors with
their own tokens, several in a row each, through a pool smaller than the crowd, and
holds the gateway to this: every visitor gets its own answer or an upstream problem
(502/504), never another request's bytes; no chat message reaches the upstream twice;
the gateway's memory (VmRSS) grows by less than 50 MB.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.raw_upstream import ThreadedRawServer
from tests.support.served import RssWatch, ServedGateway
from tests.upstream.hostile import CASE_IDS, CASES, Case
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
RSS_BOUND = 50 * 1024 * 1024


async def crowd(gw: ServedGateway, rounds: int) -> list[Result]:
    """Every token's visitor, all at once; each sends ``rounds`` requests in a row."""
    async with session() as http:

        async def visitor(index: int) -> list[Result]:
            token, kind = gw.tokens[index], KINDS[index % len(KINDS)]
            return [await visit(http, gw, kind, token) for _ in range(rounds)]

        batches = await asyncio.gather(*(visitor(i) for i in range(len(gw.tokens))))
    return [result for batch in batches for result in batch]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
async def test_every_visitor_gets_its_own_answer_or_a_problem(
    served: ServedGateway, hostile: ThreadedRawServer, case: Case
) -> None:
    hostile.answer = case.answer
    hostile.raw.read_bodies = case.read_bodies
    try:
        await asyncio.to_thread(settle, served, hostile)
        since = len(hostile.raw.requests)
        with RssWatch(served) as rss:
            results = await crowd(served, case.rounds)
    finally:
        hostile.raw.read_bodies = True
    outcomes = tally(results)
    mixed = [r.describe() for r in results if outcome(r) == MISMATCH]
    assert not mixed, f"answers reached the wrong visitor: {mixed[:5]} ({outcomes})"
    refused = [
        r.describe() for r in results if outcome(r) not in case.allowed_for(r.kind, served.client)
    ]
    assert not refused, f"outcomes not allowed: {refused[:5]} ({outcomes})"
    if case.required:
        assert all(outcome(r) in case.required for r in results), outcomes
    assert post_ids_sent_twice(hostile, since) == []
    assert rss.growth < RSS_BOUND, f"RSS grew by {rss.growth / 2**20:.1f} MiB"
    assert len(results) == len(served.tokens) * case.rounds
