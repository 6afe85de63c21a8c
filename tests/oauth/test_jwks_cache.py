"""The JWKS cache against the local identity provider over HTTP, with a hand-driven clock."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.oauth.jwks import (
    JwksCache,
    JwksUnavailable,
    KeySet,
    UnknownKey,
    UnpublishedKey,
    fits,
)
from tests.support.identity_provider import JWKS_PATH, IdentityProvider, SigningKey


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def cache(idp: IdentityProvider, clock: Clock) -> AsyncIterator[JwksCache]:
    async with aiohttp.ClientSession() as session:
        jwks = JwksCache(
            idp.issuer + JWKS_PATH,
            session,
            algorithms=("RS256", "ES256"),
            cache_seconds=600,
            min_refresh_seconds=30,
            timeout_seconds=2,
            clock=clock,
        )
        yield jwks
        await jwks.close()


async def test_keys_are_fetched_once_and_reused(cache: JwksCache, idp: IdentityProvider) -> None:
    rsa = await cache.key("rsa-1", "RS256")
    ec = await cache.key("ec-1", "ES256")
    assert rsa.key_size == 2048 and ec.curve.name == "secp256r1"
    for _ in range(5):
        await cache.key("rsa-1", "RS256")
    assert idp.fetches == 1 and cache.fetches == 1


async def test_a_key_only_verifies_its_own_algorithm(cache: JwksCache) -> None:
    await cache.key("rsa-1", "RS256")
    with pytest.raises(UnknownKey):
        await cache.key("rsa-1", "ES256")  # an RSA key for an EC algorithm
    with pytest.raises(UnknownKey):
        await cache.key("ec-1", "RS256")


async def test_unknown_kids_refetch_at_most_once_per_interval(
    cache: JwksCache, idp: IdentityProvider, clock: Clock, key_pool: dict[str, SigningKey]
) -> None:
    await cache.key("rsa-1", "RS256")
    clock.now += 31
    for i in range(20):
        with pytest.raises(UnknownKey):
            await cache.key(f"forged-{i}", "RS256")
    assert idp.fetches == 2  # the first unknown kid refetched; the others were throttled

    idp.rotate(key_pool["rsa-2"])  # the provider rotates within the interval
    clock.now += 10
    with pytest.raises(UnknownKey):
        await cache.key("rsa-2", "RS256")
    assert idp.fetches == 2
    clock.now += 21  # the interval has passed
    assert (await cache.key("rsa-2", "RS256")).key_size == 2048
    assert idp.fetches == 3
    with pytest.raises(UnknownKey):
        await cache.key("rsa-1", "RS256")  # withdrawn


async def test_a_kid_the_set_lacks_is_unpublished_and_says_when_it_is_looked_for_again(
    cache: JwksCache, idp: IdentityProvider, clock: Clock
) -> None:
    await cache.key("rsa-1", "RS256")
    clock.now += 12
    with pytest.raises(UnpublishedKey) as raised:
        await cache.key("rsa-next", "RS256")
    assert raised.value.refetch_in == 18  # the interval is 30 s
    with pytest.raises(UnknownKey) as wrong_alg:
        await cache.key("rsa-1", "ES256")  # published, but not for this algorithm
    assert not isinstance(wrong_alg.value, UnpublishedKey)
    idp.rotate("rsa-next")
    clock.now += 18
    assert (await cache.key("rsa-next", "RS256")).key_size == 2048
    assert idp.fetches == 2


async def test_concurrent_lookups_share_one_fetch(cache: JwksCache, idp: IdentityProvider) -> None:
    found = await asyncio.gather(*(cache.key("rsa-1", "RS256") for _ in range(50)))
    assert len({id(k) for k in found}) == 1
    assert idp.fetches == 1


async def test_the_set_is_refetched_when_old(
    cache: JwksCache, idp: IdentityProvider, clock: Clock
) -> None:
    await cache.key("rsa-1", "RS256")
    clock.now += 599
    await cache.key("rsa-1", "RS256")
    assert idp.fetches == 1
    clock.now += 2
    await cache.key("rsa-1", "RS256")
    assert idp.fetches == 2


async def test_a_failing_provider_keeps_the_last_good_set(
    cache: JwksCache, idp: IdentityProvider, clock: Clock
) -> None:
    await cache.key("rsa-1", "RS256")
    idp.status = 503
    clock.now += 700
    assert await cache.key("rsa-1", "RS256")  # stale but served
    assert idp.fetches == 2
    clock.now += 5
    await cache.key("rsa-1", "RS256")
    assert idp.fetches == 2  # failed fetches are throttled too


async def test_no_set_at_all_is_unavailable_not_unknown(
    cache: JwksCache, idp: IdentityProvider, clock: Clock
) -> None:
    idp.status = 500
    with pytest.raises(JwksUnavailable):
        await cache.key("rsa-1", "RS256")
    with pytest.raises(JwksUnavailable):
        await cache.key("rsa-1", "RS256")
    assert idp.fetches == 1
    idp.status = 200
    clock.now += 30
    assert await cache.key("rsa-1", "RS256")


async def test_unreachable_provider(clock: Clock) -> None:
    async with aiohttp.ClientSession() as session:
        jwks = JwksCache(
            "http://127.0.0.1:1/jwks.json",
            session,
            algorithms=("RS256",),
            cache_seconds=600,
            min_refresh_seconds=30,
            timeout_seconds=1,
            clock=clock,
        )
        with pytest.raises(JwksUnavailable):
            await jwks.key("k", "RS256")


def test_key_set_parsing_ignores_unsafe_and_unusable_keys(key_pool: dict[str, SigningKey]) -> None:
    rsa = key_pool["rsa-1"].public_jwk()
    short = SigningKey.rsa("short", bits=1024).public_jwk()
    private = {**key_pool["rsa-2"].public_jwk(), "d": "AAAA"}
    document: dict[str, Any] = {
        "keys": [
            rsa,
            short,
            private,
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {**key_pool["ec-1"].public_jwk(), "use": "enc"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not a key",
        ]
    }
    keys = KeySet.parse(document, ("RS256", "ES256", "HS256"))
    assert set(keys.by_kid) == {("rsa-1", "RS256")}
    with pytest.raises(ValueError, match="JWK Set"):
        KeySet.parse({"nope": []}, ("RS256",))


def test_keys_without_kid_are_used_only_when_unambiguous(key_pool: dict[str, SigningKey]) -> None:
    one = KeySet.parse({"keys": [{**key_pool["rsa-1"].public_jwk(), "kid": None}]}, ("RS256",))
    assert one.find(None, "RS256") is not None
    two = KeySet.parse(
        {"keys": [{**k.public_jwk(), "kid": None} for k in (key_pool["rsa-1"], key_pool["rsa-2"])]},
        ("RS256",),
    )
    assert two.find(None, "RS256") is None


@pytest.mark.parametrize(
    ("jwk", "alg", "expected"),
    [
        ({"kty": "RSA"}, "RS256", True),
        ({"kty": "RSA"}, "PS384", True),
        ({"kty": "RSA", "alg": "RS256"}, "PS256", False),
        ({"kty": "RSA", "use": "enc"}, "RS256", False),
        ({"kty": "RSA", "key_ops": ["encrypt"]}, "RS256", False),
        ({"kty": "EC", "crv": "P-256"}, "ES256", True),
        ({"kty": "EC", "crv": "P-384"}, "ES256", False),
        ({"kty": "OKP", "crv": "Ed25519"}, "EdDSA", True),
        ({"kty": "oct"}, "HS256", False),
    ],
)
def test_fits(jwk: dict[str, Any], alg: str, expected: bool) -> None:
    assert fits(jwk, alg) is expected
