"""The state store contract: one atomic ``admit`` call per request.

``admit`` decides, in one step that either applies entirely or not at all: is the client
in the penalty box, is the token revoked or used from a new fingerprint, is it a token
its family retired (or is the family revoked), was its DPoP proof seen before, and does
every rate limit that applies have room; for a renewal, it also rotates the family. A
denied request consumes nothing. The memory store does this under the event loop (no
awaits inside), the Redis store in one Lua script.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

from gateway.core.gcra import LimitSpec, LimitState
from gateway.core.policy import ReuseAction

REUSE_ACTION_CODES: dict[ReuseAction, int] = {"deny": 0, "revoke": 1, "flag": 2}


class TokenVerdict(StrEnum):
    OK = "ok"
    #: first use (or a new allowed fingerprint): the fingerprint is now recorded
    BOUND = "bound"
    REVOKED = "revoked"
    REUSE = "reuse"
    #: another fingerprint, admitted because the reuse action is ``flag``
    FLAGGED = "flagged"
    #: a token its family retired, presented after the rotation overlap: the family is
    #: revoked now (see :mod:`gateway.core.renewal`)
    REPLAYED = "replayed"
    #: a token of a family revoked before
    FAMILY_REVOKED = "family_revoked"
    #: a DPoP proof (its key and jti) seen before within its window
    PROOF_REPLAYED = "proof_replayed"


#: verdicts that refuse the request
REFUSING_VERDICTS = frozenset(
    {
        TokenVerdict.REVOKED,
        TokenVerdict.REUSE,
        TokenVerdict.REPLAYED,
        TokenVerdict.FAMILY_REVOKED,
        TokenVerdict.PROOF_REPLAYED,
    }
)


class TokenUse(NamedTuple):
    jti: str
    #: this request's fingerprint; empty when binding is off
    fingerprint: str
    #: the fingerprint the token was bound to at issue; empty when bound at first use
    issued_fingerprint: str
    max_fingerprints: int
    #: what a new fingerprint past the limit does: deny, revoke (and deny) or flag
    on_reuse: ReuseAction
    #: the token's remaining life: its record expires with it
    ttl_ms: int


class FamilyCheck(NamedTuple):
    """The token's family (its conversation): is the token retired, is the family
    revoked; and for a renewal, the rotation."""

    conversation_id: str
    #: how long a retired token keeps passing
    overlap_ms: int
    #: how long the family's record is kept from now (as long as a token issued now can pass)
    ttl_ms: int
    #: a renewal: the jti for the successor when this renewal rotates the family ('' for
    #: any other use); within the overlap, a renewal of the retired token gets the
    #: successor the first renewal made instead
    successor: str = ""


class ProofUse(NamedTuple):
    """A DPoP proof presented (:mod:`gateway.core.dpop`): refused when seen before, else
    remembered once the request is admitted. With a token, ``key_mismatch`` says the proof
    is valid but by another key than the token's: the token's family is revoked (the token
    alone without a family; verdict ``reuse``) and nothing is remembered."""

    #: the proof's key and jti, hashed (``Proof.replay_id``)
    replay_id: str
    #: how long to remember it (until it leaves the proof window)
    ttl_ms: int
    key_mismatch: bool = False


class Renewed(NamedTuple):
    """The successor of a renewed token: its jti and its issue time (store clock, ms)."""

    jti: str
    issued_at_ms: int


class AdmitRequest(NamedTuple):
    token: TokenUse | None = None
    limits: tuple[LimitSpec, ...] = ()
    #: the penalty-box subject (client IP or prefix); None skips the check
    penalty_subject: str | None = None
    #: the token's family (only with ``token``)
    family: FamilyCheck | None = None
    #: the shard whose hash tag every key of this admission carries (an agent key id, or
    #: a hot key's sub-bucket: :func:`gateway.core.redis_keys.bucket_shard`); None: the
    #: store's one tag. Only the Redis store's key names depend on it
    shard: str | None = None
    #: a DPoP proof, with or without a token (a key mismatch only with one)
    proof: ProofUse | None = None


class Admission(NamedTuple):
    #: > 0 when the client sits in the penalty box: milliseconds left
    penalized_ms: int
    token: TokenVerdict | None
    limits: tuple[LimitState, ...]
    #: an admitted renewal's successor
    renewed: Renewed | None = None


@dataclass(frozen=True, slots=True)
class PenaltyRule:
    window_ms: int
    threshold: int
    cooldown_ms: int


class AttemptSlot(NamedTuple):
    """The answer to :meth:`StateStore.reserve_attempt`."""

    #: > 0 when the subject sits in the penalty box: milliseconds left (nothing reserved)
    penalized_ms: int
    #: the attempt is counted and may go ahead; False when boxed, or when the failures
    #: and the attempts in flight already reach the threshold
    granted: bool


class StoreUnavailable(Exception):
    """The store did not answer in time or at all."""


class CircuitOpen(StoreUnavailable):
    """The store was not asked: its circuit breaker is open after recent failures."""

    def __init__(self) -> None:
        super().__init__("circuit open")


class StateStore(Protocol):
    async def admit(self, request: AdmitRequest) -> Admission: ...

    async def peek(
        self, specs: tuple[LimitSpec, ...], shard: str | None = None
    ) -> tuple[LimitState, ...]:
        """The limits' current state, consuming nothing (for operators); ``shard`` as in
        :class:`AdmitRequest`."""

    async def record_failure(
        self, subject: str, rule: PenaltyRule, *, reserved: bool = False
    ) -> int:
        """Count one failure (bad key, bad token, reuse); the cool-down in ms once the
        threshold is reached, else 0. ``reserved``: the failure of an attempt counted by
        :meth:`reserve_attempt`, whose place in flight it takes over."""

    async def reserve_attempt(self, subject: str, rule: PenaltyRule) -> AttemptSlot:
        """Before paying for an attempt (an argon2 verification): the penalty check and,
        when the subject is not boxed and its failures plus its attempts in flight stay
        below the threshold, one more attempt in flight, in one atomic step. The attempt
        then ends as a failure (``record_failure(..., reserved=True)``) or is released
        (:meth:`release_attempt`). Attempts in flight expire with the window, so those of
        a replica that died mid-verification are not held forever."""

    async def release_attempt(self, subject: str) -> None:
        """An attempt counted by :meth:`reserve_attempt` succeeded (or never ran): it no
        longer holds a place. Never below zero."""

    async def ping(self) -> None: ...

    async def start(self) -> None:
        """Connect and load scripts ahead of the first request (best effort)."""

    async def close(self) -> None: ...


MIN_TTL_MS = 1000


def record_ttl_ms(ttl_ms: int) -> int:
    return max(ttl_ms, MIN_TTL_MS)
