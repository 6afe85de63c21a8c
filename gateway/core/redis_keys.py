"""Every key the gateway keeps in Redis, built in one place (see "What the gateway keeps
in Redis" in docs/operations.md).

All keys of one store carry its prefix as a hash tag (``{gw}``), so the keys of one Lua
script call share a Redis Cluster slot. The state store's keys (:class:`StateKeys`) and
the key store's (:class:`KeyStoreKeys`) have a prefix each.
"""

from __future__ import annotations

from typing import NamedTuple

#: (key pattern, Redis type) of every key, as in docs/operations.md; ``{prefix}`` is the
#: store's hash tag, ``<...>`` one non-empty value
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

    __slots__ = ("_pa", "_pb", "_pf", "_pj", "_rl", "_tf", "_ts", "tag")

    def __init__(self, prefix: str) -> None:
        self.tag = tag = hash_tag(prefix)
        self._ts, self._tf, self._rl = f"{tag}:ts:", f"{tag}:tf:", f"{tag}:rl:"
        self._pb, self._pf, self._pa = f"{tag}:pb:", f"{tag}:pf:", f"{tag}:pa:"
        self._pj = f"{tag}:pj:"

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
        """The kind and name of one of these keys; ``None`` for any other key."""
        head, sep, rest = key.partition(":")
        kind, sep2, name = rest.partition(":")
        if head != self.tag or not (sep and sep2 and name) or kind not in STATE_KINDS:
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
