"""Token renewal's rules: grace, rotation overlap, a conversation's absolute lifetime.

A conversation's tokens form a *family*: the first one issued, then each token a renewal
gives for the one before it. A renewal retires the token presented; within the rotation
overlap the retired token still passes (requests in flight) and a second renewal of it
gets the same successor, after it any use of a retired token means two parties hold the
conversation, and the whole family is revoked. The store keeps one small record per
family (see admit.lua); this module holds the arithmetic, with ``now`` passed in.

The family outlives its last possible token: a renewal is refused once the conversation
is ``max_conversation_seconds`` old, and the last token renewed before that lives its TTL,
the leeway and the renewal grace more.
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

    def family_until(self, claims: ClientToken) -> int:
        """When the last token of the family can no longer pass, grace included."""
        return (
            self.conversation_ends(claims)
            + self.ttl_seconds
            + self.leeway_seconds
            + self.grace_seconds
        )

    def family_ttl_ms(self, claims: ClientToken, now: float) -> int:
        """How long the family's record must be kept from ``now``."""
        return max(int((self.family_until(claims) - now) * 1000) + 1, MIN_FAMILY_TTL_MS)
