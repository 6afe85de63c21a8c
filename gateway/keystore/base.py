"""The key store contract and the key record.

A store keeps an in-memory snapshot that request handlers read without I/O
(:meth:`KeyStore.lookup`), and keeps it fresh in the background (:meth:`KeyStore.run`), so a
key created or revoked from the command line reaches every running gateway within seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from gateway.core.agent_keys import KEY_ID_PATTERN


class KeyRecord(BaseModel):
    """What is stored for one agent key: never the key, only its argon2id hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: str = Field(pattern=KEY_ID_PATTERN.pattern)
    hash: str = Field(pattern=r"^\$argon2id\$")
    models: tuple[str, ...] = Field(min_length=1)
    origins: tuple[str, ...] = ()
    label: str = Field("", max_length=200)
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public_view(self) -> dict[str, object]:
        """Everything but the hash, for listings."""
        return {
            "key_id": self.key_id,
            "models": list(self.models),
            "origins": list(self.origins),
            "label": self.label,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "active": self.active,
        }


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class KeyStoreError(Exception):
    """The key store cannot be read or written; the message names what and where."""


class KeyStore(Protocol):
    def lookup(self, key_id: str) -> KeyRecord | None:
        """The record from the local snapshot; no I/O."""

    def snapshot(self) -> Mapping[str, KeyRecord]:
        """Every record of the local snapshot by key id; no I/O. A change of the snapshot
        gives a new mapping (never one mutated in place), so callers may cache what they
        derive from it for as long as the same object comes back."""

    async def refresh(self) -> None:
        """Reload the snapshot now (raises :class:`KeyStoreError` if unreadable)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the snapshot fresh until ``stop`` is set; survives read errors."""

    async def create(self, record: KeyRecord) -> None: ...

    async def list(self) -> list[KeyRecord]: ...

    async def revoke(self, key_id: str, at: datetime) -> KeyRecord | None:
        """The revoked record, or None when no such key exists."""

    async def close(self) -> None: ...
