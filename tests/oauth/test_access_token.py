"""The JWT checks themselves, with ``now`` passed in: no HTTP, no clock."""

import time
from typing import Any

import pytest

from gateway.oauth.access_token import AccessTokenPolicy, TokenInvalid, read_header, verify
from tests.support.identity_provider import AUDIENCE, IdentityProvider, SigningKey

NOW = 1_900_000_000


@pytest.fixture
def provider(key_pool: dict[str, SigningKey]) -> IdentityProvider:
    return IdentityProvider(issuer="https://idp.example", keys=[key_pool["ec-1"]])


def policy(**changes: Any) -> AccessTokenPolicy:
    values: dict[str, Any] = {
        "issuer": "https://idp.example",
        "audiences": (AUDIENCE, "other-audience"),
        "algorithms": frozenset({"ES256", "RS256"}),
        "leeway_seconds": 10,
        "require_typ_at_jwt": False,
    }
    values.update(changes)
    return AccessTokenPolicy(**values)


def check(provider: IdentityProvider, token: str, now: float = NOW, **changes: Any) -> Any:
    rules = policy(**changes)
    header = read_header(token, rules)
    key = provider.keys[0].private.public_key()
    return verify(token, header, key, rules, now)


def sign(provider: IdentityProvider, **claims: Any) -> str:
    return provider.sign(**{"iat": NOW, "nbf": NOW, "exp": NOW + 60, **claims})


def test_claims_become_the_caller(provider: IdentityProvider) -> None:
    caller = check(provider, sign(provider, aud=["x", "other-audience"]))
    assert caller.subject == "user-42"
    assert caller.scopes == {"chat:read", "chat:write"}
    assert caller.client_id == "shop-backoffice"
    assert caller.expires_at == NOW + 60


def test_scopes_as_a_scp_list_and_client_as_azp(provider: IdentityProvider) -> None:
    caller = check(provider, sign(provider, scope=None, scp=["a", "b"], client_id=None, azp="web"))
    assert caller.scopes == {"a", "b"} and caller.client_id == "web"
    assert check(provider, sign(provider, scope=None)).scopes == frozenset()


@pytest.mark.parametrize(
    ("now", "ok"),
    [(NOW + 60 + 9, True), (NOW + 60 + 10, False), (NOW - 9, True), (NOW - 11, False)],
)
def test_expiry_and_not_before_with_leeway(provider: IdentityProvider, now: int, ok: bool) -> None:
    token = sign(provider)
    if ok:
        check(provider, token, now=now)
    else:
        with pytest.raises(TokenInvalid, match=r"expired|not valid yet"):
            check(provider, token, now=now)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": "soon"}, "'exp' claim is not a number"),
        ({"exp": True}, "'exp' claim is not a number"),
        ({"scope": 42}, "scope claim is malformed"),
        ({"scope": None, "scp": ["ok", 'bad"quote']}, "scope claim is malformed"),
        ({"sub": ""}, "'sub'"),
        ({"sub": "x" * 300}, "'sub'"),
        ({"client_id": "a\nb"}, "'client_id'"),
        ({"iss": "https://idp.example/"}, "issuer"),
    ],
)
def test_malformed_claims(provider: IdentityProvider, claims: dict[str, Any], reason: str) -> None:
    with pytest.raises(TokenInvalid, match=reason):
        check(provider, sign(provider, **claims))


def test_header_rules(provider: IdentityProvider) -> None:
    with pytest.raises(TokenInvalid, match="algorithm"):
        check(provider, sign(provider), algorithms=frozenset({"RS256"}))
    with pytest.raises(TokenInvalid, match=r"at\+jwt"):
        check(provider, provider.sign(headers={"typ": "JWT"}), require_typ_at_jwt=True)
    with pytest.raises(TokenInvalid, match="kid"):
        check(provider, provider.sign(headers={"kid": ""}))
    with pytest.raises(TokenInvalid, match="compact"):
        check(provider, "x" * 20_000)


def test_wall_clock_tokens_from_the_provider_helper(provider: IdentityProvider) -> None:
    assert check(provider, provider.sign(), now=time.time()).subject == "user-42"
