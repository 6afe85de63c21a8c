"""Every key the gateway keeps in Redis, built in one place (see "What the gateway keeps
in Redis" in docs/operations.md).

All keys of one store carry its prefix as a hash tag (``{gw}``), so the keys of one Lua
script call share a Redis Cluster slot. The state store's keys (:class:`StateKeys`) and
the key store's (:class:`KeyStoreKeys`) have a prefix each. With ``store.sharding: key``
the state of one admission carries a tag of its own agent key instead (``{gw:<key id>}``,
or ``{gw:<key id>:<sub-bucket>:<salt>}`` for a hot key): :meth:`StateKeys.for_admission` gives
that admission's keys, every kind of key under the same tag, so they still share a slot.
"""

from __future__ import annotations

import binascii
from typing import NamedTuple

#: (key pattern, Redis type) of every key, as in docs/operations.md; ``{prefix}`` is the
#: store's hash tag (``{prefix:<shard>}`` for a sharded admission), ``<...>`` one
#: non-empty value
STATE_KEY_SHAPES = (
    ("{prefix}:ts:<jti>", "hash"),
    ("{prefix}:tf:<conversation>", "hash"),
    ("{prefix}:rl:<policy>:<partition>", "string"),
    ("{prefix}:pb:<subject>", "string"),
    ("{prefix}:pf:<subject>", "string"),
    ("{prefix}:pa:<subject>", "string"),
    ("{prefix}:pj:<proof>", "string"),
)
KEY_STORE_KEY_SHAPES = (
    ("{prefix}:key:<key id>", "string"),
    ("{prefix}:ids", "set"),
    ("{prefix}:version", "string"),
)


def hash_tag(prefix: str) -> str:
    """``{prefix}``: Redis Cluster hashes only this part of a key."""
    return "{" + prefix + "}"


#: Redis Cluster's hash slots
CLUSTER_SLOTS = 16384


def cluster_slot(tag: str) -> int:
    """The Cluster slot of a key whose hash tag is ``{tag}`` (CRC16-XMODEM, as Redis)."""
    return binascii.crc_hqx(tag.encode(), 0) % CLUSTER_SLOTS


def bucket_shard(prefix: str, key_id: str, bucket: int, buckets: int) -> str:
    """The shard of sub-bucket ``bucket`` of a hot key over ``buckets``:
    ``<key id>:<bucket>:<salt>``, the first salt that puts ``{prefix:<shard>}`` in the
    bucket-th of ``buckets`` equal ranges of slots. The sub-buckets thus sit on evenly
    spaced slots, and a Cluster whose primaries serve equal contiguous ranges (as
    ``redis-cli --cluster create`` makes) gets an equal share of them when ``buckets`` is
    a multiple of its primaries; random tags would leave 12 sub-buckets lumped 2/5/5 as
    often as not. Deterministic (about ``buckets`` tries), so every replica agrees."""
    low, high = bucket * CLUSTER_SLOTS // buckets, (bucket + 1) * CLUSTER_SLOTS // buckets
    salt = 0
    while True:
        shard = f"{key_id}:{bucket}:{salt}"
        if low <= cluster_slot(f"{prefix}:{shard}") < high:
            return shard
        salt += 1


#: sharded key builders kept per store (one per agent key or sub-bucket in use)
MAX_SHARD_BUILDERS = 8192


def limit_name(policy: str, partition: str) -> str:
    """A rate limit's name for one partition of a policy: the ``rl`` key's suffix, or the
    field of a token's state hash."""
    return f"{policy}:{partition}"


class StateKey(NamedTuple):
    """A state key read back: its kind (``ts``, ``tf``, ``rl``, ``pb``, ``pf``, ``pa``,
    ``pj``, as in :data:`STATE_KEY_SHAPES`) and what follows it (a jti, a limit name, a
    subject, a proof)."""

    kind: str
    name: str


#: the kinds of :class:`StateKeys`' keys
STATE_KINDS = frozenset(shape.split(":")[1] for shape, _ in STATE_KEY_SHAPES)


