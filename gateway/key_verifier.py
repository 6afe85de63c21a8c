"""Turning a presented agent key into its record, cheaply for the good and the bad.

Order of refusal, cheapest first: malformed or bad checksum (no lookup), unknown or
revoked key id (no hashing), then argon2id verification off the event loop, skipped when
the same key verified recently (see :class:`gateway.core.key_hash.VerifiedKeyCache`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher

from gateway.core import agent_keys, key_hash
from gateway.keystore.base import KeyRecord, KeyStore
from gateway.observability.metrics import Metrics


class KeyRejected(Exception):
    """The key is malformed, unknown, revoked or wrong; ``reason`` is for logs only."""

    def __init__(self, reason: str, key_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id


class KeyVerifier:
    def __init__(
        self,
        store: KeyStore,
        cache: key_hash.VerifiedKeyCache,
        *,
        hasher: PasswordHasher | None = None,
        workers: int = 2,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics if metrics is not None else Metrics()
        self.cache = cache
        self._hasher = hasher or PasswordHasher()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._clock = clock
        #: argon2 verifications run (cache misses), for metrics and tests
        self.hash_verifications = 0

    @staticmethod
    def key_id_of(presented: str) -> str | None:
        parsed = agent_keys.parse(presented)
        return parsed.key_id if parsed else None

    async def verify(self, presented: str) -> KeyRecord:
        """The active record of ``presented``, or :class:`KeyRejected`; every outcome is
        counted in ``gateway_key_verifications_total``."""
        try:
            record, result = await self._verify(presented)
        except KeyRejected as exc:
            self.metrics.key_verification(exc.reason)
            raise
        self.metrics.key_verification(result)
        return record

    async def _verify(self, presented: str) -> tuple[KeyRecord, str]:
        parsed = agent_keys.parse(presented)
        if parsed is None:
            raise KeyRejected("malformed")
        record = self.store.lookup(parsed.key_id)
        if record is None:
            raise KeyRejected("unknown", parsed.key_id)
        if not record.active:
            raise KeyRejected("revoked", parsed.key_id)
        if self.cache.hit(parsed.key, parsed.key_id, record.hash, self._clock()):
            return record, "cache_hit"
        loop = asyncio.get_running_loop()
        self.hash_verifications += 1
        ok = await loop.run_in_executor(
            self._executor, key_hash.verify, self._hasher, record.hash, parsed.key
        )
        if not ok:
            raise KeyRejected("wrong_secret", parsed.key_id)
        self.cache.remember(parsed.key, parsed.key_id, record.hash, self._clock())
        return record, "verified"

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
