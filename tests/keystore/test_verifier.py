"""``KeyVerifier`` on both key stores, with a fixed clock: refusals cheapest first, argon2
paid once per key while the cache vouches for it (on the clock it is given), shared by
concurrent requests, bounded, and every outcome counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.config import Config
from gateway.core import agent_keys
from gateway.core.key_hash import VerifiedKeyCache
from gateway.keystore.admin import create_key
from gateway.keystore.base import KeyStore, utcnow
from gateway.keystore.factory import open_keystore
from gateway.keystore.verifier import KeyRejected, KeyVerifier, VerifierBusy
from gateway.observability.metrics import Metrics
from tests.support.clock import FixedClock

CACHE_SECONDS = 60


@pytest.fixture
async def key_store(keys_config: Config) -> AsyncIterator[KeyStore]:
    store = open_keystore(keys_config)
    yield store
    await store.close()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def verifier(key_store: KeyStore, clock: FixedClock) -> Iterator[KeyVerifier]:
    verifier = KeyVerifier(
        key_store, VerifiedKeyCache(CACHE_SECONDS, 100), clock=clock, metrics=Metrics()
    )
    yield verifier
    verifier.close()


async def new_key(config: Config, store: KeyStore) -> str:
    key, _ = await create_key(config, ["demo"])
    await store.refresh()
    return key


def counted(verifier: KeyVerifier, result: str) -> float:
    value = verifier.metrics.registry.get_sample_value(
        "gateway_key_verifications_total", {"result": result}
    )
    return value or 0.0


def other_secret(key: str) -> str:
    """The same key id with another secret and a valid checksum."""
    parsed = agent_keys.parse(key)
    assert parsed is not None
    secret = "A" * agent_keys.SECRET_LEN
    body = f"{agent_keys.PREFIX}{parsed.key_id}_{secret}"
    return body + agent_keys._checksum(body)


async def test_a_right_key_is_verified_once_while_the_cache_vouches(
    keys_config: Config, key_store: KeyStore, verifier: KeyVerifier, clock: FixedClock
) -> None:
    key = await new_key(keys_config, key_store)
    first = verifier.candidate(key)
    assert not first.verified
    record = await verifier.confirm(first)
    assert record.key_id == first.record.key_id and verifier.hash_verifications == 1
    clock.advance(CACHE_SECONDS - 1)
    again = verifier.candidate(key)
    assert again.verified
    assert await verifier.confirm(again) == record and verifier.hash_verifications == 1
    clock.advance(1)  # the cache no longer vouches: argon2 again
    late = verifier.candidate(key)
    assert not late.verified
    await verifier.confirm(late)
    assert verifier.hash_verifications == 2
    assert counted(verifier, "verified") == 2 and counted(verifier, "cache_hit") == 1


@pytest.mark.parametrize(
    ("presented", "reason"),
    [("pak_nonsense", "malformed"), ("unknown", "unknown"), ("revoked", "revoked")],
)
async def test_refusals_before_any_hashing(
    keys_config: Config,
    key_store: KeyStore,
    verifier: KeyVerifier,
    presented: str,
    reason: str,
) -> None:
    key = await new_key(keys_config, key_store)
    if presented == "unknown":
        presented = agent_keys.generate().key
    elif presented == "revoked":
        parsed = agent_keys.parse(key)
        assert parsed is not None
        await key_store.revoke(parsed.key_id, utcnow())
        await key_store.refresh()
        presented = key
    with pytest.raises(KeyRejected) as info:
        await verifier.resolve(presented)
    assert info.value.reason == reason
    assert verifier.hash_verifications == 0
    assert counted(verifier, reason) == 1


async def test_a_wrong_secret_costs_argon2_and_is_not_remembered(
    keys_config: Config, key_store: KeyStore, verifier: KeyVerifier
) -> None:
    key = await new_key(keys_config, key_store)
    wrong = other_secret(key)
    for attempt in (1, 2):
        with pytest.raises(KeyRejected) as info:
            await verifier.confirm(verifier.candidate(wrong))
        assert info.value.reason == "wrong_secret"
        assert verifier.hash_verifications == attempt
    assert counted(verifier, "wrong_secret") == 2
    assert not verifier.candidate(key).verified  # the right key was never confirmed


async def test_a_key_created_elsewhere_is_found_in_the_store(
    keys_config: Config, key_store: KeyStore, verifier: KeyVerifier
) -> None:
    await key_store.refresh()
    key, _ = await create_key(keys_config, ["demo"])  # not in this snapshot yet
    candidate = await verifier.resolve(key)
    assert (await verifier.confirm(candidate)).key_id == candidate.record.key_id


async def test_concurrent_requests_share_one_verification(
    keys_config: Config, key_store: KeyStore, verifier: KeyVerifier
) -> None:
    key = await new_key(keys_config, key_store)
    candidates = [verifier.candidate(key) for _ in range(5)]
    first = asyncio.ensure_future(verifier.confirm(candidates[0]))
    await asyncio.sleep(0)
    assert verifier.verifying(candidates[1])
    records = await asyncio.gather(first, *(verifier.confirm(c) for c in candidates[1:]))
    assert len({r.key_id for r in records}) == 1
    assert verifier.hash_verifications == 1


async def test_verifications_waiting_are_bounded(
    keys_config: Config, key_store: KeyStore, clock: FixedClock
) -> None:
    busy = KeyVerifier(
        key_store,
        VerifiedKeyCache(CACHE_SECONDS, 100),
        max_pending=1,
        clock=clock,
        metrics=Metrics(),
    )
    try:
        key = await new_key(keys_config, key_store)
        running = asyncio.ensure_future(busy.confirm(busy.candidate(key)))
        await asyncio.sleep(0)
        with pytest.raises(VerifierBusy):
            await busy.confirm(busy.candidate(other_secret(key)))
        await running
    finally:
        busy.close()
