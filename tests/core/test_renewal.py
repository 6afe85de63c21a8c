"""Renewal's pure parts: the successor token the codec signs (deterministic, conversation
start carried over, grace on expiry) and the lifetime and family arithmetic."""

import jwt
import pytest

from gateway.core.renewal import RenewalRules, family_revocation
from gateway.core.signing_keys import KeySet, SigningKey
from gateway.core.token_codec import TokenCodec, TokenRejected

NOW = 1_800_000_000
KEY = SigningKey("k1", b"k" * 40)
CODEC = TokenCodec(
    KeySet((KEY,)), issuer="agent-gateway", audience="public-agent-api", ttl_seconds=900
)
RULES = RenewalRules(
    grace_seconds=120,
    overlap_seconds=10,
    max_conversation_seconds=86_400,
    ttl_seconds=900,
    leeway_seconds=5,
)


def test_the_successor_keeps_the_conversation_and_is_deterministic() -> None:
    first = CODEC.issue(key_id="AbCdEf012345", model_id="demo", now=NOW, fingerprint=None)
    kwargs = {"jti": "J" * 22, "issued_at": NOW + 800, "fingerprint": "7e57" + "a" * 12}
    one = CODEC.renew(first.claims, **kwargs)  # type: ignore[arg-type]
    two = CODEC.renew(first.claims, **kwargs)  # type: ignore[arg-type]
    assert one.token == two.token  # a repeated renewal gets the same token
    claims = CODEC.decode(one.token, NOW + 801)
    assert claims.conversation_id == first.claims.conversation_id
    assert (claims.jti, claims.issued_at, claims.expires_at) == ("J" * 22, NOW + 800, NOW + 1700)
    assert claims.started_at == NOW and claims.conversation_started_at == NOW
    again = CODEC.renew(claims, jti="K" * 22, issued_at=NOW + 1600, fingerprint=None)
    assert CODEC.decode(again.token, NOW + 1601).started_at == NOW  # across generations


def test_a_store_clock_behind_the_issuing_replica_still_gives_a_valid_successor() -> None:
    """The successor's issue time is the store's clock, its conversation start the
    issuing replica's: a replica 2 s ahead of Redis renewing at once must not sign a start
    later than the issue (such a token was refused as malformed)."""
    first = CODEC.issue(key_id="AbCdEf012345", model_id="demo", now=NOW + 2)
    renewed = CODEC.renew(first.claims, jti="J" * 22, issued_at=NOW, fingerprint=None)
    claims = CODEC.decode(renewed.token, NOW + 1)
    assert claims.started_at == NOW and claims.conversation_id == first.claims.conversation_id


def test_a_first_token_started_its_conversation() -> None:
    first = CODEC.issue(key_id="AbCdEf012345", model_id="demo", now=NOW)
    assert "cst" not in jwt.decode(first.token, options={"verify_signature": False})
    assert CODEC.decode(first.token, NOW).started_at == NOW


def test_grace_accepts_a_token_expired_by_at_most_that() -> None:
    token = CODEC.issue(key_id="AbCdEf012345", model_id="demo", now=NOW).token
    expired = NOW + 900 + 5 + 60
    with pytest.raises(TokenRejected):
        CODEC.verify(token, expired)
    assert CODEC.verify(token, expired, grace=120).claims.issued_at == NOW
    with pytest.raises(TokenRejected) as info:
        CODEC.verify(token, NOW + 900 + 5 + 120, grace=120)
    assert info.value.code == "token_expired"


@pytest.mark.parametrize("cst", [NOW + 1, "x", True, 1.5])
def test_a_conversation_start_after_the_issue_or_not_an_integer_is_invalid(cst: object) -> None:
    payload = {
        "iss": "agent-gateway",
        "aud": "public-agent-api",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 900,
        "jti": "J" * 22,
        "cid": "e684da01-13c0-4b3c-bd3e-548ad4c0e9e6",
        "mid": "demo",
        "akid": "AbCdEf012345",
        "cst": cst,
    }
    token = jwt.encode(payload, KEY.secret, algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(TokenRejected) as info:
        CODEC.verify(token, NOW)
    assert info.value.code == "token_invalid"


def test_lifetime_and_family_arithmetic() -> None:
    claims = CODEC.issue(key_id="AbCdEf012345", model_id="demo", now=NOW).claims
    assert RULES.conversation_ends(claims) == NOW + 86_400
    assert not RULES.lifetime_over(claims, NOW + 86_399)
    assert RULES.lifetime_over(claims, NOW + 86_400)
    # a family's record outlives, from each write, any token issued up to then: TTL,
    # leeway and grace, and a leeway more for clocks; not the conversation's whole day
    assert RULES.token_span_seconds == 900 + 5 + 120
    assert RULES.family_seconds == 900 + 5 + 120 + 5
    assert RULES.family_ttl_ms == 1_030_000
    assert RULES.overlap_ms == 10_000
    assert family_revocation(claims.conversation_id) == "f:" + claims.conversation_id
