"""The proof-mode scenario: ``POST`` a message with a token bound to a key (``cnf.jkt``)
and a fresh DPoP proof (ES256) on every request, on the gateway with Redis, warm, beside
the bare proxy forwarding the same requests.

A proof passes once (its key and ``jti`` are remembered for the proof window), so each run
gets proofs of its own, signed just before it and more than it can send: every measured
request carries a proof never seen. The gateway's ``gateway_dpop_proofs_refused_total``
says whether any was refused.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from bench.load import LoadGenerator, LoadResult, Request
from bench.probes import SEND_PATH
from bench.renewal import counter_by_label, median_run
from bench.stack import Target
from gateway.core.dpop import thumbprint, token_hash

NAME = "send_dpop"
TITLE = "POST a message, token bound to a key (a DPoP proof per request)"
JSON = "Content-Type: application/json"
#: the target: >= this share of the bare proxy's throughput (issue 17)
TARGET_RATIO = 0.45


class BenchKey:
    """A client's ES256 key and the proofs it signs."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.jwk = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        self.jkt = thumbprint(self.jwk)

    def proofs(self, n: int, method: str, url: str, token: str | None = None) -> list[str]:
        claims: dict[str, Any] = {"htm": method, "htu": url, "iat": int(time.time())}
        if token is not None:
            claims["ath"] = token_hash(token)
        headers = {"typ": "dpop+jwt", "jwk": self.jwk}
        return [
            jwt.encode({**claims, "jti": secrets.token_urlsafe(12)}, self.private, "ES256", headers)
            for _ in range(n)
        ]


@dataclass(frozen=True)
class ProofRun:
    bare: LoadResult
    gateway: LoadResult
    #: proofs the gateway refused during the measured rounds, by reason
    refusals: dict[str, float]


def requests(key: BenchKey, tokens: list[str], url: str, count: int) -> list[Request]:
    """``count`` sends spread over ``tokens``, each with a proof of its own."""
    out = []
    per_token = -(-count // len(tokens))
    for token in tokens:
        body = orjson.dumps({"client_token": token, "message": "hello"}).decode()
        for proof in key.proofs(per_token, "POST", url + SEND_PATH, token):
            out.append(Request("POST", SEND_PATH, body, (JSON, f"DPoP: {proof}")))
    return out[:count]


def refused(admin_port: int) -> dict[str, float]:
    """``gateway_dpop_proofs_refused_total`` by reason."""
    return counter_by_label(admin_port, "gateway_dpop_proofs_refused_total", "reason")


def measure(
    generator: LoadGenerator,
    bare: Target,
    gateway: Target,
    mint_bound: Callable[[str, int], list[str]],
    work: Path,
    *,
    warmup: int,
    seconds: int,
    rounds: int,
    per_run: int,
) -> ProofRun:
    """Rounds interleave the two targets; each gateway run sends ``per_run`` requests'
    worth of fresh proofs at most, for tokens bound to one key."""
    key = BenchKey()
    tokens = mint_bound(key.jkt, 200)
    bare_load = requests(key, tokens, bare.url, 2000)  # the bare proxy checks nothing
    generator.run(bare.port, bare_load, warmup, work)
    generator.run(gateway.port, requests(key, tokens, gateway.url, per_run), warmup, work)
    time.sleep(0.3)  # the warm-up's last requests are answered
    admin = gateway.admin_port or 0
    before = refused(admin)
    bare_runs, gateway_runs = [], []
    for _ in range(max(rounds, 1)):
        bare_runs.append(generator.run(bare.port, bare_load, seconds, work))
        load = requests(key, tokens, gateway.url, per_run)  # signed before the run
        gateway_runs.append(generator.run(gateway.port, load, seconds, work))
    time.sleep(0.3)
    after = refused(admin)
    counted = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return ProofRun(
        bare=median_run(bare_runs),
        gateway=median_run(gateway_runs),
        refusals={reason: n for reason, n in counted.items() if n},
    )


def targets(run: ProofRun) -> list[tuple[str, str, bool]]:
    """(target, figure, held) lines for the report."""
    ratio = run.gateway.rps / run.bare.rps if run.bare.rps else 0.0
    refusals = ", ".join(f"{n:,.0f} {reason}" for reason, n in sorted(run.refusals.items()))
    return [
        (
            f"POST in proof mode (DPoP, ES256) on Redis >= {TARGET_RATIO:.0%} of the bare proxy",
            f"{run.gateway.rps:,.0f} / {run.bare.rps:,.0f} req/s = {ratio:.0%} "
            f"(proofs refused: {refusals or 'none'})",
            ratio >= TARGET_RATIO and not run.refusals,
        )
    ]
