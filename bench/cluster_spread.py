"""The cluster-spread scenario: does ``store.sharding: key`` spread admissions over a Redis
Cluster's primaries? (``python -m bench --only cluster-spread``, about three minutes.)

A real 3-primary Cluster on 127.0.0.1, the gateway on it (the shipped policy set, limits
raised out of reach), POSTs with tokens of 200 agent keys: once with ``sharding: off``
(every key under ``{gw}``: one slot, one primary) and once with ``sharding: key`` (each
agent key under ``{gw:<key id>}``), then all the load from one agent key declared hot
over 12 sub-buckets (``store.hot_keys``). After each measured run, ``INFO commandstats`` on
every primary: EVALSHA calls per primary (their spread about the mean) and Redis's own
time per call, the figure the README's capacity model starts from; and the run's p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.gateway_setup import mint_tokens, raised_policies
from bench.load import LoadGenerator, LoadResult
from bench.machine import cpus
from bench.scenarios import SCENARIOS
from bench.stack import Cpus, Stack
from gateway.core.gcra import LimitSpec
from gateway.core.redis_keys import bucket_shard, cluster_slot
from gateway.redis_connect import connect
from gateway.store.base import AdmitRequest, TokenUse
from gateway.store.redis import RedisStore

NAME = "cluster-spread"
#: one slot for all; a slot per agent key; one agent key over its sub-buckets
MODES = ("off", "key", "hot")
LABELS = {
    "off": "one slot (sharding off)",
    "key": "per agent key",
    "hot": "one hot key, sub-buckets",
    "store-key": "store: per key",
    "two-slots": "store: per key + {gw}",
}
#: admissions in flight in the store runs
CONCURRENCY = 32


@dataclass(frozen=True)
class Primary:
    port: int
    evalsha: int
    usec_per_call: float


@dataclass(frozen=True)
class SpreadRun:
    mode: str
    load: LoadResult
    primaries: list[Primary]
    #: the agent keys (or a hot key's sub-buckets) each primary serves
    tags: list[int]

    @property
    def calls(self) -> list[int]:
        return [p.evalsha for p in self.primaries]

    @property
    def worst_off_mean(self) -> float:
        """The primary farthest from the mean, as a share of the mean."""
        calls = self.calls
        mean = sum(calls) / len(calls)
        return max(abs(c - mean) for c in calls) / mean if mean else 0.0

    @property
    def usec_per_admission(self) -> float:
        """Redis's time per admission, every script call of it counted."""
        spent = sum(p.usec_per_call * p.evalsha for p in self.primaries)
        return spent / self.load.requests if self.load.requests else 0.0


def say(*parts: object) -> None:
    print(*parts, flush=True)


def _evalsha(port: int) -> tuple[int, float]:
    with redis.Redis(port=port) as client:
        stat = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stat.get("calls", 0)), float(stat.get("usec_per_call", 0.0))


def _tags_per_primary(ports: list[int], tags: list[str]) -> list[int]:
    """How many of the hash tags ``tags`` each primary serves (``CLUSTER SLOTS``)."""
    with redis.Redis(port=ports[0]) as client:
        ranges = client.execute_command("CLUSTER", "SLOTS")
    owner = {}
    for start, end, primary, *_ in ranges:
        owner[(int(start), int(end))] = int(primary[1])
    counts = dict.fromkeys(ports, 0)
    for tag in tags:
        slot = cluster_slot(tag)
        port = next(p for (lo, hi), p in owner.items() if lo <= slot <= hi)
        counts[port] += 1
    return [counts[port] for port in ports]


def _reset(ports: list[int]) -> None:
    for port in ports:
        with redis.Redis(port=port) as client:
            client.config_resetstat()


