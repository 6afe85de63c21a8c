"""argon2id hashing of agent keys (argon2-cffi), and the cache that spares it.

Verification costs tens of milliseconds of CPU by design, so it runs off the event loop
(the caller's job) and a successful one is remembered for a short time. The cache is keyed
by an HMAC of the key under a per-process random secret: a memory dump shows neither the
key nor anything an attacker could test guesses against offline.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError


def make_hasher(time_cost: int, memory_kib: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(
        time_cost=time_cost,
        memory_cost=memory_kib,
        parallelism=parallelism,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )


def verify(hasher: PasswordHasher, encoded: str, key: str) -> bool:
    """True when ``key`` matches ``encoded``; never raises for a mismatch or a bad hash."""
    try:
        return hasher.verify(encoded, key)
    except (VerificationError, InvalidHashError):
        return False


@dataclass(slots=True)
class _Entry:
    key_id: str
    hash_digest: bytes
    expires_at: float


class VerifiedKeyCache:
    """Bounded LRU of recently verified keys: HMAC(key) -> (key id, hash digest, expiry).

    An entry is only honoured for the same key id and the same stored hash, so a revoked,
    deleted or re-created key never matches an old entry.
    """

    def __init__(self, ttl_seconds: float, max_entries: int) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._ttl > 0 and self._max > 0

    def _mac(self, key: str) -> bytes:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).digest()

    def mac(self, key: str) -> bytes:
        """What stands for ``key`` wherever it must be remembered: an HMAC under this
        process's secret, never the key."""
        return self._mac(key)

    @staticmethod
    def _digest(encoded_hash: str) -> bytes:
        return hashlib.sha256(encoded_hash.encode()).digest()

    def hit(self, key: str, key_id: str, encoded_hash: str, now: float) -> bool:
        if not self.enabled:
            return False
        mac = self._mac(key)
        entry = self._entries.get(mac)
        if entry is None:
            return False
        if entry.expires_at <= now or entry.key_id != key_id:
            del self._entries[mac]
            return False
        if not hmac.compare_digest(entry.hash_digest, self._digest(encoded_hash)):
            del self._entries[mac]
            return False
        self._entries.move_to_end(mac)
        return True

    def remember(self, key: str, key_id: str, encoded_hash: str, now: float) -> None:
        if not self.enabled:
            return
        mac = self._mac(key)
        self._entries[mac] = _Entry(key_id, self._digest(encoded_hash), now + self._ttl)
        self._entries.move_to_end(mac)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
