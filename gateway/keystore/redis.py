"""A key store in Redis, shared by every replica.

Layout (one hash tag, so multi-key operations work on Redis Cluster):
``{prefix}:key:<key id>`` the record as JSON, ``{prefix}:ids`` the set of key ids and
``{prefix}:version`` a counter bumped by every change. Gateways poll the counter (one
``GET`` a second by default) and reload the snapshot only when it moved, so request
handlers never wait on Redis for a key lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import datetime

import structlog
from pydantic import ValidationError
from redis.exceptions import RedisClusterException, RedisError

from gateway.core.origins import invalid_origins
from gateway.keystore.base import KeyRecord, KeyStoreError
from gateway.redis_connect import AnyRedis

log = structlog.get_logger("gateway.keystore")
STORE_FAILURES = (RedisError, RedisClusterException, OSError)


class RedisKeyStore:
    def __init__(self, client: AnyRedis, *, prefix: str, sync_seconds: float = 1.0) -> None:
        self._redis = client
        self._tag = "{" + prefix + "}"
        self._sync_seconds = sync_seconds
        self._records: dict[str, KeyRecord] = {}
        self._version: bytes | str | None = None
        self.loaded = False

    def _key(self, key_id: str) -> str:
        return f"{self._tag}:key:{key_id}"

    @property
    def _ids(self) -> str:
        return f"{self._tag}:ids"

    @property
    def _version_key(self) -> str:
        return f"{self._tag}:version"

    def lookup(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    def snapshot(self) -> Mapping[str, KeyRecord]:
        return self._records

    async def _load_all(self) -> dict[str, KeyRecord]:
        members = await self._redis.smembers(self._ids)
        ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        if not ids:
            return {}
        raws = await self._redis.mget([self._key(i) for i in ids])
        records: dict[str, KeyRecord] = {}
        for key_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            try:
                records[key_id] = KeyRecord.model_validate_json(raw)
            except ValidationError as exc:
                log.error("keystore_record_invalid", key_id=key_id, error=str(exc))
                continue
            for origin, reason in invalid_origins(records[key_id].origins):
                log.error("keystore_origin_invalid", key_id=key_id, origin=origin, error=reason)
        return records

    async def refresh(self) -> None:
        try:
            version = await self._redis.get(self._version_key)
            if self.loaded and version == self._version:
                return
            records = await self._load_all()
        except STORE_FAILURES as exc:
            raise KeyStoreError(f"redis key store: {exc}") from None
        if self.loaded:
            log.info("keystore_reloaded", keys=len(records))
        self._records, self._version, self.loaded = records, version, True

    async def run(self, stop: asyncio.Event) -> None:
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

    async def create(self, record: KeyRecord) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._key(record.key_id), record.model_dump_json(), nx=True)
                pipe.sadd(self._ids, record.key_id)
                pipe.incr(self._version_key)
                created, _, _ = await pipe.execute()
        except STORE_FAILURES as exc:
            raise KeyStoreError(f"redis key store: {exc}") from None
        if not created:
            raise KeyStoreError(f"key id {record.key_id} already exists")
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
            if record.active:
                record = record.model_copy(update={"revoked_at": at})
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.set(self._key(key_id), record.model_dump_json(), xx=True)
                    pipe.incr(self._version_key)
                    await pipe.execute()
        except STORE_FAILURES as exc:
            raise KeyStoreError(f"redis key store: {exc}") from None
        await self.refresh()
        return record

    async def close(self) -> None:
        await self._redis.aclose()
