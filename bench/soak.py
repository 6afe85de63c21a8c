"""``make soak``: a bounded soak of ``gateway serve`` on Redis under mixed traffic.

For ``--minutes`` (10 by default) the load generator plays many visitors at a third
(``--share``) of the capacity that ``make bench`` measured for a POST on Redis: token
requests, history reads, messages with JSON and streamed answers, streams abandoned after
their first event, bursts that the per-token limit refuses (429) and tokens replayed from
another client (403, which revokes them and feeds the penalty box). Every minute it
samples the gateway's resident memory, open file descriptors, pooled upstream connections
and the p99 latency of the minute's answers; the run fails (exit 1) when memory grows
more than ``--max-growth`` (10%) past the first minute, or on any 5xx answer or broken
exchange.

Why a third: ``make bench`` measures one token sending one message over and over, which
keeps every cache warm. The soak's mix is dearer per request (20,000 visitors miss the
token and fingerprint caches, tokens are issued, streams are relayed, replayed tokens are
refused and revoked): on an Intel Xeon 2-CPU machine the gateway's core saturated at about
2,300 requests a second of this mix, when ``make bench`` gave 4,760 for the POST alone.
At half of the POST capacity the run measures saturation (queueing, store deadlines
passing: 503), not the leaks and drift it is meant to find.

The gateway is pinned to one CPU, the load generator, the upstream (nginx, or the
bench's aiohttp upstream) and Redis to the other, as in ``make bench``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import tempfile
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import uvloop
import yaml

from bench.gateway_setup import DEFAULT_POLICIES, RAISED_LIMIT, mint_tokens
from bench.machine import cpus, describe, ensure_tools
from bench.probes import SEND_PATH, quantile
from bench.pyload import read_response
from bench.stack import Cpus, Stack, Target

RESULTS = Path(__file__).with_name("results")
MESSAGES_PATH = "/v1/chat/conversation/public/messages/"
TOKEN_ROUTE = "/v1/chat/conversation/public/message/token/"
#: answered by the upstream with a slow (rate-limited) stream: abandoned mid-way
DRIP_MODEL = "drip"
#: policies kept at their shipped limits, so that the run meets real 429s
KEPT_LIMITS = {"send-per-token", "token-per-ip"}
#: the mix: kind -> weight (one operation is one request, a burst is eight)
MIX = {
    "read": 30,
    "send": 47,
    "stream": 8,
    "drip": 3,
    "token": 5,
    "burst": 2,
    "reuse": 5,
}
FALLBACK_CAPACITY = 4000.0


def say(*parts: object) -> None:
    print(*parts, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests a second (default: --share of the POST-on-Redis rate in "
        "bench/results/latest.md, or of 4,000 without it)",
    )
    parser.add_argument(
        "--share",
        type=float,
        default=1 / 3,
        help="the share of the measured POST capacity to offer when --rate is not given",
    )
    parser.add_argument("--visitors", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--max-growth", type=float, default=0.10)
    parser.add_argument("--no-install", action="store_true", help="never apt-get install")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def measured_capacity(results: Path) -> tuple[float, str]:
    """The gateway's POST rate on Redis from the last ``make bench``, and where from."""
    latest = results / "latest.md"
    try:
        text = latest.read_text()
    except OSError:
        return FALLBACK_CAPACITY, "no bench/results/latest.md: assumed"
    match = re.search(r"\| POST a message \(JSON answer\) \| gateway, Redis \| ([\d,]+) \|", text)
    if match is None:
        return FALLBACK_CAPACITY, "not found in bench/results/latest.md: assumed"
    return float(match.group(1).replace(",", "")), f"{latest.name}"


def soak_policies(directory: Path) -> Path:
    """The shipped policy set; limits raised out of reach except :data:`KEPT_LIMITS`."""
    data = yaml.safe_load(DEFAULT_POLICIES.read_text())
    for policy in data["policies"]:
        if policy["name"] not in KEPT_LIMITS:
            policy["limit"] = dict(RAISED_LIMIT)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "soak.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return directory


