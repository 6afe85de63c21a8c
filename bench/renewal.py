"""The renewal scenario: ``POST .../token/refresh`` on the gateway with Redis, warm, beside
the bare proxy forwarding the same requests.

A renewal retires the token it presents, so a token renewed twice is no longer a fresh
renewal: within the rotation overlap (10 s) the second one gets the successor the first
made (``repeated``), after it one is reuse (403, and the conversation is revoked). Each run
(the warm-up and every measured round) therefore gets tokens of its own, more than the
run can use, so every measured request is a first renewal that rotates its family; the
gateway's ``gateway_token_renewals_total`` says how many rotated and how many repeated,
and Redis's command statistics how many script calls each renewal cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import orjson

from bench.load import LoadGenerator, LoadResult, Request
from bench.probes import commandstats
from bench.stack import Target

NAME = "renewal"
TITLE = "renew a token (rotation, Redis, warm)"
REFRESH_PATH = "/v1/chat/conversation/public/token/refresh"
JSON = "Content-Type: application/json"
#: the target (>= this share of the bare proxy's throughput), as token creation's
TARGET_RATIO = 0.50


@dataclass(frozen=True)
class RenewalRun:
    """The median runs and what the gateway counted over the measured rounds."""

    bare: LoadResult
    gateway: LoadResult
    #: renewals that rotated their family / repeated one within the overlap
    renewed: float
    repeated: float
    #: refused renewals by outcome (problem code)
    refusals: dict[str, float]
    evalsha_per_renewal: float

    @property
    def refused(self) -> float:
        return sum(self.refusals.values())


def requests(tokens: list[str]) -> list[Request]:
    return [
        Request("POST", REFRESH_PATH, orjson.dumps({"client_token": token}).decode(), (JSON,))
        for token in tokens
    ]


def renewals(admin_port: int) -> dict[str, float]:
    """``gateway_token_renewals_total`` by outcome."""
    return counter_by_label(admin_port, "gateway_token_renewals_total", "outcome")


def counter_by_label(admin_port: int, name: str, label: str) -> dict[str, float]:
    """The gateway's counter ``name``, by the value of its one ``label``."""
    with urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            value = line.split(f'{label}="', 1)[1].split('"', 1)[0]
            out[value] = float(line.rsplit(" ", 1)[1])
    return out


def measure(
    generator: LoadGenerator,
    bare: Target,
    gateway: Target,
    mint: Callable[[int], list[str]],
    work: Path,
    *,
    warmup: int,
    seconds: int,
    rounds: int,
    per_run: int,
) -> RenewalRun:
    """Rounds interleave the two targets; each gateway run renews ``per_run`` new tokens
    at most (the bare proxy is sent the same kind of requests)."""
    bare_load = requests(mint(1000))
    generator.run(bare.port, bare_load, warmup, work)
    generator.run(gateway.port, requests(mint(per_run)), warmup, work)
    time.sleep(0.3)  # the warm-up's last requests are answered
    admin, redis_port = gateway.admin_port or 0, gateway.redis_port or 0
    before, calls_before = renewals(admin), commandstats(redis_port).get("evalsha", 0)
    bare_runs, gateway_runs = [], []
    for _ in range(max(rounds, 1)):
        bare_runs.append(generator.run(bare.port, bare_load, seconds, work))
        load = requests(mint(per_run))  # minted before the run, not during it
        gateway_runs.append(generator.run(gateway.port, load, seconds, work))
    time.sleep(0.3)
    after, calls_after = renewals(admin), commandstats(redis_port).get("evalsha", 0)
    counted = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    renewed, repeated = counted.pop("renewed", 0.0), counted.pop("repeated", 0.0)
    return RenewalRun(
        bare=median_run(bare_runs),
        gateway=median_run(gateway_runs),
        renewed=renewed,
        repeated=repeated,
        refusals={code: n for code, n in counted.items() if n},
        evalsha_per_renewal=(calls_after - calls_before) / max(renewed + repeated, 1),
    )


def median_run(runs: list[LoadResult]) -> LoadResult:
    failed = [r for r in runs if r.non_2xx or r.errors]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


def targets(run: RenewalRun) -> list[tuple[str, str, bool]]:
    """(target, figure, held) lines for the report."""
    ratio = run.gateway.rps / run.bare.rps if run.bare.rps else 0.0
    refused = ", ".join(f"{n:,.0f} {code}" for code, n in sorted(run.refusals.items()))
    return [
        (
            f"token renewal, warm, on Redis >= {TARGET_RATIO:.0%} of the bare proxy",
            f"{run.gateway.rps:,.0f} / {run.bare.rps:,.0f} req/s = {ratio:.0%} "
            f"({run.renewed:,.0f} rotations, {run.repeated:,.0f} repeated, "
            f"refused: {refused or 'none'}; {run.evalsha_per_renewal:.2f} EVALSHA per renewal)",
            ratio >= TARGET_RATIO and not run.refused,
        )
    ]
