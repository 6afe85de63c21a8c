"""The gateway as the benchmark runs it: ``gateway serve`` with a config in a temp dir.

Full checks on every request: signed client tokens (HS256, pinned algorithm, issuer,
audience, expiry), binding to the client's fingerprint at first use, the penalty box and
every rate limit of the shipped default policy set. For the throughput scenarios the
limits' rates are raised (same policies, same partitions, so the same state is read and
written per request) so that no request of the run is limited; the memory scenario uses
the shipped policies unchanged.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.config import Config, load_config
from gateway.core.signing_keys import parse_keyset
from gateway.core.token_codec import TokenCodec
from gateway.keystore.admin import create_key

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POLICIES = ROOT / "policies" / "default.yaml"
#: what the throughput runs use instead of each policy's limit: never reached in a run
RAISED_LIMIT = {"rate": 1000, "per": "1s", "burst": 1_000_000}
ISSUER, AUDIENCE, MODEL = "agent-gateway", "public-agent-api", "demo"


@dataclass(frozen=True)
class Signing:
    kid: str
    secret: str

    @classmethod
    def new(cls) -> Signing:
        return cls("bench", secrets.token_hex(32))

    @property
    def env(self) -> dict[str, str]:
        return {"GATEWAY_SIGNING_KEYS": f"{self.kid}:{self.secret}"}


def raised_policies(directory: Path) -> Path:
    """The shipped default policy set with every limit raised out of reach."""
    data = yaml.safe_load(DEFAULT_POLICIES.read_text())
    for policy in data["policies"]:
        policy["limit"] = dict(RAISED_LIMIT)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return directory


def shipped_policies(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "default.yaml").write_text(DEFAULT_POLICIES.read_text())
    return directory


def write_config(
    work: Path,
    name: str,
    *,
    port: int,
    admin_port: int,
    upstream: str,
    keys_path: Path,
    policies: Path,
    redis_url: str | None = None,
    trusted_proxies: list[str] | None = None,
    upstream_client: str = "builtin",
    models: list[str] | None = None,
    store_settings: dict[str, Any] | None = None,
) -> Path:
    store = {"type": "redis", "url": redis_url} if redis_url else {"type": "memory"}
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "trusted_proxies": trusted_proxies or []},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "store": {**store, **(store_settings or {})},
        "keys": {"type": "file", "path": str(keys_path)},
        "tokens": {"ttl_seconds": 900, "issuer": ISSUER, "audience": AUDIENCE},
        "policies": {"path": str(policies), "watch": True},
        "models": {model: {"description": "bench"} for model in models or [MODEL]},
        "upstream": {"url": upstream, "client": upstream_client},
        "logging": {"level": "info", "format": "json"},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass(frozen=True)
class AgentKey:
    key: str
    key_id: str


def create_keys(config_path: Path, count: int, models: list[str] | None = None) -> list[AgentKey]:
    """``count`` agent keys hashed with the default argon2id cost, in the file store."""
    config: Config = load_config(config_path)

    async def make() -> list[AgentKey]:
        out = []
        for _ in range(count):
            key, record = await create_key(config, models or [MODEL])
            out.append(AgentKey(key, record.key_id))
        return out

    return asyncio.run(make())


@dataclass(frozen=True)
class Minted:
    token: str
    jti: str
    conversation_id: str


def mint_tokens(
    signing: Signing,
    key_id: str,
    count: int,
    model: str = MODEL,
    shards: int = 0,
    jkt: str | None = None,
) -> list[Minted]:
    """Client tokens exactly as the token route issues them (same codec, same claims;
    ``shards``: as a gateway with ``store.sharding: key`` writes them; ``jkt``: bound to
    that key, as when the token request carries a DPoP proof)."""
    codec = TokenCodec(
        parse_keyset(f"{signing.kid}:{signing.secret}", "bench"),
        issuer=ISSUER,
        audience=AUDIENCE,
        ttl_seconds=900,
    )
    now = time.time()
    out = []
    for _ in range(count):
        issued = codec.issue(key_id=key_id, model_id=model, now=now, shards=shards, jkt=jkt)
        out.append(Minted(issued.token, issued.claims.jti, issued.claims.conversation_id))
    return out