# -- visitors -------------------------------------------------------------------------
@dataclass
class Visitor:
    ip: str
    agent: str
    model: str
    token: str


def visitor_ip(n: int) -> str:
    """A distinct /24 per visitor (the binding and the per-IP limits see them apart)."""
    return f"10.{(n >> 8) & 255}.{n & 255}.{1 + n % 200}"


def make_visitors(stack: Stack, key_id: str, count: int) -> list[Visitor]:
    """``count`` visitors, one in ten on the slow model, each with a token minted as the
    token route would (bound at its first use, like any token)."""
    drip = count // 10
    out: list[Visitor] = []
    for model, n in (("demo", count - drip), (DRIP_MODEL, drip)):
        for minted in mint_tokens(stack.signing, key_id, n, model=model):
            i = len(out)
            out.append(Visitor(visitor_ip(i), f"soak-browser/{i % 50}", model, minted.token))
    return out


def thief_ip(n: int) -> str:
    return f"172.16.{n % 64}.9"


@dataclass
class Minute:
    started: float
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    broken: int = 0
    skipped: int = 0


class Load:
    """The operations, on a pool of keep-alive connections to the gateway."""

    def __init__(self, port: int, key: str, visitors: list[Visitor], connections: int) -> None:
        self.port = port
        self.key = key
        self.visitors = visitors
        self.pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = (
            asyncio.Queue()
        )
        for _ in range(connections):
            self.pool.put_nowait(None)  # connected on first use
        self.connections = connections
        self.minute = Minute(time.monotonic())
        self.kinds = list(MIX)
        self.weights = list(MIX.values())

    def _head(self, method: str, path: str, headers: list[str], body: bytes = b"") -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", *headers]
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    @staticmethod
    def _client(ip: str, agent: str) -> list[str]:
        return [f"X-Forwarded-For: {ip}", f"User-Agent: {agent}"]

    async def _exchange(self, request: bytes, abandon_after_first: bool = False) -> int:
        """One request on a pooled connection: its status (the body read whole, or the
        connection closed after the first chunk of a stream when abandoning)."""
        conn = await self.pool.get()
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = conn
            started = time.perf_counter()
            writer.write(request)
            if abandon_after_first:
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                if b"chunked" in head.lower():
                    await reader.readuntil(b"\r\n")  # the first chunk's size line
                writer.close()
                conn = None
                return status
            status = await read_response(reader)
            self.minute.latencies.append(time.perf_counter() - started)
            return status
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            if conn is not None:
                conn[1].close()
            conn = None
            raise
        finally:
            self.pool.put_nowait(conn)

    async def operation(self) -> None:
        kind = random.choices(self.kinds, self.weights)[0]
        visitor = random.choice(self.visitors)
        if kind == "drip" and visitor.model != DRIP_MODEL:
            visitor = self.visitors[-1 - random.randrange(len(self.visitors) // 10)]
        elif kind != "drip" and kind != "token" and visitor.model == DRIP_MODEL:
            kind = "read"
        minute = self.minute
        statuses: list[int] = []
        try:
            statuses = await self._run(kind, visitor)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            minute.broken += 1
            return
        minute.kinds[kind] += 1
        for status in statuses:
            minute.statuses[status] += 1
        if kind != "reuse" and 403 in statuses:  # revoked by a replay: the visitor starts again
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                minute.statuses[await self._new_token(visitor)] += 1

    async def _run(self, kind: str, visitor: Visitor) -> list[int]:
        client = self._client(visitor.ip, visitor.agent)
        if kind == "token":
            status = await self._new_token(visitor)
            return [status]
        if kind == "read":
            return [await self._exchange(self._head("GET", MESSAGES_PATH + visitor.token, client))]
        if kind == "reuse":  # the token, replayed from elsewhere: 403, and it is revoked
            thief = self._client(thief_ip(random.randrange(256)), "curl/8.0")
            status = await self._exchange(self._head("GET", MESSAGES_PATH + visitor.token, thief))
            return [status]
        stream = kind in ("stream", "drip")
        body = orjson.dumps({"client_token": visitor.token, "message": "hello", "stream": stream})
        request = self._head("POST", SEND_PATH, client, body)
        if kind == "burst":  # past the per-token burst: the last ones get 429
            return [await self._exchange(request) for _ in range(8)]
        return [await self._exchange(request, abandon_after_first=kind == "drip")]

    async def _new_token(self, visitor: Visitor) -> int:
        headers = [*self._client(visitor.ip, visitor.agent), f"Authorization: Bearer {self.key}"]
        conn = await self.pool.get()
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = conn
            writer.write(self._head("GET", TOKEN_ROUTE + visitor.model, headers))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            body = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError, AttributeError):
            if conn is not None:
                conn[1].close()
            conn = None
            raise
        finally:
            self.pool.put_nowait(conn)
        if status == 200:
            visitor.token = orjson.loads(body)["token"]
        return status


# -- samples --------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    minute: int
    requests: int
    rate: float
    p99_ms: float
    statuses: dict[int, int]
    broken: int
    skipped: int
    rss_mb: float
    fds: int
    pool_open: float
    pool_idle: float


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(admin_port: int) -> dict[str, float]:
    """The gateway's metrics, ``name{labels}`` to value."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:  # once a minute
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


def pool_connections(admin_port: int) -> tuple[float, float]:
    values = scrape(admin_port)
    return (
        values.get('gateway_upstream_connections{state="open"}', 0.0),
        values.get('gateway_upstream_connections{state="idle"}', 0.0),
    )


#: the series that explain 5xx answers and latency spikes, reported once at the end
EXPLAINING = (
    "gateway_http_problems_total",
    "gateway_store_errors_total",
    "gateway_store_deadline_extended_total",
    "gateway_store_fail_open_total",
    "python_gc_collections_total",
)
#: histograms whose observations above 50 ms are reported (a store call's deadline)
SLOW_SHARE = ("gateway_event_loop_lag_seconds", "gateway_store_operation_duration_seconds")


def explaining(values: dict[str, float]) -> list[str]:
    """What the gateway counted over the run that explains its errors: problems by code
    (status 500 and more), store errors, deadline extensions, garbage collections, and how
    many event-loop lag samples and store calls took more than 50 ms."""
    out = []
    for series, value in sorted(values.items()):
        name = series.partition("{")[0]
        if name not in EXPLAINING or not value:
            continue
        if name == "gateway_http_problems_total" and not re.search(
            r'code="(store_|upstream_|internal|unavailable|overload)', series
        ):
            continue
        out.append(f"`{series}` {value:,.0f}")
    for name in SLOW_SHARE:
        for series, total in values.items():
            if not series.startswith(name + "_count") or not total:
                continue
            labels = series[len(name + "_count") :].strip("{}")
            bucket = f'{name}_bucket{{le="0.05"{"," + labels if labels else ""}}}'
            if (fast := values.get(bucket)) is not None:
                shown = f"{name}{{{labels}}}" if labels else name
                out.append(f"`{shown}`: {total - fast:,.0f} of {total:,.0f} above 50 ms")
    return out


async def drive(
    load: Load, target: Target, rate: float, minutes: float
) -> tuple[list[Sample], list[str]]:
    """Operations at ``rate`` requests a second (open loop, bounded by the connections:
    an operation that finds every connection busy for a whole tick is skipped and
    counted), a sample at the end of each minute, and at the end the gateway's counts that
    explain errors (:func:`explaining`)."""
    assert target.proc is not None
    assert target.admin_port is not None
    pid, admin = target.proc.pid, target.admin_port
    per_op = sum(w * (8 if k == "burst" else 1) for k, w in MIX.items()) / sum(MIX.values())
    ops_rate = rate / per_op
    tick = 0.01
    max_in_flight = 2 * load.connections
    samples: list[Sample] = []
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + minutes * 60
    next_minute = start + 60
    due = 0.0
    while (now := loop.time()) < end:
        due += ops_rate * tick
        while due >= 1:
            due -= 1
            if len(tasks) >= max_in_flight:
                load.minute.skipped += 1
                continue
            task = asyncio.create_task(load.operation())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if now >= next_minute:
            samples.append(sample(load, len(samples) + 1, pid, admin))
            say(line(samples[-1]))
            next_minute += 60
        await asyncio.sleep(max(0.0, tick - (loop.time() - now)))
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    if load.minute.statuses or load.minute.broken:  # the last minute, whole or not
        samples.append(sample(load, len(samples) + 1, pid, admin))
        say(line(samples[-1]))
    return samples, explaining(scrape(admin))


def sample(load: Load, number: int, pid: int, admin: int) -> Sample:
    minute, load.minute = load.minute, Minute(time.monotonic())
    elapsed = max(time.monotonic() - minute.started, 1e-9)
    requests = sum(minute.statuses.values())
    pool_open, pool_idle = pool_connections(admin)
    return Sample(
        minute=number,
        requests=requests,
        rate=requests / elapsed,
        p99_ms=quantile(minute.latencies, 0.99) * 1000 if minute.latencies else 0.0,
        statuses=dict(sorted(minute.statuses.items())),
        broken=minute.broken,
        skipped=minute.skipped,
        rss_mb=rss_mb(pid),
        fds=open_fds(pid),
        pool_open=pool_open,
        pool_idle=pool_idle,
    )


def line(s: Sample) -> str:
    statuses = " ".join(f"{k}:{v}" for k, v in s.statuses.items())
    return (
        f"  minute {s.minute:2d}  {s.rate:7,.0f} req/s  p99 {s.p99_ms:7.1f} ms  "
        f"RSS {s.rss_mb:6.1f} MB  fds {s.fds:4d}  pool {s.pool_open:.0f} open "
        f"{s.pool_idle:.0f} idle  [{statuses}]"
        + (f"  broken {s.broken}" if s.broken else "")
        + (f"  skipped {s.skipped}" if s.skipped else "")
    )


# -- the run --------------------------------------------------------------------------
@dataclass
class Verdict:
    growth: float
    server_errors: int
    broken: int
    failures: list[str]


def judge(samples: list[Sample], max_growth: float) -> Verdict:
    first = samples[0].rss_mb
    later = [s.rss_mb for s in samples[1:]] or [first]
    growth = (max(later) - first) / first if first else 0.0
    server_errors = sum(v for s in samples for k, v in s.statuses.items() if k >= 500)
    broken = sum(s.broken for s in samples)
    failures = []
    if growth > max_growth:
        failures.append(f"RSS grew {growth:.1%} after the first minute (limit {max_growth:.0%})")
    if server_errors:
        failures.append(f"{server_errors} answers with a 5xx status")
    if broken:
        failures.append(f"{broken} broken exchanges (connection reset or cut answer)")
    return Verdict(growth, server_errors, broken, failures)


def markdown(
    samples: list[Sample],
    verdict: Verdict,
    setup: list[str],
    machine: dict[str, str],
    counts: list[str],
) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# Soak results, {date}", "", "Reproduce: `make soak`", "", "## Machine", ""]
    out += [f"- {k}: {v}" for k, v in machine.items()]
    out += ["", "## Setup", ""] + [f"- {item}" for item in setup]
    out += [
        "",
        "## Per minute",
        "",
        "| minute | req/s | p99 ms | RSS MB | open fds | upstream conns (open/idle) "
        "| answers by status | broken |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for s in samples:
        statuses = ", ".join(f"{k}: {v:,}" for k, v in s.statuses.items())
        out.append(
            f"| {s.minute} | {s.rate:,.0f} | {s.p99_ms:.1f} | {s.rss_mb:.1f} | {s.fds} "
            f"| {s.pool_open:.0f}/{s.pool_idle:.0f} | {statuses} | {s.broken} |"
        )
    total = sum(s.requests for s in samples)
    out += [
        "",
        "## Verdict",
        "",
        f"- requests answered: {total:,}; 5xx: {verdict.server_errors}; broken exchanges: "
        f"{verdict.broken}",
        f"- RSS after the first minute: {samples[0].rss_mb:.1f} MB; highest later: "
        f"{max(s.rss_mb for s in samples):.1f} MB; growth {verdict.growth:+.1%} (limit +10%)",
        "- result: " + ("PASS" if not verdict.failures else "FAIL: " + "; ".join(verdict.failures)),
        "",
        "## What the gateway counted",
        "",
    ]
    out += [f"- {item}" for item in counts] or ["- nothing that explains an error"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # stopped with SIGTERM as with Ctrl-C: the exit stack stops the gateway, nginx and Redis
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ensure_tools(install=not args.no_install, say=say)
    proxy_cpu, load_cpu = cpus()
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    capacity, source = measured_capacity(args.out)
    rate = args.rate if args.rate is not None else capacity * args.share
    work = Path(tempfile.mkdtemp(prefix="agent-gateway-soak-"))
    try:
        with ExitStack() as exits:
            stack = Stack(work, Cpus(proxy_cpu, load_cpu), exits)
            say("starting the upstream, Redis and the gateway ...")
            upstream = stack.start_upstream(use_nginx=True)
            keys_path, keys = stack.keys(1, models=["demo", DRIP_MODEL])
            redis_port = stack.start_redis()
            gateway = stack.start_gateway(
                "gateway-soak",
                upstream.url,
                keys_path,
                soak_policies(work / "policies"),
                redis_port=redis_port,
                trusted_proxies=["127.0.0.1/32"],
                models=["demo", DRIP_MODEL],
            )
            visitors = make_visitors(stack, keys[0].key_id, args.visitors)
            say(
                f"soak: {args.minutes:g} min at {rate:,.0f} req/s (capacity {capacity:,.0f} "
                f"req/s, {source}), {args.visitors:,} visitors, {args.connections} connections"
            )
            load = Load(gateway.port, keys[0].key, visitors, args.connections)
            samples, counts = uvloop.run(drive(load, gateway, rate, args.minutes))
            setup = [
                f"`gateway serve` on Redis, pinned to CPU {proxy_cpu}; load generator "
                f"(Python, uvloop), {upstream.name} and Redis on CPU {load_cpu}",
                f"target {rate:,.0f} requests/s = {rate / capacity:.0%} of the POST-on-Redis "
                f"capacity {capacity:,.0f} req/s ({source}); {args.connections} keep-alive "
                "connections",
                f"{args.visitors:,} visitors, each from its own /24 (X-Forwarded-For through a "
                "trusted proxy) with one of 50 User-Agents",
                "mix per operation: "
                + ", ".join(f"{k} {v}%" for k, v in MIX.items())
                + " (burst: 8 sends on one token; drip: a slow stream abandoned after its "
                "first event; reuse: a token replayed from another address, 403 then revoked)",
                "policies: the shipped set, limits raised out of reach except "
                + ", ".join(sorted(KEPT_LIMITS))
                + "; binding, revocation and the penalty box as shipped",
                "p99: per exchange, from the request's first byte written to the answer's "
                "last byte read (abandoned drips not counted); skipped: operations not "
                f"started because {2 * args.connections} were already in flight",
            ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not samples:
        say("soak: no complete minute")
        return 1
    verdict = judge(samples, args.max_growth)
    text = markdown(samples, verdict, setup, describe({"upstream": upstream.name}), counts)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak-latest.md").write_text(text)
    say("\n" + text)
    say(f"written to {args.out / 'soak-latest.md'}")
    return 1 if verdict.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
