"""The state store contract, run against the memory store and a real Redis."""

import asyncio
import secrets

import pytest

from gateway.core.gcra import LimitSpec
from gateway.core.policy import ReuseAction
from gateway.store.base import (
    AdmitRequest,
    PenaltyRule,
    StateStore,
    TokenUse,
    TokenVerdict,
)
from gateway.store.redis import RedisStore

#: fingerprints made under one binding rule share their first 4 characters (the rule tag)
TAG = "7e57"
FP_A, FP_B, FP_C = TAG + "a" * 12, TAG + "b" * 12, TAG + "c" * 12


def use(
    jti: str,
    fp: str,
    *,
    issued: str = "",
    max_fps: int = 1,
    action: ReuseAction = "revoke",
    ttl_ms: int = 60_000,
) -> TokenUse:
    return TokenUse(jti, fp, issued, max_fps, action, ttl_ms)


async def verdict(store: StateStore, token: TokenUse) -> TokenVerdict | None:
    return (await store.admit(AdmitRequest(token=token))).token


def jti() -> str:
    return secrets.token_urlsafe(16)


async def test_first_use_binds_then_same_fingerprint_passes(store: StateStore) -> None:
    t = jti()
    assert await verdict(store, use(t, FP_A)) is TokenVerdict.BOUND
    assert await verdict(store, use(t, FP_A)) is TokenVerdict.OK
    assert await verdict(store, use(t, FP_A)) is TokenVerdict.OK


async def test_other_fingerprint_is_reuse_and_revokes(store: StateStore) -> None:
    t = jti()
    await verdict(store, use(t, FP_A))
    assert await verdict(store, use(t, FP_B)) is TokenVerdict.REUSE
    # revoked for everyone, the original client included
    assert await verdict(store, use(t, FP_A)) is TokenVerdict.REVOKED


async def test_deny_action_refuses_without_revoking(store: StateStore) -> None:
    t = jti()
    await verdict(store, use(t, FP_A, action="deny"))
    assert await verdict(store, use(t, FP_B, action="deny")) is TokenVerdict.REUSE
    assert await verdict(store, use(t, FP_A, action="deny")) is TokenVerdict.OK


async def test_several_fingerprints_allowed_up_to_the_limit(store: StateStore) -> None:
    t = jti()
    assert await verdict(store, use(t, FP_A, max_fps=2)) is TokenVerdict.BOUND
    assert await verdict(store, use(t, FP_B, max_fps=2)) is TokenVerdict.BOUND
    assert await verdict(store, use(t, FP_A, max_fps=2)) is TokenVerdict.OK
    assert await verdict(store, use(t, FP_B, max_fps=2)) is TokenVerdict.OK
    assert await verdict(store, use(t, FP_C, max_fps=2)) is TokenVerdict.REUSE


async def test_bound_at_issue(store: StateStore) -> None:
    t = jti()
    assert await verdict(store, use(t, FP_A, issued=FP_A)) is TokenVerdict.BOUND
    assert await verdict(store, use(t, FP_A, issued=FP_A)) is TokenVerdict.OK
    other = jti()
    assert await verdict(store, use(other, FP_B, issued=FP_A)) is TokenVerdict.REUSE
    assert await verdict(store, use(other, FP_A, issued=FP_A)) is TokenVerdict.REVOKED


async def test_binding_off_never_suspects(store: StateStore) -> None:
    t = jti()
    assert await verdict(store, use(t, "")) is TokenVerdict.OK
    assert await verdict(store, use(t, "")) is TokenVerdict.OK


async def test_records_expire_with_the_token(store: StateStore) -> None:
    t = jti()
    await verdict(store, use(t, FP_A, ttl_ms=1000))
    if isinstance(store, RedisStore):
        ttl = await store.redis.pttl(store.token_key(t))
        assert 0 < ttl <= 1000
    await asyncio.sleep(1.3)
    # the record is gone: a new first use binds again (the token itself has expired by now
    # and the codec refuses it before the store is asked)
    assert await verdict(store, use(t, FP_B, ttl_ms=1000)) is TokenVerdict.BOUND


