"""Turning a presented agent key into its record, cheaply for the good and the bad.

Order of refusal, cheapest first: malformed or bad checksum (no lookup), unknown or
revoked key id (no hashing), then argon2id verification off the event loop, skipped when
the same key verified recently (see :class:`gateway.core.key_hash.VerifiedKeyCache`).
A key id missing from the local snapshot is looked up in the key store once
(:meth:`KeyVerifier.resolve`, bounded by the store) before it counts as unknown: it may be
a key created a moment ago whose change has not reached this replica yet.
The verification queue is bounded: past ``max_pending`` waiting verifications, new ones
are refused at once instead of piling up behind a flood. Concurrent requests presenting
the same key (a page opened by many visitors at once, before the cache knows the key)
share one verification instead of running argon2 each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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


class VerifierBusy(Exception):
    """Too many argon2 verifications are already waiting."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A well-formed key with an active record; ``verified`` when the cache vouches."""

    key: agent_keys.ParsedKey
    record: KeyRecord
    verified: bool


class KeyVerifier:
    def __init__(
        self,
        store: KeyStore,
        cache: key_hash.VerifiedKeyCache,
        *,
        hasher: PasswordHasher | None = None,
        workers: int = 2,
        max_pending: int = 64,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics,
    ) -> None:
        self.store = store
        #: every outcome is counted in ``gateway_key_verifications_total``
        self.metrics = metrics
        self.cache = cache
        self._hasher = hasher or PasswordHasher()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._max_pending = max_pending
        self._pending = 0
        #: verifications running, by (HMAC of the key, stored hash): joined, not repeated
        self._running: dict[tuple[bytes, str], asyncio.Future[bool]] = {}
        self._clock = clock
        #: argon2 verifications run (cache misses), for metrics and tests
        self.hash_verifications = 0

    def key_active(self, key_id: str) -> bool:
        record = self.store.lookup(key_id)
        return record is not None and record.active

    def candidate(self, presented: str) -> Candidate:
        """No I/O: format, checksum, record lookup, cache."""
        try:
            return self._candidate(presented)
        except KeyRejected as exc:
            self.metrics.key_verification(exc.reason)
            raise

    def _candidate(self, presented: str) -> Candidate:
        parsed = agent_keys.parse(presented)
        if parsed is None:
            raise KeyRejected("malformed")
        return self._with_record(parsed, self.store.lookup(parsed.key_id))

    def _with_record(self, parsed: agent_keys.ParsedKey, record: KeyRecord | None) -> Candidate:
        if record is None:
            raise KeyRejected("unknown", parsed.key_id)
        if not record.active:
            raise KeyRejected("revoked", parsed.key_id)
        verified = self.cache.hit(parsed.key, parsed.key_id, record.hash, self._clock())
        return Candidate(parsed, record, verified)

    async def resolve(self, presented: str) -> Candidate:
        """:meth:`candidate`, except that a well-formed key whose id the local snapshot
        lacks is looked up in the key store (bounded) before it is refused as unknown."""
        try:
            return self._candidate(presented)
        except KeyRejected as exc:
            if exc.reason != "unknown":
                self.metrics.key_verification(exc.reason)
                raise
        parsed = agent_keys.parse(presented)
        assert parsed is not None  # the id was unknown, so the key was well formed
        try:
            return self._with_record(parsed, await self.find_record(parsed.key_id))
        except KeyRejected as exc:
            self.metrics.key_verification(exc.reason)
            raise

    async def find_record(self, key_id: str) -> KeyRecord | None:
        """The key's record from the snapshot, or read through from the key store."""
        found = await self.store.find(key_id)
        if found.outcome != "snapshot":
            self.metrics.key_lookup(found.outcome)
        return found.record

    def verifying(self, candidate: Candidate) -> bool:
        """Is this key's argon2 verification already running? Then :meth:`confirm` joins
        it and costs nothing more (the caller need not pay for it in advance)."""
        return (self.cache.mac(candidate.key.key), candidate.record.hash) in self._running

    async def confirm(self, candidate: Candidate) -> KeyRecord:
        """argon2id unless the cache already vouched; raises :class:`KeyRejected`."""
        if candidate.verified:
            self.metrics.key_verification("cache_hit")
            return candidate.record
        key, record = candidate.key, candidate.record
        running = (self.cache.mac(key.key), record.hash)
        check = self._running.get(running)
        if check is None:
            check = self._start(key.key, record.hash)
            self._running[running] = check
            check.add_done_callback(lambda _: self._running.pop(running, None))
        ok = await asyncio.shield(check)  # a client that leaves does not cancel it for others
        if not ok:
            self.metrics.key_verification("wrong_secret")
            raise KeyRejected("wrong_secret", key.key_id)
        self.cache.remember(key.key, key.key_id, record.hash, self._clock())
        self.metrics.key_verification("verified")
        return record

    def _start(self, key: str, encoded_hash: str) -> asyncio.Future[bool]:
        """argon2id in the executor; counted as pending until it is done."""
        if self._pending >= self._max_pending:
            raise VerifierBusy
        self.hash_verifications += 1
        self._pending += 1
        check = asyncio.get_running_loop().run_in_executor(
            self._executor, key_hash.verify, self._hasher, encoded_hash, key
        )
        check.add_done_callback(self._done)
        return check

    def _done(self, _: asyncio.Future[bool]) -> None:
        self._pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
