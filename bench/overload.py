"""The overload scenario: the gateway on Redis offered 0.5x to 4x its measured capacity.

The capacity is measured first, in the same run, on the same gateway: a closed-loop run
of the POST scenario (wrk, or the Python generator). Then :mod:`bench.openload` offers
POSTs at a constant rate, 0.5x, 1x, 2x and 4x of it, from the load CPU, whether or not
earlier requests were answered. Past its capacity the gateway's CPU is the bottleneck, and
its load shedding (the ``overload`` config section, shipped defaults) decides what it
admits; the report says what was admitted, what was shed and how fast, and how fast
``/readyz`` answered on the admin port meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import LoadGenerator, Request
from bench.openload import LevelSummary
from bench.processes import pinned
from bench.stack import Target

NAME = "overload"
LEVELS = (0.5, 1.0, 2.0, 4.0)
#: a client's patience: an answer later than this is a client timeout
CLIENT_TIMEOUT_S = 3.0
SETTLE_S, LEVEL_S = 1.0, 5.0
#: keep-alive connections opened before the first level (as a balancer's pool), and the
#: most the generator opens (beyond the first ones: to replace those closed)
PREWARM, MAX_CONNECTIONS = 2000, 2500
SHED = "gateway_requests_shed_total"
#: connections the gateway closed at its head deadline (nothing or part of a head sent)
HEAD_TIMEOUTS = 'gateway_connections_timed_out_total{phase="request_head"}'


@dataclass(frozen=True)
class Level(LevelSummary):
    """One offered load: what :class:`bench.openload.LevelSummary` reported, with the
    gateway's side of it."""

    #: the offered rate as a multiple of the measured capacity
    multiple: float = 1.0
    #: the gateway's shed counter by reason over the level (its metrics)
    shed_reasons: dict[str, int] = field(default_factory=dict)
    #: ``gateway_overload_limit`` at the end of the level
    limit: float | None = None
    #: connections the gateway closed at its head deadline during the level
    head_timeouts: int = 0
    #: the gateway's CPU time over the level (settling and draining included), and the
    #: wall time it was measured over
    cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def admitted_rps(self) -> float:
        return self.admitted / self.seconds if self.seconds else 0.0

    @property
    def shed_rps(self) -> float:
        return self.shed / self.seconds if self.seconds else 0.0

    @property
    def busy(self) -> float:
        """The share of one CPU the gateway used over the level."""
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def cpu_us_per_answer(self) -> float:
        """The gateway's CPU per answer of the measured window (by proportion of time)."""
        answers = self.admitted + self.shed + sum(self.other.values())
        if not answers or not self.wall_s:
            return 0.0
        return self.cpu_s * (self.seconds / self.wall_s) / answers * 1e6


@dataclass
class Overload:
    capacity_rps: float
    capacity_p99_ms: float
    levels: list[Level] = field(default_factory=list)
    #: the machine's 1-minute load average before and after the levels (others' work
    #: shows there)
    load_average: tuple[float, float] = (0.0, 0.0)
    #: the gateway's store, in words
    store: str = "Redis"

    def at(self, multiple: float) -> Level | None:
        return next((lv for lv in self.levels if lv.multiple == multiple), None)


def scrape(admin_port: int) -> dict[str, float]:
    """The gateway's metrics, ``name{labels}`` to value."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shed_by_reason(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """The shed counter's increase by reason, ``{"queue_full": n, ...}`` (non-zero only)."""
    out = {}
    for series, value in after.items():
        if series.startswith(SHED + "{"):
            reason = series.split('reason="', 1)[1].split('"', 1)[0]
            grown = int(value - before.get(series, 0.0))
            if grown:
                out[reason] = grown
    return out