async def test_limits_admit_burst_then_refuse_with_retry(store: StateStore) -> None:
    spec = LimitSpec(f"burst:{jti()}", interval_us=1_000_000, burst=3)
    results = [await store.admit(AdmitRequest(limits=(spec,))) for _ in range(4)]
    assert [r.limits[0].allowed for r in results] == [True, True, True, False]
    assert [r.limits[0].remaining for r in results[:3]] == [2, 1, 0]
    assert 900 <= results[3].limits[0].retry_ms <= 1000


async def test_a_burst_past_the_connection_pool_waits_and_stays_exact(store: StateStore) -> None:
    """500 calls at once on a client of 8 connections (the Cluster's, per node): each
    waits for a connection instead of failing, and the limit admits exactly its burst."""
    spec = LimitSpec(f"crowd:{jti()}", interval_us=600_000_000, burst=100)
    results = await asyncio.gather(*(store.admit(AdmitRequest(limits=(spec,))) for _ in range(500)))
    assert sum(r.limits[0].allowed for r in results) == 100
    subjects = [f"crowd-{i % 50}-{jti()}" for i in range(500)]
    rule = PenaltyRule(window_ms=60_000, threshold=1_000, cooldown_ms=60_000)
    slots = await asyncio.gather(*(store.reserve_attempt(s, rule) for s in subjects))
    assert all(slot.granted for slot in slots)
    await asyncio.gather(*(store.release_attempt(s) for s in subjects))


async def test_a_denied_request_consumes_nothing(store: StateStore) -> None:
    roomy = LimitSpec(f"roomy:{jti()}", interval_us=1_000_000, burst=10)
    tight = LimitSpec(f"tight:{jti()}", interval_us=60_000_000, burst=1)
    first = await store.admit(AdmitRequest(limits=(roomy, tight)))
    assert [state.allowed for state in first.limits] == [True, True]
    for _ in range(3):
        denied = await store.admit(AdmitRequest(limits=(roomy, tight)))
        assert [state.allowed for state in denied.limits] == [True, False]
    alone = await store.admit(AdmitRequest(limits=(roomy,)))
    assert alone.limits[0].remaining == 8  # only the first request was counted


async def test_denied_request_does_not_bind_the_token(store: StateStore) -> None:
    tight = LimitSpec(f"tight:{jti()}", interval_us=60_000_000, burst=1)
    await store.admit(AdmitRequest(limits=(tight,)))
    t = jti()
    denied = await store.admit(AdmitRequest(token=use(t, FP_A), limits=(tight,)))
    assert not denied.limits[0].allowed
    # not bound by the refused request: another fingerprint may still be first
    assert await verdict(store, use(t, FP_B)) is TokenVerdict.BOUND


async def test_shadow_limits_never_deny(store: StateStore) -> None:
    """A shadow limit past its allowance reports it, and the request still counts
    against the other limits, as an admitted request does."""
    roomy = LimitSpec(f"roomy:{jti()}", interval_us=1_000_000, burst=10)
    shadow = LimitSpec(f"shadow:{jti()}", interval_us=60_000_000, burst=1, shadow=True)
    results = [await store.admit(AdmitRequest(limits=(roomy, shadow))) for _ in range(3)]
    assert [r.limits[1].allowed for r in results] == [True, False, False]
    assert [r.limits[0].remaining for r in results] == [9, 8, 7]


