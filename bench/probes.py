"""The measurements that are not throughput: time to first byte of a stream, a cold
argon2id verification, Redis round trips per request and Redis memory per live token."""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass

import orjson
import redis

from bench.client import Connection, http_request, send_all
from gateway.config.settings import StoreSettings
from gateway.core.policy import PARTITION_SEPARATOR
from gateway.core.redis_keys import StateKeys

SEND_PATH = "/v1/chat/conversation/public/message"
TOKEN_PATH = "/v1/chat/conversation/public/message/token/demo"
INTERNAL = "/internal/conversations/c-bench/messages"


def send_body(token: str, stream: bool = False) -> bytes:
    return orjson.dumps({"client_token": token, "message": "hello", "stream": stream})


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)]


# -- streaming: time to first byte ---------------------------------------------------------
@dataclass(frozen=True)
class Ttfb:
    name: str
    kind: str
    p50_ms: float
    p99_ms: float


def ttfb_probe(
    targets: dict[str, tuple[int, str]], tokens: list[str], rounds: int, warmup: int = 30
) -> list[Ttfb]:
    """Sequential streamed POSTs, one connection per target, the targets interleaved so
    drift hits them alike. ``targets``: name -> (port, kind) with kind ``direct``,
    ``gateway``, ``bare`` or ``envoy``. The time is to the first ``data:`` byte."""
    conns = {name: Connection(port) for name, (port, _) in targets.items()}
    times: dict[str, list[float]] = {name: [] for name in targets}
    try:
        for i in range(warmup + rounds):
            token = tokens[i % len(tokens)]
            for name, (port, kind) in targets.items():
                request = _stream_request(kind, port, token)
                status, _, at_data, _ = conns[name].exchange(request, b"data:")
                if status != 200:
                    raise RuntimeError(f"{name}: streamed POST answered {status}")
                if i >= warmup:
                    times[name].append(at_data)
    finally:
        for conn in conns.values():
            conn.close()
    return [
        Ttfb(name, targets[name][1], statistics.median(v) * 1000, quantile(v, 0.99) * 1000)
        for name, v in times.items()
    ]


def _stream_request(kind: str, port: int, token: str, stream: bool = True) -> bytes:
    json_type = "Content-Type: application/json"
    accept = "Accept: text/event-stream" if stream else "Accept: application/json"
    if kind == "direct":
        body = orjson.dumps({"model_id": "demo", "message": "hello", "stream": stream})
        return http_request("POST", INTERNAL, port, body, (json_type, accept))
    headers = [json_type, accept]
    if kind == "envoy":
        headers.append(f"Authorization: Bearer {token}")
    return http_request("POST", SEND_PATH, port, send_body(token, stream), headers)


# -- a cold argon2id verification -----------------------------------------------------------
@dataclass(frozen=True)
class ColdKeys:
    cold_p50_ms: float
    cold_max_ms: float
    warm_p50_ms: float
    count: int


def cold_key_probe(port: int, keys: list[str]) -> ColdKeys:
    """Each key's first token request (argon2id runs) then a second one (cache warm)."""
    conn = Connection(port)
    cold: list[float] = []
    warm: list[float] = []
    try:
        for key in keys:
            request = http_request(
                "GET", TOKEN_PATH, port, headers=[f"Authorization: Bearer {key}"]
            )
            for series in (cold, warm):
                status, _, done, _ = conn.exchange(request)
                if status != 200:
                    raise RuntimeError(f"token request answered {status}")
                series.append(done * 1000)
    finally:
        conn.close()
    return ColdKeys(statistics.median(cold), max(cold), statistics.median(warm), len(keys))


# -- Redis: round trips per admitted request ------------------------------------------------
@dataclass(frozen=True)
class RedisCalls:
    requests: int
    round_trips: float  # commands sent by the gateway per admitted request
    in_script: float  # commands run inside the Lua script per request
    by_command: dict[str, int]


def redis_calls_probe(redis_port: int, gateway_port: int, tokens: list[str]) -> RedisCalls:
    """MONITOR while ``len(tokens)`` admitted POSTs go through the gateway one by one."""
    client = redis.Redis(port=redis_port)
    seen: Counter[str] = Counter()
    lua = 0
    stop = threading.Event()
    ready = threading.Event()

    def watch() -> None:
        nonlocal lua
        with client.monitor() as monitor:  # type: ignore[no-untyped-call]
            ready.set()
            for event in monitor.listen():
                if stop.is_set():  # the gateway's requests are over
                    return
                command = event["command"].split(" ", 1)[0].upper()
                if command == "MONITOR":
                    continue
                if event.get("client_type") == "lua":
                    lua += 1
                else:
                    seen[command] += 1

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.2)
    conn = Connection(gateway_port)
    try:
        for token in tokens:
            request = http_request(
                "POST",
                SEND_PATH,
                gateway_port,
                send_body(token),
                ["Content-Type: application/json"],
            )
            status, _, _, _ = conn.exchange(request)
            if status != 200:
                raise RuntimeError(f"POST answered {status}")
    finally:
        conn.close()
    time.sleep(0.2)
    stop.set()
    redis.Redis(port=redis_port).ping()  # ends the watch
    thread.join(5)
    n = len(tokens)
    return RedisCalls(n, sum(seen.values()) / n, lua / n, dict(seen))