def measure(
    generator: LoadGenerator,
    gateway: Target,
    requests: list[Request],
    work: Path,
    *,
    warmup: int,
    seconds: int,
    cpu: int | None,
    say: object = print,
    store: str = "Redis",
) -> Overload:
    assert gateway.admin_port is not None
    assert gateway.proc is not None
    pid = gateway.proc.pid
    generator.run(gateway.port, requests, warmup, work)
    closed = generator.run(gateway.port, requests, seconds, work)
    if closed.non_2xx or closed.errors:
        raise RuntimeError(f"the capacity run failed: {closed}")
    result = Overload(closed.rps, closed.p99_ms, store=store)
    load_before = os.getloadavg()[0]
    say(  # type: ignore[operator]
        f"  overload: capacity {closed.rps:,.0f} req/s (closed loop, {generator.kind}, "
        f"p99 {closed.p99_ms:.2f} ms); offering {', '.join(f'{m:g}x' for m in LEVELS)}"
    )
    data = work / "overload-requests.txt"
    data.write_text("\n".join(r.line() for r in requests) + "\n")
    spec = {
        "rates": [closed.rps * m for m in LEVELS],
        "settle": SETTLE_S,
        "seconds": LEVEL_S,
        "timeout": CLIENT_TIMEOUT_S,
        "max_connections": MAX_CONNECTIONS,
        "prewarm": PREWARM,
    }
    argv = [sys.executable, "-m", "bench.openload", str(gateway.port), str(gateway.admin_port),
            str(data), json.dumps(spec)]  # fmt: skip
    budget = len(LEVELS) * (SETTLE_S + LEVEL_S + CLIENT_TIMEOUT_S + 5) + 30
    with subprocess.Popen(pinned(argv, cpu), stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        before = scrape(gateway.admin_port)
        used, wall = cpu_seconds(pid), time.monotonic()
        for multiple in LEVELS:
            line = proc.stdout.readline()
            if not line.startswith("BENCH_LEVEL "):
                proc.kill()
                raise RuntimeError(f"bench.openload gave no level summary: {line!r}")
            after = scrape(gateway.admin_port)
            cpu_after, wall_after = cpu_seconds(pid), time.monotonic()
            raw = json.loads(line.removeprefix("BENCH_LEVEL "))
            level = Level(
                multiple=multiple,
                shed_reasons=shed_by_reason(before, after),
                limit=after.get("gateway_overload_limit"),
                head_timeouts=int(after.get(HEAD_TIMEOUTS, 0.0) - before.get(HEAD_TIMEOUTS, 0.0)),
                cpu_s=cpu_after - used,
                wall_s=wall_after - wall,
                **raw,
            )
            before, used, wall = after, cpu_after, wall_after
            result.levels.append(level)
            say(f"  {row(level)}")  # type: ignore[operator]
        proc.wait(timeout=budget)
    result.load_average = (load_before, os.getloadavg()[0])
    return result


def row(lv: Level) -> str:
    return (
        f"{lv.multiple:g}x {lv.rate:,.0f}/s: gateway CPU {lv.busy:.0%}; admitted "
        f"{lv.admitted_rps:,.0f}/s p50 {lv.admitted_p50_ms:.1f} p99 {lv.admitted_p99_ms:.1f} "
        f"ms; shed {lv.shed_rps:,.0f}/s "
        f"p99 {lv.shed_p99_ms:.1f} ms; timeouts {lv.timeouts}; errors {lv.errors}; readyz p99 "
        f"{lv.readyz_p99_ms:.1f} ms"
    )


def table(run: Overload) -> list[str]:
    """The per-level markdown table."""
    lines = [
        "| offered | admitted req/s | shed req/s | admitted p50 ms | admitted p99 ms "
        "| shed p99 ms | client timeouts | other answers | /readyz p99 ms (max) "
        "| shed by reason | limit after | gateway CPU (µs per answer) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for lv in run.levels:
        other = ", ".join(f"{k}: {v}" for k, v in lv.other.items())
        if lv.errors:
            other = (other + ", " if other else "") + f"broken: {lv.errors}"
        if lv.unsent:
            other = (other + ", " if other else "") + f"never sent: {lv.unsent:,}"
        if lv.head_timeouts:
            other = (
                other + ", " if other else ""
            ) + f"closed idle by the gateway: {lv.head_timeouts:,}"
        reasons = ", ".join(f"{k}: {v:,}" for k, v in sorted(lv.shed_reasons.items()))
        failed = f", {lv.readyz_failed} failed" if lv.readyz_failed else ""
        readyz = (
            f"{lv.readyz_p99_ms:.1f} ({lv.readyz_max_ms:.1f}{failed})"
            if lv.readyz_failed < lv.readyz_probes
            else f"none of {lv.readyz_probes} in 1 s"
        )
        lines.append(
            f"| {lv.multiple:g}x = {lv.rate:,.0f}/s | {lv.admitted_rps:,.0f} | "
            f"{lv.shed_rps:,.0f} | {lv.admitted_p50_ms:.2f} | {lv.admitted_p99_ms:.2f} | "
            + (f"{lv.shed_p99_ms:.2f}" if lv.shed else "-")
            + f" | {lv.timeouts} | {other or '-'} | {readyz} | {reasons or '-'} | "
            + (f"{lv.limit:,.0f}" if lv.limit is not None else "n/a")
            + f" | {lv.busy:.0%} ({lv.cpu_us_per_answer:.0f}) |"
        )
    return lines


def notes(run: Overload) -> list[str]:
    """How the load was offered, and how on time the generator was."""
    late = ", ".join(
        f"{lv.multiple:g}x p99 {lv.late_p99_ms:.1f} ms (max {lv.late_max_ms:.0f})"
        for lv in run.levels
    )
    conns = ", ".join(f"{lv.multiple:g}x {lv.connections:,}" for lv in run.levels)
    gen = ", ".join(
        f"{lv.multiple:g}x {lv.generator_cpu_s / lv.generator_wall_s:.0%}"
        for lv in run.levels
        if lv.generator_wall_s
    )
    return [
        f"capacity: {run.capacity_rps:,.0f} req/s, the closed-loop POST rate of this gateway "
        f"measured just before (p99 {run.capacity_p99_ms:.2f} ms); each level offers a "
        "multiple of it",
        f"each level: {SETTLE_S:g} s to settle (not counted), then {LEVEL_S:g} s whose "
        f"requests are counted, however late their answers; POSTs on {run.store} (the "
        "send scenario's requests), overload section at its shipped defaults",
        "open loop (bench/openload.py, Python on uvloop, on the load CPU): each request is "
        f"sent when due on one of {PREWARM:,} keep-alive connections opened beforehand (a "
        f"new one when all are busy, at most {MAX_CONNECTIONS:,}; past that it waits "
        "client-side, and is 'never sent' if no connection comes free before the level's "
        "end), whatever is still unanswered; latency from the time it was due; client "
        f"timeout {CLIENT_TIMEOUT_S:g} s after sending",
        "/readyz: a new connection to the admin port every 100 ms, 1 s timeout",
        f"generator lateness (sent after due): {late}; connections open at most: {conns}",
        f"the generator's own CPU (one CPU = 100%; it shares its CPU with nginx and Redis): "
        f"{gen}; gateway CPU: its process's CPU time over the level (settling and "
        "draining included), and per answer of the counted window",
        f"load average (1 min) of the machine before and after the levels: "
        f"{run.load_average[0]:.2f}, {run.load_average[1]:.2f} (2 CPUs; above 2, other work "
        "shared the CPUs)",
    ]


def targets(run: Overload) -> list[tuple[str, str, bool | None]]:
    """(target, measured, holds) for the overload targets, ratios in the same run."""
    out: list[tuple[str, str, bool | None]] = []
    half, one, two = run.at(0.5), run.at(1.0), run.at(2.0)
    if one and two:
        ratio = two.admitted_rps / one.admitted_rps if one.admitted_rps else 0.0
        out.append(
            ("overload: admitted at 2x offered >= 90% of admitted at 1x",
             f"{two.admitted_rps:,.0f} / {one.admitted_rps:,.0f} req/s = {ratio:.0%} (of the "
             f"closed-loop capacity {run.capacity_rps:,.0f}: "
             f"{two.admitted_rps / run.capacity_rps if run.capacity_rps else 0:.0%})",
             ratio >= 0.90)
        )  # fmt: skip
    if half and two:
        ratio = two.admitted_p99_ms / half.admitted_p99_ms if half.admitted_p99_ms else 0.0
        out.append(
            ("overload: admitted p99 at 2x <= 3x the p99 at 0.5x",
             f"{two.admitted_p99_ms:.2f} / {half.admitted_p99_ms:.2f} ms = {ratio:.1f}x",
             bool(half.admitted_p99_ms) and ratio <= 3.0)
        )  # fmt: skip
    shedding = [lv for lv in run.levels if lv.shed]
    if shedding:
        worst = max(shedding, key=lambda lv: lv.shed_p99_ms)
        each = ", ".join(f"{lv.shed_p99_ms:.2f} ms at {lv.multiple:g}x" for lv in shedding)
        out.append(
            ("overload: shed answers p99 <= 5 ms", each, worst.shed_p99_ms <= 5.0)
        )  # fmt: skip
    else:
        out.append(("overload: shed answers p99 <= 5 ms", "nothing was shed", None))
    if run.levels:
        timeouts = sum(lv.timeouts + lv.unsent for lv in run.levels)
        each = ", ".join(
            f"{lv.timeouts} at {lv.multiple:g}x"
            + (f" (and {lv.unsent:,} never sent)" if lv.unsent else "")
            for lv in run.levels
        )
        out.append(
            (f"overload: 0 client timeouts ({CLIENT_TIMEOUT_S:g} s)", each, timeouts == 0)
        )  # fmt: skip
        worst = max(run.levels, key=lambda lv: (lv.readyz_failed, lv.readyz_p99_ms))
        each = ", ".join(
            (
                f"{lv.readyz_p99_ms:.1f} ms at {lv.multiple:g}x"
                + (f" ({lv.readyz_failed} failed)" if lv.readyz_failed else "")
                if lv.readyz_failed < lv.readyz_probes
                else f"no answer within 1 s at {lv.multiple:g}x"
            )
            for lv in run.levels
        )
        out.append(
            ("overload: /readyz p99 <= 50 ms", each,
             worst.readyz_p99_ms <= 50.0 and not worst.readyz_failed)
        )  # fmt: skip
    return out