async def test_penalty_box(store: StateStore) -> None:
    rule = PenaltyRule(window_ms=10_000, threshold=3, cooldown_ms=1500)
    subject = f"203.0.113.0/24#{jti()}"
    assert await store.record_failure(subject, rule) == 0
    assert await store.record_failure(subject, rule) == 0
    assert await store.record_failure(subject, rule) == 1500
    boxed = await store.admit(AdmitRequest(penalty_subject=subject))
    assert 1000 < boxed.penalized_ms <= 1500
    assert (await store.admit(AdmitRequest(penalty_subject="someone-else"))).penalized_ms == 0
    await asyncio.sleep(2.0)
    assert (await store.admit(AdmitRequest(penalty_subject=subject))).penalized_ms == 0


# -- attempts counted before they cost (reserve, then fail or release) ---------------------
async def test_attempts_in_flight_hold_places_up_to_the_threshold(store: StateStore) -> None:
    rule = PenaltyRule(window_ms=60_000, threshold=3, cooldown_ms=60_000)
    subject = f"198.51.100.7#{jti()}"
    # at once (as many as the cluster fixture's connection pool takes)
    slots = await asyncio.gather(*(store.reserve_attempt(subject, rule) for _ in range(8)))
    assert [s.granted for s in slots].count(True) == 3  # atomic: never more
    assert all(s.penalized_ms == 0 for s in slots)  # held back, not boxed
    await store.release_attempt(subject)
    assert (await store.reserve_attempt(subject, rule)).granted  # the place is free again
    assert not (await store.reserve_attempt(subject, rule)).granted
    other = await store.reserve_attempt(f"203.0.113.5#{jti()}", rule)
    assert other == (0, True)  # another subject has places of its own


async def test_a_failed_attempt_takes_over_its_place_and_boxes(store: StateStore) -> None:
    rule = PenaltyRule(window_ms=60_000, threshold=3, cooldown_ms=1500)
    subject = f"198.51.100.7#{jti()}"
    for _ in range(3):
        assert (await store.reserve_attempt(subject, rule)).granted
    assert await store.record_failure(subject, rule, reserved=True) == 0
    assert await store.record_failure(subject, rule, reserved=True) == 0
    # two failures and one attempt in flight: still no room
    assert not (await store.reserve_attempt(subject, rule)).granted
    assert await store.record_failure(subject, rule, reserved=True) == 1500
    boxed = await store.reserve_attempt(subject, rule)
    assert not boxed.granted and 1000 < boxed.penalized_ms <= 1500
    assert (await store.admit(AdmitRequest(penalty_subject=subject))).penalized_ms > 1000


async def test_failures_and_attempts_in_flight_share_the_threshold(store: StateStore) -> None:
    rule = PenaltyRule(window_ms=60_000, threshold=3, cooldown_ms=60_000)
    subject = f"198.51.100.7#{jti()}"
    await store.record_failure(subject, rule)  # a malformed key: no reservation
    await store.record_failure(subject, rule)
    assert (await store.reserve_attempt(subject, rule)).granted
    assert not (await store.reserve_attempt(subject, rule)).granted
    await store.release_attempt(subject)  # it verified: only the two failures remain
    assert (await store.reserve_attempt(subject, rule)).granted


async def test_releasing_never_counts_below_zero(store: StateStore) -> None:
    rule = PenaltyRule(window_ms=60_000, threshold=2, cooldown_ms=60_000)
    subject = f"198.51.100.7#{jti()}"
    for _ in range(3):
        await store.release_attempt(subject)  # nothing in flight (expired, or never)
    assert await store.record_failure(subject, rule, reserved=True) == 0
    slots = [await store.reserve_attempt(subject, rule) for _ in range(3)]
    assert [s.granted for s in slots] == [True, False, False]


async def test_attempts_in_flight_expire_with_the_window(store: StateStore) -> None:
    """The places of a replica that died mid-verification are not held forever."""
    rule = PenaltyRule(window_ms=1000, threshold=2, cooldown_ms=60_000)
    subject = f"198.51.100.7#{jti()}"
    for _ in range(2):
        assert (await store.reserve_attempt(subject, rule)).granted
    assert not (await store.reserve_attempt(subject, rule)).granted
    if isinstance(store, RedisStore):
        assert 0 < await store.redis.pttl(store.attempts_key(subject)) <= 1000
    await asyncio.sleep(1.3)
    assert (await store.reserve_attempt(subject, rule)).granted


