"""The key store contract and the key record.

A store keeps an in-memory snapshot that request handlers read without I/O
(:meth:`KeyStore.lookup`), and keeps it fresh in the background (:meth:`KeyStore.run`), so a
key created or revoked from the command line reaches every running gateway within seconds.
A key id the snapshot lacks may be a key created a moment ago: :meth:`KeyStore.find` looks
it up in the backing store once, within the bounds of a
:class:`~gateway.core.miss_budget.MissBudget` (see :class:`MissLookups`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Literal, NamedTuple, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, Field

from gateway.core.agent_keys import KEY_ID_PATTERN
from gateway.core.miss_budget import MissBudget

log = structlog.get_logger("gateway.keystore")


class KeyRecord(BaseModel):
    """What is stored for one agent key: never the key, only its argon2id hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: str = Field(pattern=KEY_ID_PATTERN.pattern)
    hash: str = Field(pattern=r"^\$argon2id\$")
    models: tuple[str, ...] = Field(min_length=1)
    origins: tuple[str, ...] = ()
    label: str = Field("", max_length=200)
    #: its tokens are always bound to a key the client holds (a DPoP proof at the token
    #: request), whatever the policies' binding mode
    require_proof: bool = False
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
            "require_proof": self.require_proof,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "active": self.active,
        }


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class KeyStoreError(Exception):
    """The key store cannot be read or written; the message names what and where."""


#: how a :meth:`KeyStore.find` ended: ``snapshot`` (known locally, no I/O), or, for a key id
#: missing from the snapshot (``LookupOutcome``, the values of ``gateway_key_lookups_total``):
#: ``found`` (read from the backing store), ``not_found``, or not looked up:
#: ``known_missing`` (looked up and missing a moment ago), ``over_budget`` (too many
#: look-ups), ``disabled``; ``error``: the backing store did not answer
LookupOutcome = Literal["found", "not_found", "known_missing", "over_budget", "disabled", "error"]
FindOutcome = Literal["snapshot", LookupOutcome]


class Found(NamedTuple):
    record: KeyRecord | None
    outcome: FindOutcome


class MissLookups:
    """The bounded read-through both stores use for key ids their snapshot lacks.

    Concurrent requests for the same id share one look-up; an id found missing, and any
    id past the budget, is refused without I/O."""

    def __init__(self, budget: MissBudget, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self._clock = clock
        self._running: dict[str, asyncio.Future[Found]] = {}

    async def find(
        self,
        key_id: str,
        snapshot: Callable[[str], KeyRecord | None],
        fetch: Callable[[str], Awaitable[KeyRecord | None]],
    ) -> Found:
        """``snapshot(key_id)`` if known, else (budget allowing) ``await fetch(key_id)``,
        which reads the backing store and adds what it finds to the snapshot."""
        record = snapshot(key_id)
        if record is not None:
            return Found(record, "snapshot")
        running = self._running.get(key_id)
        if running is None:
            verdict = self.budget.allow(key_id, self._clock())
            if verdict != "allowed":
                return Found(None, verdict)
            running = asyncio.ensure_future(self._fetch(key_id, fetch))
            self._running[key_id] = running
            running.add_done_callback(lambda _: self._running.pop(key_id, None))
        return await asyncio.shield(running)  # a client that leaves does not cancel it

    async def _fetch(
        self, key_id: str, fetch: Callable[[str], Awaitable[KeyRecord | None]]
    ) -> Found:
        try:
            record = await fetch(key_id)
        except KeyStoreError as exc:
            log.warning("keystore_lookup_failed", key_id=key_id, error=str(exc))
            return Found(None, "error")
        if record is None:
            self.budget.missing(key_id, self._clock())
            return Found(None, "not_found")
        return Found(record, "found")


class KeyStore(Protocol):
    def lookup(self, key_id: str) -> KeyRecord | None:
        """The record from the local snapshot; no I/O."""

    async def find(self, key_id: str) -> Found:
        """:meth:`lookup`, and on a miss one bounded look-up in the backing store (see
        :class:`MissLookups`); a record found there joins the snapshot. Never raises."""

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
