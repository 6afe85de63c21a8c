"""A key store in Redis, shared by every replica.

Layout (one hash tag, so multi-key operations work on Redis Cluster):
``{prefix}:key:<key id>`` the record as JSON, ``{prefix}:ids`` the set of key ids and
``{prefix}:version`` a counter bumped by every change. Request handlers read the local
snapshot only; it is kept fresh three ways:

- every change (create, revoke) is published on ``{prefix}:changes`` as
  ``{"key_id": ..., "version": n}``; running gateways subscribe, read that one record and
  update their snapshot at once. The subscription is re-established after a Redis
  restart or failover, and each (re)subscription is followed by a check of the version
  counter, so changes published while it was down are not lost;
- the version counter is polled every ``sync_seconds`` (one ``GET``) and the snapshot
  reloaded when it moved: the fallback when a notification is lost;
- a well-formed key id missing from the snapshot is read from Redis once before the key
  is refused (:meth:`RedisKeyStore.find`, bounded by a
  :class:`~gateway.core.miss_budget.MissBudget`): a key that ``gateway keys create`` has
  reported as created is served by every replica, even before its notification arrives.

Snapshot changes are serialised (one lock), and a revoked record is never replaced by an
active one read earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson
import structlog
from pydantic import ValidationError

from gateway.core.agent_keys import KEY_ID_PATTERN
from gateway.core.miss_budget import MissBudget
from gateway.core.origins import invalid_origins
from gateway.core.redis_keys import KeyStoreKeys
from gateway.keystore.base import Found, KeyRecord, KeyStoreError, MissLookups
from gateway.redis_connect import REDIS_FAILURES, AnyRedis

log = structlog.get_logger("gateway.keystore")
#: waits between attempts to subscribe again after the subscription failed
RESUBSCRIBE_MIN_SECONDS = 0.1
RESUBSCRIBE_MAX_SECONDS = 5.0


class RedisKeyStore:
    def __init__(
        self,
        client: AnyRedis,
        *,
        prefix: str,
        sync_seconds: float = 1.0,
        misses: MissBudget | None = None,
    ) -> None:
        self._redis = client
        keys = KeyStoreKeys(prefix)
        self._key = keys.record
        self._ids = keys.ids
        self._version_key = keys.version
        #: the channel announcing each change
        self.channel = keys.changes
        self._sync_seconds = sync_seconds
        self._records: dict[str, KeyRecord] = {}
        self._version: int | None = None
        self._lock = asyncio.Lock()
        self._misses = MissLookups(misses if misses is not None else MissBudget(0))
        self.loaded = False
        #: set while the change subscription is established (for health and tests)
        self.subscribed = asyncio.Event()

    def lookup(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    def snapshot(self) -> Mapping[str, KeyRecord]:
        return self._records

    # -- reading -----------------------------------------------------------------------
    @staticmethod
    def _parse(key_id: str, raw: bytes | str | None) -> KeyRecord | None:
        if raw is None:
            return None
        try:
            record = KeyRecord.model_validate_json(raw)
        except ValidationError as exc:
            log.error("keystore_record_invalid", key_id=key_id, error=str(exc))
            return None
        for origin, reason in invalid_origins(record.origins):
            log.error("keystore_origin_invalid", key_id=key_id, origin=origin, error=reason)
        return record

    async def _load_all(self) -> dict[str, KeyRecord]:
        members = await self._redis.smembers(self._ids)
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        if not ids:
            return {}
        raws = await self._redis.mget([self._key(i) for i in ids])
        records: dict[str, KeyRecord] = {}
        for key_id, raw in zip(ids, raws, strict=True):
            record = self._parse(key_id, raw)
            if record is not None:
                records[key_id] = record
        return records

    async def _read_version(self) -> int | None:
        raw = await self._redis.get(self._version_key)
        return None if raw is None else int(raw)

    async def refresh(self) -> None:
        async with self._lock:
            try:
                version = await self._read_version()
                if self.loaded and version == self._version:
                    return
                records = await self._load_all()
            except REDIS_FAILURES as exc:
                raise KeyStoreError(f"redis key store: {exc}") from None
            if self.loaded:
                log.info("keystore_reloaded", keys=len(records))
            self._records, self._version, self.loaded = records, version, True

    async def _read_one(self, key_id: str) -> KeyRecord | None:
        try:
            raw = await self._redis.get(self._key(key_id))
        except REDIS_FAILURES as exc:
            raise KeyStoreError(f"redis key store: {exc}") from None
        return self._parse(key_id, raw)

    def _put(self, key_id: str, record: KeyRecord | None) -> None:
        """Replace one record of the snapshot (a new mapping, never one changed in place);
        a revoked record stays revoked."""
        current = self._records.get(key_id)
        if current is not None and not current.active and (record is None or record.active):
            return
        if record is None and current is None:
            return
        records = dict(self._records)
        if record is None:
            del records[key_id]
        else:
            records[key_id] = record
        self._records = records

    async def _apply(self, key_id: str, version: int | None) -> None:
        """A published change: read that record alone."""
        async with self._lock:
            record = await self._read_one(key_id)
            self._put(key_id, record)
            if version is not None and self._version is not None and version == self._version + 1:
                self._version = version  # nothing else changed: the poll need not reload

    async def find(self, key_id: str) -> Found:
        return await self._misses.find(key_id, self.lookup, self._fetch_missing)

    async def _fetch_missing(self, key_id: str) -> KeyRecord | None:
        async with self._lock:
            record = self._records.get(key_id)
            if record is None:
                record = await self._read_one(key_id)
                if record is not None:
                    self._put(key_id, record)
                    log.info("keystore_key_read_through", key_id=key_id)
            return record

    # -- staying fresh -----------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        listener = asyncio.create_task(self._listen(stop), name="keystore-changes")
        try:
            await self._poll(stop)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _poll(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._sync_seconds)
            if stop.is_set():
                return
            try:
                await self.refresh()
            except KeyStoreError as exc:
                log.warning("keystore_sync_failed", error=str(exc), kept_keys=len(self._records))
            except Exception:  # never let the sync die: revocations must keep arriving
                log.exception("keystore_sync_failed", kept_keys=len(self._records))

    async def _listen(self, stop: asyncio.Event) -> None:
        """Subscribe to the change channel for as long as the store runs, subscribing again
        (with a growing pause) whenever the connection is lost."""
        pause = RESUBSCRIBE_MIN_SECONDS
        while not stop.is_set():
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None:
                        await self._on_message(message)
                        pause = RESUBSCRIBE_MIN_SECONDS
            except REDIS_FAILURES as exc:
                if self.subscribed.is_set():
                    log.warning("keystore_subscription_lost", error=str(exc))
                elif pause == RESUBSCRIBE_MIN_SECONDS:  # once per series of failed attempts
                    log.warning("keystore_subscription_failed", error=str(exc))
            except Exception:  # never let the listener die; the poll still runs
                log.exception("keystore_subscription_failed")
            finally:
                self.subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)
            pause = min(pause * 2, RESUBSCRIBE_MAX_SECONDS)

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # (re)subscribed, possibly after an outage: catch up on what was missed
            if not self.subscribed.is_set():
                log.info("keystore_subscribed", channel=self.channel)
            self.subscribed.set()
            try:
                await self.refresh()
            except KeyStoreError as exc:
                log.warning("keystore_sync_failed", error=str(exc), kept_keys=len(self._records))
            return
        if kind != "message":
            return
        try:
            change = orjson.loads(message["data"])
            key_id, version = change["key_id"], change.get("version")
            if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
                raise ValueError("no key id")
            if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
                raise ValueError("the version is not an integer")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("keystore_change_ignored", error=str(exc))
            return
        try:
            await self._apply(key_id, version)
        except KeyStoreError as exc:  # the poll will reload
            log.warning("keystore_sync_failed", error=str(exc), kept_keys=len(self._records))

    async def _publish(self, key_id: str, version: int) -> None:
        try:
            await self._redis.publish(
                self.channel, orjson.dumps({"key_id": key_id, "version": version})
            )
        except REDIS_FAILURES as exc:  # stored all the same: the poll and look-ups find it
            log.warning("keystore_publish_failed", key_id=key_id, error=str(exc))

    # -- writing -----------------------------------------------------------------------
    async def create(self, record: KeyRecord) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._key(record.key_id), record.model_dump_json(), nx=True)
                pipe.sadd(self._ids, record.key_id)
                pipe.incr(self._version_key)
                created, _, version = await pipe.execute()
        except REDIS_FAILURES as exc:
            raise KeyStoreError(f"redis key store: {exc}") from None
        if not created:
            raise KeyStoreError(f"key id {record.key_id} already exists")
        # stored before it is announced: a replica that hears of it, or misses the
        # notification and looks the id up, reads the record
        await self._publish(record.key_id, int(version))
        await self.refresh()

    async def list(self) -> list[KeyRecord]:
        await self.refresh()
        return list(self._records.values())

    async def revoke(self, key_id: str, at: datetime) -> KeyRecord | None:
        try:
            raw = await self._redis.get(self._key(key_id))
            if raw is None:
                return None
            record = KeyRecord.model_validate_json(raw)
            version = None
            if record.active:
                record = record.model_copy(update={"revoked_at": at})
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.set(self._key(key_id), record.model_dump_json(), xx=True)
                    pipe.incr(self._version_key)
                    _, version = await pipe.execute()
        except REDIS_FAILURES as exc:
            raise KeyStoreError(f"redis key store: {exc}") from None
        if version is not None:
            await self._publish(key_id, int(version))
        await self.refresh()
        return record

    async def close(self) -> None:
        await self._redis.aclose()