@pytest.mark.parametrize("store_kind", ["redis"])
async def test_redis_memory_per_live_token_is_small(store: StateStore) -> None:
    assert isinstance(store, RedisStore)
    t = secrets.token_urlsafe(16)
    await verdict(store, use(t, FP_A))
    usage = await store.redis.memory_usage(store.token_key(t))
    assert usage is not None and usage <= 120


async def test_flag_action_admits_without_binding(store: StateStore) -> None:
    t = jti()
    await verdict(store, use(t, FP_A, action="flag"))
    assert await verdict(store, use(t, FP_B, action="flag")) is TokenVerdict.FLAGGED
    assert await verdict(store, use(t, FP_A, action="flag")) is TokenVerdict.OK
    assert await verdict(store, use(t, FP_B, action="flag")) is TokenVerdict.FLAGGED


async def test_peek_reads_without_consuming(store: StateStore) -> None:
    spec = LimitSpec(f"peek:{jti()}", interval_us=1_000_000, burst=3)
    assert (await store.peek((spec,)))[0].remaining == 2
    await store.admit(AdmitRequest(limits=(spec,)))
    for _ in range(3):
        state = (await store.peek((spec,)))[0]
        assert state.allowed
        assert state.remaining == 1


# -- limits scoped to a token live in the token's state ----------------------------------
def scoped(name: str, token: str, *, interval_us: int = 60_000_000, burst: int = 1) -> LimitSpec:
    return LimitSpec(name, interval_us=interval_us, burst=burst, scope=token)


async def test_token_scoped_limits_are_per_token(store: StateStore) -> None:
    a, b = jti(), jti()
    spec_a, spec_b = scoped("send-per-token", a), scoped("send-per-token", b)
    first = await store.admit(AdmitRequest(token=use(a, FP_A), limits=(spec_a,)))
    again = await store.admit(AdmitRequest(token=use(a, FP_A), limits=(spec_a,)))
    other = await store.admit(AdmitRequest(token=use(b, FP_A), limits=(spec_b,)))
    assert [r.limits[0].allowed for r in (first, again, other)] == [True, False, True]
    assert first.token is TokenVerdict.BOUND and again.token is TokenVerdict.OK
    assert 59_000 < again.limits[0].retry_ms <= 60_000


async def test_token_scoped_denial_consumes_nothing_and_binds_nothing(store: StateStore) -> None:
    t = jti()
    roomy = scoped("roomy", t, interval_us=1_000_000, burst=10)
    tight = LimitSpec(f"tight:{jti()}", interval_us=60_000_000, burst=1)
    await store.admit(AdmitRequest(limits=(tight,)))
    denied = await store.admit(AdmitRequest(token=use(t, FP_A), limits=(roomy, tight)))
    assert [state.allowed for state in denied.limits] == [True, False]
    alone = await store.admit(AdmitRequest(token=use(t, FP_B), limits=(roomy,)))
    assert alone.token is TokenVerdict.BOUND  # the refused request did not bind FP_A
    assert alone.limits[0].remaining == 9  # nor count against the token's limit


async def test_token_scoped_limits_without_binding_and_after_revocation(
    store: StateStore,
) -> None:
    t = jti()
    spec = scoped("reads", t, interval_us=1_000_000, burst=2)
    unbound = await store.admit(AdmitRequest(token=use(t, ""), limits=(spec,)))
    assert unbound.token is TokenVerdict.OK and unbound.limits[0].remaining == 1
    assert (await store.peek((spec,)))[0].remaining == 0  # 1 used, the next would be the 2nd
    # no record yet: the first fingerprinted use still binds, and the state is shared
    bound = await store.admit(AdmitRequest(token=use(t, FP_A), limits=(spec,)))
    assert bound.token is TokenVerdict.BOUND and bound.limits[0].remaining == 0
    assert await verdict(store, use(t, FP_B)) is TokenVerdict.REUSE  # revoked for reuse
    assert await verdict(store, use(t, FP_A)) is TokenVerdict.REVOKED