def answered(admin_port: int, route: str) -> float:
    """``gateway_http_requests_total`` for ``route``, every status (a request that the load
    generator abandons at the end of a run was admitted, then counted as 499)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gateway_http_requests_total{") and f'route="{route}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def commandstats(redis_port: int) -> dict[str, int]:
    stats = redis.Redis(port=redis_port).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


# -- Redis: memory per live token -----------------------------------------------------------
@dataclass(frozen=True)
class TokenMemory:
    tokens: int
    used_memory_per_token: float  # INFO used_memory delta / tokens
    token_keys_per_token: float
    token_bytes_per_token: float  # MEMORY USAGE of the token-scoped keys / tokens
    other_keys: int
    layout: dict[str, int]  # key kind -> count


#: the keys of the store the benchmarks' gateways run with (the default prefix)
STATE_KEYS = StateKeys(StoreSettings().prefix)


def _use_once(port: int, tokens: list[str], first_ip: int, per_ip: int) -> None:
    requests = []
    json_type = "Content-Type: application/json"
    for i, token in enumerate(tokens):
        n = first_ip + i // per_ip
        ip = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        requests.append(
            http_request(
                "POST", SEND_PATH, port, send_body(token), [json_type, f"X-Forwarded-For: {ip}"]
            )
        )
    statuses = send_all(port, requests)
    refused = [s for s in statuses if s != 200]
    if refused:
        raise RuntimeError(f"{len(refused)} of {len(statuses)} POSTs refused: {Counter(refused)}")


def memory_probe(
    redis_port: int,
    gateway_port: int,
    tokens: list[tuple[str, str, str]],
    warmup: list[tuple[str, str, str]],
    per_ip: int = 16,
) -> TokenMemory:
    """Use every token once (one POST) through the gateway, each group of ``per_ip``
    tokens from its own client address (``X-Forwarded-For``, the gateway trusts
    loopback), then measure. ``tokens``: (token, jti, conversation id). The ``warmup``
    tokens go first, unmeasured, so that the gateway's connections to Redis (whose
    buffers count in ``used_memory``) are all open before the first reading."""
    client = redis.Redis(port=redis_port)
    _use_once(gateway_port, [t for t, _, _ in warmup], 1 << 20, per_ip)
    time.sleep(0.2)
    before = int(client.info("memory")["used_memory"])
    _use_once(gateway_port, [t for t, _, _ in tokens], 0, per_ip)
    time.sleep(0.2)
    after = int(client.info("memory")["used_memory"])
    ids = {part for _, jti, cid in tokens for part in (jti, cid)}
    warm_ids = {part for _, jti, cid in warmup for part in (jti, cid)}
    token_bytes = token_keys = other = 0
    layout: Counter[str] = Counter()
    for raw in client.scan_iter(count=1000):
        kind, parts = _kind_and_ids(raw.decode())
        scoped = any(part in ids for part in parts)
        if not scoped and any(part in warm_ids for part in parts):
            continue  # the warm-up's
        layout[kind] += 1
        if scoped:
            token_keys += 1
            token_bytes += int(client.memory_usage(raw, samples=0) or 0)
        else:
            other += 1
    n = len(tokens)
    return TokenMemory(
        n, (after - before) / n, token_keys / n, token_bytes / n, other, dict(layout)
    )


def _kind_and_ids(key: str) -> tuple[str, list[str]]:
    """A state key's kind (``rl:<policy>`` for a limit) and the values that may name a
    token or a conversation (a jti, a limit's partition values); any other key (the key
    store's, when it shares the Redis) is of kind ``other``."""
    parsed = STATE_KEYS.parse(key)
    if parsed is None:
        return "other", []
    if parsed.kind != "rl":
        return parsed.kind, [parsed.name]
    policy, _, partition = parsed.name.partition(":")
    return f"rl:{policy}", partition.split(PARTITION_SEPARATOR)


# -- the checks are on -----------------------------------------------------------------------
def refuses_forgery(port: int, kind: str, token: str) -> tuple[bool, str]:
    """A valid request is admitted and the same request with a forged signature is
    refused: proof that each target really checks what the table says it does."""
    head, body, signature = token.split(".")
    forged = f"{head}.{body}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    statuses = []
    for candidate in (token, forged):
        request = _stream_request(kind, port, candidate, stream=False)
        conn = Connection(port)
        try:
            status, _, _, _ = conn.exchange(request)
        finally:
            conn.close()
        statuses.append(status)
    ok = statuses[0] == 200 and statuses[1] in (401, 403)
    return ok, f"valid token {statuses[0]}, forged signature {statuses[1]}"


def warm_key(port: int, key: str) -> None:
    """One token request: the key's argon2id verification is then cached (the token
    scenario measures the warm path; the cold one is :func:`cold_key_probe`)."""
    conn = Connection(port)
    try:
        auth = [f"Authorization: Bearer {key}"]
        status, _, _, _ = conn.exchange(http_request("GET", TOKEN_PATH, port, headers=auth))
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"token request answered {status}")
