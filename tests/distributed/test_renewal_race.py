"""Renewals racing across replicas: three `gateway serve` processes share one Redis (or a
Cluster) and renew the same token at once. Exactly one family survives: every renewal
within the overlap gets the same successor, which works on every replica; the retired
token used after the overlap revokes the family on all of them at once; and each
renewal is one store round trip."""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.distributed.conftest import SharedStore
from tests.support.replicas import SEND, replicas

pytestmark = pytest.mark.slow  # replicas as processes

REFRESH = "/v1/chat/conversation/public/token/refresh"
BINDING = """
binding: {bind_at: first_use, components: [ip_prefix, user_agent]}
"""
#: long enough for the race on a busy machine, short enough to wait out
OVERLAP_SECONDS = 4
PER_REPLICA = 4


async def post(client: httpx.AsyncClient, url: str, path: str, body: dict[str, Any]) -> Any:
    resp = await client.post(url + path, json=body)
    return resp.status_code, resp.json()


async def test_one_family_survives_renewals_racing_on_three_replicas(
    tmp_path: Path, shared_store: SharedStore, backend_process: str
) -> None:
    with replicas(
        tmp_path,
        3,
        store_url=shared_store.url,
        store=shared_store.settings,
        upstream=backend_process,
        policies=BINDING,
        tokens={"rotation_overlap_seconds": OVERLAP_SECONDS},
    ) as group:
        first = group.token(group.create_key())
        urls = group.urls
        limits = httpx.Limits(max_connections=3 * PER_REPLICA)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            status, _ = await post(client, urls[0], SEND, {"client_token": first, "message": "a"})
            assert status == 200  # bound to this client
            renewals = [
                post(client, urls[i % 3], REFRESH, {"client_token": first})
                for i in range(3 * PER_REPLICA)
            ]
            answers = await asyncio.gather(*renewals)
            assert {status for status, _ in answers} == {200}, answers
            tokens = {body["token"] for _, body in answers}
            assert len(tokens) == 1, "each renewal within the overlap gets the same token"
            (newest,) = tokens
            for url in urls:  # the successor works everywhere
                body = {"client_token": newest, "message": "b"}
                assert (await post(client, url, SEND, body))[0] == 200
            await asyncio.sleep(OVERLAP_SECONDS + 0.5)
            # a copy of the retired token, used after the overlap: the family is revoked
            status, problem = await post(
                client, urls[2], SEND, {"client_token": first, "message": "c"}
            )
            assert (status, problem["code"]) == (403, "token_reuse_suspected")
            for url in urls:  # on every replica at once, the newest token included
                status, problem = await post(client, url, REFRESH, {"client_token": newest})
                assert (status, problem["code"]) == (403, "token_reuse_suspected")


async def test_a_renewal_is_one_store_round_trip(
    tmp_path: Path, redis_url: str, backend_process: str
) -> None:
    with replicas(
        tmp_path, 1, store_url=redis_url, upstream=backend_process, policies=BINDING
    ) as group:
        token = group.token(group.create_key())
        async with httpx.AsyncClient(timeout=10) as client:
            status, body = await post(client, group.urls[0], REFRESH, {"client_token": token})
            assert status == 200, body  # warm: the script is loaded
            client_redis = redis.Redis.from_url(redis_url, decode_responses=True)
            client_redis.config_resetstat()
            token = body["token"]
            for _ in range(5):
                status, body = await post(client, group.urls[0], REFRESH, {"client_token": token})
                assert status == 200, body
                token = body["token"]
            stats = client_redis.info("commandstats")
            client_redis.close()
    calls = {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
    assert calls["evalsha"] == 5, calls
    assert calls["time"] == 5, calls  # each script calls TIME once: no other call ran
