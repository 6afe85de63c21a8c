"""An open-loop (constant-rate) load generator for the overload scenario.

Request ``i`` of a level is due at ``start + i / rate`` and is sent then, whether or not
the earlier ones were answered: on an idle keep-alive connection, or on a new one when
every open connection is busy (up to ``max_connections``; past it the request waits
client-side and its lateness is reported). Latency is measured from the time the request
was *due*, so a late send counts against the answer, not for it (no coordinated
omission). A request not answered within ``timeout`` seconds of being sent is a client
timeout: its connection is closed. Every 100 ms a probe opens a new connection to the
admin port and asks ``/readyz``, as a kubelet does (1 s timeout).

Each level runs ``settle`` seconds (not counted: the adaptive limit moves) then
``seconds`` measured; the answers to the requests due in the measured window are counted,
however late they come. After a level, the generator waits for what is in flight.

``python -m bench.openload PORT ADMIN_PORT REQUESTS_FILE SPEC_JSON`` where the spec is
``{"rates": [...], "settle": s, "seconds": s, "timeout": s, "max_connections": n,
"prewarm": n}``; prints one ``BENCH_LEVEL {json}`` line per level.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import itertools
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import cast

import uvloop

from bench.pyload import build

CODE = re.compile(rb'"code":\s*"([A-Za-z0-9_.-]+)"')
#: the probe's period and timeout (a kubelet's default timeout is 1 s)
PROBE_PERIOD, PROBE_TIMEOUT = 0.1, 1.0


def due(elapsed: float, rate: float) -> int:
    """How many requests are due ``elapsed`` seconds into a level at ``rate`` a second:
    request ``i`` is due at ``i / rate``, the first at once."""
    if elapsed < 0 or rate <= 0:
        return 0
    return int(elapsed * rate) + 1


def parse_answer(buffer: bytes | bytearray) -> tuple[int, int, bytes] | None:
    """``(status, length of the whole answer, body)`` once ``buffer`` holds a complete
    answer with a ``Content-Length``; ``None`` while it is incomplete. ``ValueError`` for
    what this client does not read (no length: chunked or close-delimited)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    length = None
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length is None:
        raise ValueError(f"an answer without Content-Length: {head[0]!r}")
    total = end + 4 + length
    if len(buffer) < total:
        return None
    return status, total, bytes(buffer[end + 4 : total])


def answer_kind(status: int, body: bytes) -> str:
    """``"503 store_unavailable"``: the status and the problem's code, when it has one."""
    found = CODE.search(body)
    return f"{status} {found.group(1).decode()}" if found else str(status)


def quantile_ms(seconds: list[float], q: float) -> float:
    """The ``q`` quantile of ``seconds``, in milliseconds (0 when empty)."""
    if not seconds:
        return 0.0
    ordered = sorted(seconds)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)] * 1000


@dataclass
class Tally:
    """What the requests due in a level's measured window got."""

    admitted: list[float] = field(default_factory=list)
    shed: list[float] = field(default_factory=list)
    #: the other answers by status and problem code, ``"503 store_unavailable"``
    other: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: int = 0
    timeouts: int = 0
    #: due but never sent: every connection stayed busy until the level was over
    unsent: int = 0
    late: list[float] = field(default_factory=list)
    readyz: list[float] = field(default_factory=list)
    readyz_failed: int = 0

    def answer(self, status: int, body: bytes, latency: float) -> None:
        if 200 <= status < 300:
            self.admitted.append(latency)
        elif status == 503 and b"overloaded" in body:
            self.shed.append(latency)
        else:
            self.other[answer_kind(status, body)] += 1


@dataclass(frozen=True)
class LevelSummary:
    rate: float
    seconds: float
    due: int
    admitted: int
    shed: int
    other: dict[str, int]
    errors: int
    timeouts: int
    unsent: int
    admitted_p50_ms: float
    admitted_p99_ms: float
    shed_p50_ms: float
    shed_p99_ms: float
    late_p99_ms: float
    late_max_ms: float
    readyz_probes: int
    readyz_p50_ms: float
    readyz_p99_ms: float
    readyz_max_ms: float
    readyz_failed: int
    connections: int
    #: this generator's own CPU time over the level (settling and draining included), and
    #: the wall time of the level: how busy the load CPU was with the generator alone
    generator_cpu_s: float = 0.0
    generator_wall_s: float = 0.0


