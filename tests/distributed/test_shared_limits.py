"""Limits hold across replicas: three gateway processes share one Redis (or a Cluster)."""

from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.core import agent_keys
from tests.distributed.conftest import SharedStore
from tests.support.replicas import burst, replicas

pytestmark = pytest.mark.slow  # replicas as processes

N = 10
#: what admit.lua itself calls inside Redis
SCRIPT_COMMANDS = {"time", "pttl", "get", "set", "hget", "hmget", "hset", "pexpire"}
PER_TOKEN = f"""
policies:
  - name: send-per-token
    match: {{routes: [send]}}
    partition: [token]
    limit: {{rate: {N}, per: 1h, burst: {N}}}
"""
#: per token, per client address, per key, and the penalty box
THREE_POLICIES = (
    PER_TOKEN
    + """
  - {name: send-per-ip, match: {routes: [send]}, partition: [client_ip], limit: {rate: 1000, per: 1m, burst: 1000}}
  - {name: send-per-key, match: {routes: [send]}, partition: [api_key, model], limit: {rate: 1000, per: 1m, burst: 1000}}
penalty_box: {threshold: 100}
"""
)
PER_IP = f"""
policies:
  - name: send-per-ip
    match: {{routes: [send]}}
    partition: [client_ip]
    limit: {{rate: {N}, per: 1h, burst: {N}}}
"""


async def test_exactly_n_of_5n_for_one_token(
    tmp_path: Path, shared_store: SharedStore, backend_process: str
) -> None:
    with replicas(
        tmp_path,
        3,
        store_url=shared_store.url,
        store=shared_store.settings,
        upstream=backend_process,
        policies=PER_TOKEN,
    ) as group:
        token = group.token(group.create_key())
        targets = [(group.urls[i % 3], token) for i in range(5 * N)]
        statuses = await burst(targets)
    assert statuses.count(200) == N, statuses
    assert statuses.count(429) == 4 * N, statuses


async def test_exactly_n_of_5n_per_ip_across_tokens(
    tmp_path: Path, shared_store: SharedStore, backend_process: str
) -> None:
    with replicas(
        tmp_path,
        3,
        store_url=shared_store.url,
        store=shared_store.settings,
        upstream=backend_process,
        policies=PER_IP,
    ) as group:
        key = group.create_key()
        tokens = [group.token(key, i % 3) for i in range(5)]
        targets = [(group.urls[i % 3], tokens[i % 5]) for i in range(5 * N)]
        statuses = await burst(targets)
    assert statuses.count(200) == N, statuses
    assert statuses.count(429) == 4 * N, statuses


async def test_one_script_call_per_admitted_request(
    tmp_path: Path, redis_url: str, backend_process: str
) -> None:
    with replicas(
        tmp_path, 1, store_url=redis_url, upstream=backend_process, policies=THREE_POLICIES
    ) as group:
        token = group.token(group.create_key())
        assert await burst([(group.urls[0], token)]) == [200]  # warm: script loaded, bound
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        client.config_resetstat()
        statuses = [s for _ in range(N - 1) for s in await burst([(group.urls[0], token)])]
        stats = client.info("commandstats")
        client.close()
    assert statuses == [200] * (N - 1)
    calls = {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
    calls.pop("config|resetstat", None)
    calls.pop("info", None)
    # commandstats also counts the commands a script runs inside Redis: those are part of
    # the one round trip. Every script calls TIME exactly once, so any client-side
    # command would show up as a name outside the script's own, or as extra TIME calls.
    assert calls.pop("evalsha") == N - 1, calls
    assert calls.get("time") == N - 1, calls
    assert set(calls) <= SCRIPT_COMMANDS, calls


async def test_refused_requests_cost_one_call_too(
    tmp_path: Path, redis_url: str, backend_process: str
) -> None:
    with replicas(
        tmp_path, 1, store_url=redis_url, upstream=backend_process, policies=PER_TOKEN
    ) as group:
        token = group.token(group.create_key())
        await burst([(group.urls[0], token)] * N)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        client.config_resetstat()
        statuses = await burst([(group.urls[0], token)] * 5)
        stats: dict[str, Any] = client.info("commandstats")
        client.close()
    assert statuses == [429] * 5
    assert stats["cmdstat_evalsha"]["calls"] == 5


async def test_a_burst_past_the_store_pool_is_limited_not_refused(
    tmp_path: Path, cluster_url: str, backend_process: str
) -> None:
    """90 POSTs at once (the listener's per-client cap is 100) on one replica whose
    Cluster client has 8 connections per node:
    the calls wait for a connection (redis-py's async pools raise at once when full, and
    those errors opened the breaker: 503s on a mere burst), and the limit stays exact."""
    with replicas(
        tmp_path,
        1,
        store_url=cluster_url,
        upstream=backend_process,
        policies=PER_TOKEN,
        store={"max_connections": 8, "timeout_ms": 2000},
    ) as group:
        token = group.token(group.create_key())
        statuses = await burst([(group.urls[0], token)] * 90)
    assert statuses.count(200) == N, sorted(set(statuses))
    assert statuses.count(429) == 90 - N, sorted(set(statuses))


def _cluster_primaries(cluster_url: str) -> list[redis.Redis]:
    nodes = cluster_url.removeprefix("redis+cluster://").split(",")
    clients = [redis.Redis.from_url(f"redis://{node}", decode_responses=True) for node in nodes]
    return [c for c in clients if c.info("replication")["role"] == "master"]


async def test_sharded_each_admission_is_one_script_call_on_its_key_s_primary(
    tmp_path: Path, cluster_url: str, backend_process: str
) -> None:
    """store.sharding: key on the Cluster: the same three policies (per token, per client
    address, per key) and the penalty box; N - 1 admitted requests of one key are N - 1
    EVALSHA calls, all on one primary (no CROSSSLOT, no second round trip)."""
    with replicas(
        tmp_path,
        1,
        store_url=cluster_url,
        upstream=backend_process,
        policies=THREE_POLICIES,
        store={"sharding": "key"},
    ) as group:
        key = group.create_key()
        token = group.token(key)
        assert await burst([(group.urls[0], token)]) == [200]
        primaries = _cluster_primaries(cluster_url)
        parsed = agent_keys.parse(key)
        assert parsed is not None
        tagged = [c.keys(f"{{gw:{parsed.key_id}}}:*") for c in primaries]
        assert sum(map(len, tagged)) >= 2, tagged  # the token's state, the per-ip limit
        for client in primaries:
            client.config_resetstat()
        statuses = [s for _ in range(N - 1) for s in await burst([(group.urls[0], token)])]
        counts = [
            client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
            for client in primaries
        ]
        for client in primaries:
            client.close()
    assert statuses == [200] * (N - 1)
    assert sorted(counts) == [0] * (len(primaries) - 1) + [N - 1], counts