def run(args: argparse.Namespace, work: Path, pins: Cpus) -> list[SpreadRun]:
    out = []
    with ExitStack() as exits:
        stack = Stack(work, pins, exits)
        say(f"starting the upstream, a {args.primaries}-primary Redis Cluster, {args.keys} keys")
        upstream = stack.start_upstream(shutil.which("nginx") is not None)
        ports = stack.start_cluster(args.primaries)
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
        keys_path, keys = stack.keys(args.keys)
        policies = raised_policies(work / "policies-raised")
        generator = LoadGenerator.choose(True, pins.load, args.connections)
        send = next(s for s in SCENARIOS if s.name == "send")
        hot = keys[0].key_id
        for mode in MODES:
            settings: dict[str, Any] = {"sharding": "off" if mode == "off" else "key"}
            if mode == "hot":
                settings["hot_keys"] = {hot: args.hot_buckets}
            gateway = stack.start_gateway(
                f"gateway-{mode}",
                upstream.url,
                keys_path,
                policies,
                redis_url=url,
                store_settings={**settings, "timeout_ms": 250},
            )
            if mode == "hot":  # every token of one key, over its sub-buckets
                count = args.keys * args.per_key
                minted = mint_tokens(stack.signing, hot, count, shards=args.hot_buckets)
            else:
                shards = 1 if mode == "key" else 0
                minted = [
                    m
                    for key in keys
                    for m in mint_tokens(stack.signing, key.key_id, args.per_key, shards=shards)
                ]
            tokens = [m.token for m in minted]
            random.Random(7).shuffle(tokens)  # every key's tokens all through the run
            requests = send.build("gateway", tokens, "")
            assert requests is not None
            generator.run(gateway.port, requests, args.warmup, work)  # binds every token
            time.sleep(0.3)
            _reset(ports)
            load = generator.run(gateway.port, requests, args.seconds, work)
            time.sleep(0.3)
            primaries = [Primary(port, *_evalsha(port)) for port in ports]
            if mode == "off":
                tags = ["gw"]
            elif mode == "key":
                tags = [f"gw:{key.key_id}" for key in keys]
            else:
                tags = [
                    f"gw:{bucket_shard('gw', hot, b, args.hot_buckets)}"
                    for b in range(args.hot_buckets)
                ]
            spread = SpreadRun(mode, load, primaries, _tags_per_primary(ports, tags))
            out.append(spread)
            say(
                f"  {LABELS[mode]:24s}: {load.rps:7,.0f} req/s p99 {load.p99_ms:5.2f} ms, "
                f"evalsha per primary {'/'.join(f'{c:,}' for c in spread.calls)} "
                f"({spread.worst_off_mean:.0%} off the mean; tags per primary "
                f"{'/'.join(map(str, spread.tags))}), "
                f"{spread.usec_per_admission:.1f} us per admission in Redis"
                + (f", FAILED {load.non_2xx + load.errors}" if load.non_2xx or load.errors else "")
            )
            gateway.proc.stop() if gateway.proc else None
        say("the rejected design, at the store: cross-key limits on their own slot")
        for both in (False, True):
            store_run = asyncio.run(
                _store_run(url, ports, [k.key_id for k in keys], args.store_admissions, both)
            )
            out.append(store_run)
            say(
                f"  {LABELS[store_run.mode]:24s}: p99 {store_run.load.p99_ms:5.2f} ms, "
                f"evalsha per primary {'/'.join(f'{c:,}' for c in store_run.calls)} "
                f"({store_run.worst_off_mean:.0%} off the mean), "
                f"{store_run.usec_per_admission:.1f} us per admission in Redis"
            )
    return out


async def _store_run(
    url: str, ports: list[int], key_ids: list[str], count: int, global_slot: bool
) -> SpreadRun:
    """``count`` admissions straight to the store (32 at a time), each a token use with a
    per-token and a per-key limit in its key's slot; with ``global_slot`` also, at the
    same time, the per-address limit and the penalty box on the one slot ``{gw}`` (the
    second script of the rejected design; no refund is needed, nothing is denied)."""
    client = connect(url, socket_timeout=2, max_connections=CONCURRENCY)
    store = RedisStore(client, prefix="gw", max_calls=CONCURRENCY)
    await store.start()
    places = asyncio.Semaphore(CONCURRENCY)
    times: list[float] = []

    async def one(i: int) -> None:
        key_id, jti = key_ids[i % len(key_ids)], f"bench-{i % 5000}"
        limits = (
            LimitSpec("send-per-token", 1, 1_000_000, scope=jti),
            LimitSpec(f"send-per-key:{key_id}", 1, 1_000_000),
        )
        use = TokenUse(jti, "", "", 1, "deny", 60_000)
        calls = [store.admit(AdmitRequest(use, limits, shard=key_id))]
        if global_slot:
            ip = f"203.0.{i % 250}.{i % 200}"
            per_ip = LimitSpec(f"send-per-ip:{ip}", 1, 1_000_000)
            calls.append(store.admit(AdmitRequest(limits=(per_ip,), penalty_subject=ip)))
        async with places:
            started = time.perf_counter()
            await asyncio.gather(*calls)
            times.append(time.perf_counter() - started)

    await asyncio.gather(*(one(i) for i in range(1000)))  # warm
    _reset(ports)
    times.clear()
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    seconds = time.perf_counter() - started
    await store.close()
    primaries = [Primary(port, *_evalsha(port)) for port in ports]
    times.sort()
    p50, p99 = times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000
    load = LoadResult(count, seconds, 0, 0, p50, p99)
    return SpreadRun("two-slots" if global_slot else "store-key", load, primaries, [])


def report(runs: list[SpreadRun]) -> list[str]:
    lines = [
        "| state layout | req/s | p99 ms | EVALSHA per primary | farthest from the mean "
        "| hash tags per primary | Redis us per admission |",
        "|---|---:|---:|---|---:|---|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {LABELS[r.mode]} | {r.load.rps:,.0f} | {r.load.p99_ms:.2f} | "
            f"{' / '.join(f'{c:,}' for c in r.calls)} | {r.worst_off_mean:.0%} | "
            f"{' / '.join(map(str, r.tags))} | "
            f"{r.usec_per_admission:.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_spread", description=__doc__)
    parser.add_argument("--keys", type=int, default=200, help="agent keys (tenants)")
    parser.add_argument("--per-key", type=int, default=5, help="client tokens per key")
    parser.add_argument("--primaries", type=int, default=3)
    parser.add_argument(
        "--hot-buckets", type=int, default=12, help="sub-buckets of the one hot key (hot run)"
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--store-admissions", type=int, default=20_000, help="per store run (rejected design)"
    )
    args = parser.parse_args(argv)
    proxy_cpu, load_cpu = cpus()
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    work = Path(tempfile.mkdtemp(prefix="agent-gateway-spread-"))
    try:
        runs = run(args, work, Cpus(proxy_cpu, load_cpu))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say("\n".join(["", *report(runs)]))
    return 1 if any(r.load.non_2xx or r.load.errors for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