def summarise(rate: float, seconds: float, due_count: int, t: Tally, conns: int) -> LevelSummary:
    return LevelSummary(
        rate=rate,
        seconds=seconds,
        due=due_count,
        admitted=len(t.admitted),
        shed=len(t.shed),
        other=dict(sorted(t.other.items())),
        errors=t.errors,
        timeouts=t.timeouts,
        unsent=t.unsent,
        admitted_p50_ms=quantile_ms(t.admitted, 0.50),
        admitted_p99_ms=quantile_ms(t.admitted, 0.99),
        shed_p50_ms=quantile_ms(t.shed, 0.50),
        shed_p99_ms=quantile_ms(t.shed, 0.99),
        late_p99_ms=quantile_ms(t.late, 0.99),
        late_max_ms=max(t.late, default=0.0) * 1000,
        readyz_probes=len(t.readyz) + t.readyz_failed,
        readyz_p50_ms=quantile_ms(t.readyz, 0.50),
        readyz_p99_ms=quantile_ms(t.readyz, 0.99),
        readyz_max_ms=max(t.readyz, default=0.0) * 1000,
        readyz_failed=t.readyz_failed,
        connections=conns,
    )


class Conn(asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time."""

    def __init__(self, load: OpenLoad) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.due_at = 0.0
        self.sent_at = 0.0
        self.tally: Tally | None = None  # set while busy with a counted request
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, data: bytes, due_at: float, tally: Tally | None) -> None:
        assert self.transport is not None
        self.busy, self.due_at, self.tally = True, due_at, tally
        self.sent_at = time.perf_counter()
        if tally is not None:
            tally.late.append(max(0.0, self.sent_at - due_at))
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            parsed = parse_answer(self.buffer)
        except ValueError:
            self.fail()
            return
        if parsed is None:
            return
        status, total, body = parsed
        del self.buffer[:total]
        if self.tally is not None:
            self.tally.answer(status, body, time.perf_counter() - self.due_at)
        self.busy, self.tally = False, None
        self.load.idle(self)

    def fail(self, timeout: bool = False) -> None:
        if self.busy and self.tally is not None:
            if timeout:
                self.tally.timeouts += 1
            else:
                self.tally.errors += 1
        self.busy, self.tally = False, None
        self.load.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy:
            self.fail()
        else:
            self.load.forget(self)


class OpenLoad:
    def __init__(self, port: int, requests: list[bytes], max_connections: int, timeout: float):
        self.port = port
        self.requests = itertools.cycle(requests)
        self.max_connections = max_connections
        self.timeout = timeout
        self.pool: collections.deque[Conn] = collections.deque()
        self.open: set[Conn] = set()
        self.connecting = 0
        self.backlog: collections.deque[tuple[float, Tally | None]] = collections.deque()
        self.most = 0

    def idle(self, conn: Conn) -> None:
        if self.backlog:
            due_at, tally = self.backlog.popleft()
            conn.send(next(self.requests), due_at, tally)
        else:
            self.pool.append(conn)

    def forget(self, conn: Conn) -> None:
        self.open.discard(conn)
        with contextlib.suppress(ValueError):
            self.pool.remove(conn)

    async def connect(self) -> Conn | None:
        loop = asyncio.get_running_loop()
        self.connecting += 1
        try:
            _, conn = await loop.create_connection(lambda: Conn(self), "127.0.0.1", self.port)
        except OSError:
            return None
        finally:
            self.connecting -= 1
        self.open.add(conn)
        self.most = max(self.most, len(self.open))
        return conn

    async def _send_new(self, due_at: float, tally: Tally | None) -> None:
        conn = await self.connect()
        if conn is None:
            if tally is not None:
                tally.errors += 1
            return
        conn.send(next(self.requests), due_at, tally)

    def send(self, due_at: float, tally: Tally | None) -> None:
        while self.pool:
            # the least recently used, as a balancer spreading over its pool: a
            # connection left unused past the gateway's head deadline (10 s from its
            # start for its first request) is closed by the gateway, and a request sent
            # on it as it closes is lost (the most recently used first left most of the
            # pre-opened connections unused through the first level: broken at 1x)
            conn = self.pool.popleft()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.send(next(self.requests), due_at, tally)
                return
            self.open.discard(conn)
        if len(self.open) + self.connecting < self.max_connections:
            task = asyncio.ensure_future(self._send_new(due_at, tally))
            TASKS.add(task)
            task.add_done_callback(TASKS.discard)
        else:
            self.backlog.append((due_at, tally))

    def expire(self) -> None:
        now = time.perf_counter()
        for conn in [c for c in self.open if c.busy and now - c.sent_at > self.timeout]:
            conn.fail(timeout=True)

    def close(self) -> None:
        for conn in list(self.open):
            if conn.transport is not None:
                conn.transport.abort()
        self.open.clear()
        self.pool.clear()

    def in_flight(self) -> int:
        return sum(1 for c in self.open if c.busy) + len(self.backlog) + self.connecting


TASKS: set[asyncio.Task[None]] = set()


async def probe_readyz(admin_port: int, tally: Tally | None) -> None:
    started = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", admin_port)
            writer.write(
                f"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{admin_port}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            data = await reader.read()
        ok = data.startswith(b"HTTP/1.1 200")
    except (OSError, TimeoutError):
        ok = False
    finally:
        if writer is not None:
            writer.close()
    if tally is None:
        return
    if ok:
        tally.readyz.append(time.perf_counter() - started)
    else:
        tally.readyz_failed += 1


async def level(
    load: OpenLoad, admin_port: int, rate: float, settle: float, seconds: float
) -> LevelSummary:
    tally = Tally()
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    total = int((settle + seconds) * rate)
    first_counted = int(settle * rate)
    load.most = len(load.open)
    start = time.perf_counter() + 0.01
    sent = 0
    next_probe = start + settle
    probes: set[asyncio.Task[None]] = set()
    next_expiry = start
    while sent < total:
        now = time.perf_counter()
        wanted = min(due(now - start, rate), total)
        while sent < wanted:
            load.send(start + sent / rate, tally if sent >= first_counted else None)
            sent += 1
        if now >= next_probe:
            task = asyncio.ensure_future(probe_readyz(admin_port, tally))
            probes.add(task)
            task.add_done_callback(probes.discard)
            next_probe += PROBE_PERIOD
        if now >= next_expiry:
            load.expire()
            next_expiry = now + 0.05
        await asyncio.sleep(0.001)  # uvloop rounds timers to whole ms: 0.5 ms would spin
    deadline = time.perf_counter() + load.timeout + 1.0
    while load.in_flight() and time.perf_counter() < deadline:
        load.expire()
        await asyncio.sleep(0.02)
    load.expire()
    while load.backlog:  # never sent: no connection came free in time
        _, counted = load.backlog.popleft()
        if counted is not None:
            counted.unsent += 1
    if probes:
        await asyncio.wait(probes, timeout=PROBE_TIMEOUT + 0.5)
    summary = summarise(rate, seconds, total - first_counted, tally, load.most)
    return replace(
        summary,
        generator_cpu_s=time.process_time() - cpu_started,
        generator_wall_s=time.perf_counter() - wall_started,
    )


@dataclass(frozen=True)
class Spec:
    """The levels to run (see the module doc)."""

    rates: list[float]
    settle: float
    seconds: float
    timeout: float
    max_connections: int
    prewarm: int


async def run(port: int, admin_port: int, lines: list[str], spec: Spec) -> None:
    requests = [build(line, port) for line in lines]
    load = OpenLoad(port, requests, spec.max_connections, spec.timeout)
    for _ in range(spec.prewarm):
        conn = await load.connect()
        if conn is not None:
            load.pool.append(conn)
    gc.collect()
    gc.freeze()
    gc.disable()  # no collector pauses inside a level; collected between levels
    for rate in spec.rates:
        summary = await level(load, admin_port, rate, spec.settle, spec.seconds)
        print("BENCH_LEVEL " + json.dumps(asdict(summary)), flush=True)
        gc.collect()
        await asyncio.sleep(0.5)
    load.close()


def main() -> None:
    port, admin_port, path, spec = sys.argv[1:5]
    lines = [line for line in Path(path).read_text().splitlines() if line]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(int(port), int(admin_port), lines, Spec(**json.loads(spec))))


if __name__ == "__main__":
    main()