async def test_token_state_expires_with_the_token_and_its_limits(store: StateStore) -> None:
    t = jti()
    spec = scoped("send-per-token", t, interval_us=1_500_000, burst=1)
    await store.admit(AdmitRequest(token=use(t, FP_A, ttl_ms=1000), limits=(spec,)))
    if isinstance(store, RedisStore):
        assert await store.redis.exists(store.limit_key("send-per-token")) == 0
        ttl = await store.redis.pttl(store.token_key(t))
        assert 1000 < ttl <= 1500  # the TAT outlives the record: the hash lives as long
    await asyncio.sleep(1.1)
    refused = await store.admit(AdmitRequest(token=use(t, FP_A, ttl_ms=1000), limits=(spec,)))
    assert not refused.limits[0].allowed  # the limit's state is still there
    await asyncio.sleep(0.5)
    # all gone together: the limit has room and the record binds anew
    fresh = await store.admit(AdmitRequest(token=use(t, FP_B, ttl_ms=1000), limits=(spec,)))
    assert fresh.limits[0].allowed and fresh.token is TokenVerdict.BOUND


@pytest.mark.parametrize("store_kind", ["redis"])
async def test_one_small_hash_per_live_token(store: StateStore) -> None:
    """The shipped policies' token state (record and two TATs) in one key, under 200 bytes."""
    assert isinstance(store, RedisStore)
    t = secrets.token_urlsafe(16)
    limits = (scoped("send-per-token", t), scoped("send-per-conversation", t))
    await store.admit(AdmitRequest(token=use(t, FP_A), limits=limits))
    fields = await store.redis.hkeys(store.token_key(t))
    assert sorted(fields) == [b"r", b"send-per-conversation", b"send-per-token"]
    usage = await store.redis.memory_usage(store.token_key(t))
    assert usage is not None and usage <= 200


async def test_a_new_binding_rule_binds_again_instead_of_suspecting(store: StateStore) -> None:
    """After a policy reload changes the binding rule, fingerprints carry another tag:
    live tokens are bound again at their next use, not taken for stolen."""
    t, at_issue = jti(), jti()
    assert await verdict(store, use(t, FP_A)) is TokenVerdict.BOUND
    new_rule = "9c9c" + "a" * 12
    assert await verdict(store, use(t, new_rule)) is TokenVerdict.BOUND
    assert await verdict(store, use(t, new_rule)) is TokenVerdict.OK
    assert await verdict(store, use(t, "9c9c" + "b" * 12)) is TokenVerdict.REUSE
    # a fingerprint signed into the token under the old rule no longer decides either
    assert await verdict(store, use(at_issue, new_rule, issued=FP_A)) is TokenVerdict.BOUND
    # a revocation holds whatever the rule
    assert await verdict(store, use(t, FP_A)) is TokenVerdict.REVOKED


async def test_bursts_are_exact_for_any_interval(store: StateStore) -> None:
    """Intervals that are no whole number of milliseconds: both stores admit exactly
    ``burst`` at once from idle, then refuse."""
    for rate, per_us, burst in ((3, 2_000_000, 3), (6, 1_000_000, 6), (7, 60_000_000, 5)):
        spec = LimitSpec(f"odd:{jti()}", interval_us=round(per_us / rate), burst=burst)
        results = [await store.admit(AdmitRequest(limits=(spec,))) for _ in range(burst + 1)]
        assert [r.limits[0].allowed for r in results] == [True] * burst + [False]
        assert [r.limits[0].remaining for r in results[:burst]] == list(range(burst - 1, -1, -1))
