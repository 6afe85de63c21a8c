"""Creating agent keys: shared by the command line and the tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from gateway.config import Config
from gateway.core import agent_keys
from gateway.core.key_hash import make_hasher
from gateway.core.origins import OriginError, parse_origin
from gateway.keystore.base import KeyRecord, utcnow
from gateway.keystore.factory import open_keystore


class KeySpecError(ValueError):
    """The requested key is not acceptable for this configuration."""


def normalise_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """Each origin as browsers send it (see :func:`gateway.core.origins.parse_origin`),
    without duplicates; the first one the gateway could never match is refused."""
    out: list[str] = []
    for origin in origins:
        try:
            out.append(parse_origin(origin))
        except OriginError as exc:
            raise KeySpecError(f"origin {origin!r}: {exc}") from None
    return tuple(dict.fromkeys(out))


async def create_key(
    config: Config,
    models: Iterable[str],
    origins: Iterable[str] = (),
    label: str = "",
    *,
    require_proof: bool = False,
) -> tuple[str, KeyRecord]:
    """Generate a key, store its argon2id hash, return the key (shown once) and record."""
    wanted = tuple(dict.fromkeys(models))
    if not wanted:
        raise KeySpecError("a key needs at least one model")
    unknown = [m for m in wanted if m not in config.models]
    if unknown:
        known = ", ".join(sorted(config.models))
        raise KeySpecError(f"unknown model {unknown[0]!r} (the configuration knows: {known})")
    argon = config.keys.argon2
    hasher = make_hasher(argon.time_cost, argon.memory_kib, argon.parallelism)
    key = agent_keys.generate()
    record = KeyRecord(
        key_id=key.key_id,
        hash=await asyncio.to_thread(hasher.hash, key.key),
        models=wanted,
        origins=normalise_origins(origins),
        label=label,
        require_proof=require_proof,
        created_at=utcnow(),
    )
    store = open_keystore(config)
    try:
        await store.create(record)
    finally:
        await store.close()
    return key.key, record
