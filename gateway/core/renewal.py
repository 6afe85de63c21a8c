"""Token renewal's rules: grace, rotation overlap, a conversation's absolute lifetime.

A conversation's tokens form a *family*: the first one issued, then each token a renewal
gives for the one before it. A renewal retires the token presented; within the rotation
overlap the retired token still passes (requests in flight) and a second renewal of it
gets the same successor, after it any use of a retired token means two parties hold the
conversation, and the whole family is revoked. The store keeps one small record per
family (see admit.lua); this module holds the arithmetic, with ``now`` passed in.

The family's record outlives every token of it, and no longer: no token of a family is
issued after the moment its record is written (a rotation) or revoked, and none passes
more than a token's span (its TTL, the expiry leeway, the renewal grace) after its issue,
so the record is kept that span (and a leeway for clocks) from each write. A conversation
left idle past that span can no longer go on, and its record is gone with it; an active
one extends it at each renewal, until ``max_conversation_seconds`` stops renewals.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.token_codec import ClientToken

#: the defaults of ``tokens.refresh_grace_seconds``, ``tokens.rotation_overlap_seconds``
#: and ``tokens.max_conversation_seconds``
DEFAULT_GRACE_SECONDS = 120
DEFAULT_OVERLAP_SECONDS = 10
DEFAULT_MAX_CONVERSATION_SECONDS = 86_400
#: the prefix of a revoked family's entry in a replica's revocation set
FAMILY_REVOCATION_PREFIX = "f:"
#: a family record is kept at least this long (Redis expiries are whole milliseconds)
MIN_FAMILY_TTL_MS = 1000


def family_revocation(conversation_id: str) -> str:
    """A revoked family's key in :class:`~gateway.core.revocations.RevocationSet`."""
    return FAMILY_REVOCATION_PREFIX + conversation_id


@dataclass(frozen=True, slots=True)
class RenewalRules:
    #: seconds past its expiry (and the leeway) a token may still be renewed
    grace_seconds: int
    #: seconds a retired token keeps passing, and its renewal gives the same successor
    overlap_seconds: int
    #: a conversation's absolute lifetime, from its first token
    max_conversation_seconds: int
    #: a token's lifetime and the codec's expiry leeway
    ttl_seconds: int
    leeway_seconds: int

    @property
    def overlap_ms(self) -> int:
        return self.overlap_seconds * 1000

    def conversation_ends(self, claims: ClientToken) -> int:
        """When renewals of ``claims``' conversation stop."""
        return claims.started_at + self.max_conversation_seconds

    def lifetime_over(self, claims: ClientToken, now: float) -> bool:
        return now >= self.conversation_ends(claims)

    @property
    def token_span_seconds(self) -> int:
        """How long after its issue a token can still pass (renewal included): its TTL, the
        expiry leeway and the renewal grace."""
        return self.ttl_seconds + self.leeway_seconds + self.grace_seconds

    @property
    def family_seconds(self) -> int:
        """How long a family's record (or a replica's memory of its revocation) is kept
        from the moment it is written: a token's span, and a leeway more for the clocks of
        the replicas and the store."""
        return self.token_span_seconds + self.leeway_seconds

    @property
    def family_ttl_ms(self) -> int:
        return max(self.family_seconds * 1000, MIN_FAMILY_TTL_MS)
