"""A key store in one YAML file: hashes only, reviewable, GitOps friendly.

Writers (the ``gateway keys`` commands) take an exclusive lock and replace the file
atomically. Gateways watch the file's directory (:mod:`gateway.watching`) and reload it
when its content changes; a file that fails to parse keeps the last good snapshot and is
reported with its line and field.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field

from gateway.config.yaml_source import SourceError, parse_yaml, validate_model
from gateway.core.miss_budget import MissBudget
from gateway.core.origins import invalid_origins
from gateway.keystore.base import Found, KeyRecord, KeyStoreError, MissLookups
from gateway.watching import changes

log = structlog.get_logger("gateway.keystore")

HEADER = (
    "# Agent keys: argon2id hashes only, managed with `gateway keys create|list|revoke`.\n"
    "# Safe to commit: a hash does not reveal its key.\n"
)


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: list[KeyRecord] = Field(default_factory=list)


class _Loaded(NamedTuple):
    digest: bytes
    records: dict[str, KeyRecord]
    #: stored origins no browser request can match, each with where it is and why
    problems: list[dict[str, str]]


def _identity(path: Path) -> tuple[int, ...]:
    """What changes when the file is replaced or written: inode, size, times (the writers
    replace the file, so each write has a new inode)."""
    try:
        st = path.stat()
    except OSError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileKeyStore:
    def __init__(
        self, path: Path, *, poll_seconds: float = 1.0, misses: MissBudget | None = None
    ) -> None:
        self.path = path
        self._poll_seconds = poll_seconds
        self._records: dict[str, KeyRecord] = {}
        self._digest: bytes | None = None
        self._misses = MissLookups(misses if misses is not None else MissBudget(0))
        #: the file's identity when it was last read (see :func:`_identity`)
        self._seen: tuple[int, ...] | None = None
        self.loaded = False

    # -- reading -----------------------------------------------------------------------
    def _read(self) -> _Loaded:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _Loaded(hashlib.sha256(b"").digest(), {}, [])
        except OSError as exc:
            raise KeyStoreError(f"{self.path}: cannot read: {exc.strerror}") from None
        digest = hashlib.sha256(raw).digest()
        if digest == self._digest:
            return _Loaded(digest, self._records, [])
        try:
            doc = parse_yaml(raw.decode("utf-8"), str(self.path))
            if doc.data is None:
                return _Loaded(digest, {}, [])
            parsed = validate_model(_KeyFile, doc)
        except (SourceError, UnicodeDecodeError) as exc:
            raise KeyStoreError(str(exc)) from None
        records: dict[str, KeyRecord] = {}
        problems: list[dict[str, str]] = []
        for index, record in enumerate(parsed.keys):
            if record.key_id in records:
                raise KeyStoreError(
                    f"{doc.where(('keys', index))}: keys[{index}].key_id: "
                    f"duplicate key id {record.key_id}"
                )
            records[record.key_id] = record
            for origin, reason in invalid_origins(record.origins):
                at = record.origins.index(origin)
                problems.append(
                    {
                        "where": f"{doc.where(('keys', index, 'origins', at))}: "
                        f"keys[{index}].origins[{at}]",
                        "key_id": record.key_id,
                        "origin": origin,
                        "error": reason,
                    }
                )
        return _Loaded(digest, records, problems)

    def lookup(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    def snapshot(self) -> Mapping[str, KeyRecord]:
        return self._records

    async def find(self, key_id: str) -> Found:
        """On a miss, the file is read again if it changed since it was last read (a stat
        tells): a key written a moment ago, before the change notification arrived, is
        served, and misses on an unchanged file cost no read."""
        return await self._misses.find(key_id, self.lookup, self._reread)

    async def _reread(self, key_id: str) -> KeyRecord | None:
        if self._seen is None or _identity(self.path) != self._seen:
            await self.refresh()
        return self._records.get(key_id)

    async def refresh(self) -> None:
        seen = _identity(self.path)  # before reading: a change while reading is seen later
        # parsing and validating thousands of records takes a while: off the event loop
        digest, records, problems = await asyncio.to_thread(self._read)
        self._seen = seen
        if digest != self._digest:
            changed = self.loaded
            self._digest, self._records = digest, records
            if changed:
                log.info("keystore_reloaded", path=str(self.path), keys=len(records))
            for problem in problems:  # loudly, at each load: these origins never match
                log.error("keystore_origin_invalid", **problem)
        self.loaded = True

    async def run(self, stop: asyncio.Event) -> None:
        async for _ in changes(self.path.parent, stop, self._poll_seconds):
            try:
                await self.refresh()
            except KeyStoreError as exc:
                log.error("keystore_reload_failed", error=str(exc), kept_keys=len(self._records))
            except Exception:  # never let the watcher die: revocations must keep arriving
                log.exception("keystore_reload_failed", kept_keys=len(self._records))

    # -- writing -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, records: dict[str, KeyRecord]) -> None:
        entries: list[dict[str, Any]] = [
            r.model_dump(mode="json", exclude_none=False) for r in records.values()
        ]
        text = HEADER + yaml.safe_dump({"keys": entries}, sort_keys=False, allow_unicode=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o640)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def create(self, record: KeyRecord) -> None:
        with self._locked():
            records = self._read().records
            if record.key_id in records:
                raise KeyStoreError(f"key id {record.key_id} already exists")
            self._write({**records, record.key_id: record})
        await self.refresh()

    async def list(self) -> list[KeyRecord]:
        await self.refresh()
        return list(self._records.values())

    async def revoke(self, key_id: str, at: datetime) -> KeyRecord | None:
        with self._locked():
            records = self._read().records
            record = records.get(key_id)
            if record is None:
                return None
            if record.active:
                record = record.model_copy(update={"revoked_at": at})
                self._write({**records, key_id: record})
        await self.refresh()
        return record

    async def close(self) -> None:
        return None