class StateKeys:
    """The state store's keys under one prefix. The Lua scripts' ``KEYS`` orders are
    :meth:`failure_script` and :meth:`reserve_script`; admit.lua takes the penalty key,
    the token key, the token family's key, a proof's key, then the limits' keys, each
    when present."""

    __slots__ = ("_pa", "_pb", "_pf", "_pj", "_prefix", "_rl", "_shards", "_tf", "_ts", "tag")

    def __init__(self, prefix: str, shard: str | None = None) -> None:
        self._prefix = prefix
        self.tag = tag = hash_tag(prefix if shard is None else f"{prefix}:{shard}")
        self._ts, self._tf, self._rl = f"{tag}:ts:", f"{tag}:tf:", f"{tag}:rl:"
        self._pb, self._pf, self._pa = f"{tag}:pb:", f"{tag}:pf:", f"{tag}:pa:"
        self._pj = f"{tag}:pj:"
        self._shards: dict[str, StateKeys] = {}

    def for_admission(self, shard: str | None) -> StateKeys:
        """The keys of one admission: these (the store's one tag) when ``shard`` is None,
        else every kind of key under ``{prefix:<shard>}`` (an agent key id, or
        :func:`bucket_shard`), so the
        token, its family, the limits and the penalty key of the admission share a slot
        whichever kinds of key it touches."""
        if shard is None:
            return self
        found = self._shards.get(shard)
        if found is None:
            if len(self._shards) >= MAX_SHARD_BUILDERS:
                self._shards.clear()
            found = self._shards[shard] = StateKeys(self._prefix, shard)
        return found

    def token(self, jti: str) -> str:
        """The token's state: a hash of its record and its token-scoped limits."""
        return self._ts + jti

    def family(self, conversation_id: str) -> str:
        """A conversation's token family: its newest token, the one it retired and when,
        and whether the family is revoked (see admit.lua). Under the store's hash tag, in
        the slot of its tokens' keys."""
        return self._tf + conversation_id

    def proof(self, replay_id: str) -> str:
        """A DPoP proof seen (its key and ``jti``, hashed: ``Proof.replay_id``), kept
        while the proof could still pass, so it cannot be replayed. In the slot of the
        token's keys (admit.lua checks it in the same call)."""
        return self._pj + replay_id

    def limit(self, name: str) -> str:
        """A limit of its own (not kept with a token): its next allowed time."""
        return self._rl + name

    def penalty(self, subject: str) -> str:
        """Present while ``subject`` sits in the penalty box."""
        return self._pb + subject

    def failures(self, subject: str) -> str:
        """Failed attempts of ``subject`` in the penalty window."""
        return self._pf + subject

    def attempts(self, subject: str) -> str:
        """Attempts of ``subject`` counted before their verification ran."""
        return self._pa + subject

    def parse(self, key: str) -> StateKey | None:
        """The kind and name of one of these keys, or of a sharded admission's
        (:meth:`for_admission`); ``None`` for any other key."""
        if not key.startswith(self.tag[:-1]):
            return None
        close = key.find("}")
        head, rest = key[: close + 1], key[close + 1 :]
        if head != self.tag and not head.startswith(self.tag[:-1] + ":"):
            return None
        sep, rest = rest[:1], rest[1:]
        kind, sep2, name = rest.partition(":")
        if not (sep == ":" and sep2 and name) or kind not in STATE_KINDS:
            return None
        return StateKey(kind, name)

    def failure_script(self, subject: str) -> list[str]:
        """failure.lua's KEYS."""
        return [self.failures(subject), self.penalty(subject), self.attempts(subject)]

    def reserve_script(self, subject: str) -> list[str]:
        """reserve.lua's KEYS."""
        return [self.penalty(subject), self.failures(subject), self.attempts(subject)]


class KeyStoreKeys:
    """The Redis key store's keys (and change channel) under one prefix."""

    __slots__ = ("changes", "ids", "tag", "version")

    def __init__(self, prefix: str) -> None:
        self.tag = tag = hash_tag(prefix)
        #: the set of every key id
        self.ids = f"{tag}:ids"
        #: a counter bumped by every change
        self.version = f"{tag}:version"
        #: the Pub/Sub channel announcing each change (not a key)
        self.changes = f"{tag}:changes"

    def record(self, key_id: str) -> str:
        """One agent key's record, as JSON."""
        return f"{self.tag}:key:{key_id}"
