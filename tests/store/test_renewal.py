"""Token families in the state store (memory, Redis through the pipe and through redis-py,
Redis Cluster): a renewal rotates the family in the admission's one call; the retired
token passes within the overlap and its second renewal gets the same successor; after
the overlap it is reuse and revokes the whole family; a refused renewal rotates nothing;
the family record is small and expires with the conversation."""

import asyncio
import secrets
import uuid

from gateway.core.gcra import LimitSpec
from gateway.core.policy import ReuseAction
from gateway.store.base import (
    REFUSING_VERDICTS,
    Admission,
    AdmitRequest,
    FamilyCheck,
    StateStore,
    TokenUse,
    TokenVerdict,
)
from gateway.store.redis import RedisStore

TAG = "7e57"
FP_A, FP_B = TAG + "a" * 12, TAG + "b" * 12
#: an overlap that a test outlives by sleeping past it, and one no test outlives
SHORT_MS, LONG_MS = 30, 600_000
FAMILY_TTL_MS = 3_600_000
#: what docs/operations.md promises for a family record
MAX_FAMILY_BYTES = 200


def jti() -> str:
    return secrets.token_urlsafe(16)


def conversation() -> str:
    return str(uuid.uuid4())


async def admit(
    store: StateStore,
    token: str,
    cid: str,
    *,
    successor: str = "",
    overlap_ms: int = LONG_MS,
    fp: str = FP_A,
    action: ReuseAction = "revoke",
    limits: tuple[LimitSpec, ...] = (),
) -> Admission:
    use = TokenUse(token, fp, "", 1, action, 60_000)
    family = FamilyCheck(cid, overlap_ms, FAMILY_TTL_MS, successor)
    return await store.admit(AdmitRequest(token=use, limits=limits, family=family))


async def renew(store: StateStore, token: str, cid: str, **kwargs: object) -> Admission:
    return await admit(store, token, cid, successor=jti(), **kwargs)  # type: ignore[arg-type]


async def test_a_renewal_rotates_and_the_successor_passes(store: StateStore) -> None:
    cid, first = conversation(), jti()
    assert (await admit(store, first, cid)).token is TokenVerdict.BOUND
    successor = jti()
    renewed = await admit(store, first, cid, successor=successor)
    assert renewed.token not in REFUSING_VERDICTS
    assert renewed.renewed is not None and renewed.renewed.jti == successor
    used = await admit(store, successor, cid)
    assert used.token is TokenVerdict.BOUND and used.renewed is None
    # within the overlap the retired token still passes (a request in flight)
    assert (await admit(store, first, cid)).token is TokenVerdict.OK
    # and the successor renews in turn: the family goes on
    third = await renew(store, successor, cid)
    assert third.renewed is not None and third.renewed.jti not in (first, successor)


async def test_a_concurrent_second_renewal_gets_the_same_successor(store: StateStore) -> None:
    cid, first = conversation(), jti()
    answers = await asyncio.gather(*(renew(store, first, cid) for _ in range(8)))
    successors = {answer.renewed for answer in answers}
    assert len(successors) == 1 and None not in successors  # same jti, same issue time
    (only,) = successors
    assert only is not None
    assert (await admit(store, only.jti, cid)).token not in REFUSING_VERDICTS


async def test_a_retired_token_after_the_overlap_revokes_the_family(store: StateStore) -> None:
    cid, first = conversation(), jti()
    renewed = (await renew(store, first, cid, overlap_ms=SHORT_MS)).renewed
    assert renewed is not None
    await asyncio.sleep(SHORT_MS * 3 / 1000)  # past the overlap
    assert (await admit(store, first, cid, overlap_ms=SHORT_MS)).token is TokenVerdict.REPLAYED
    # every token of the conversation is refused now, the newest included
    newest = await admit(store, renewed.jti, cid, overlap_ms=SHORT_MS)
    assert newest.token is TokenVerdict.FAMILY_REVOKED
    again = await renew(store, renewed.jti, cid, overlap_ms=SHORT_MS)
    assert again.token is TokenVerdict.FAMILY_REVOKED and again.renewed is None


async def test_renewing_a_retired_token_after_the_overlap_is_reuse(store: StateStore) -> None:
    cid, first = conversation(), jti()
    renewed = (await renew(store, first, cid, overlap_ms=SHORT_MS)).renewed
    assert renewed is not None
    await asyncio.sleep(SHORT_MS * 3 / 1000)
    replay = await renew(store, first, cid, overlap_ms=SHORT_MS)
    assert replay.token is TokenVerdict.REPLAYED and replay.renewed is None
    assert (await admit(store, renewed.jti, cid)).token is TokenVerdict.FAMILY_REVOKED


async def test_an_older_generation_is_reuse_even_within_the_overlap(store: StateStore) -> None:
    cid, first = conversation(), jti()
    second = (await renew(store, first, cid)).renewed
    assert second is not None
    third = (await renew(store, second.jti, cid)).renewed
    assert third is not None
    # the first token was retired two rotations ago: no overlap covers it any more
    assert (await admit(store, first, cid)).token is TokenVerdict.REPLAYED
    assert (await admit(store, third.jti, cid)).token is TokenVerdict.FAMILY_REVOKED


async def test_a_renewal_from_another_client_revokes_the_family(store: StateStore) -> None:
    cid, first = conversation(), jti()
    await admit(store, first, cid, fp=FP_A)
    stolen = await renew(store, first, cid, fp=FP_B)
    assert stolen.token is TokenVerdict.REUSE and stolen.renewed is None
    assert (await admit(store, first, cid, fp=FP_A)).token is TokenVerdict.REVOKED
    assert (await admit(store, jti(), cid, fp=FP_A)).token is TokenVerdict.FAMILY_REVOKED


async def test_a_renewal_refused_by_a_limit_rotates_nothing(store: StateStore) -> None:
    cid, first = conversation(), jti()
    once = (LimitSpec(f"refresh-{uuid.uuid4().hex}", 3_600_000_000, 1),)
    renewed = (await renew(store, first, cid, limits=once)).renewed
    assert renewed is not None
    refused = await renew(store, renewed.jti, cid, limits=once)
    assert not refused.limits[0].allowed and refused.renewed is None
    # the successor is still the newest: its own use passes, its predecessor too
    assert (await admit(store, renewed.jti, cid)).token not in REFUSING_VERDICTS
    assert (await admit(store, first, cid)).token is TokenVerdict.OK


async def test_uses_without_a_renewal_write_no_family(store: StateStore) -> None:
    cid, first = conversation(), jti()
    for _ in range(3):
        answer = await admit(store, first, cid)
        assert answer.token not in REFUSING_VERDICTS and answer.renewed is None
    if isinstance(store, RedisStore):
        assert not await store.redis.exists(store.keys.family(cid))


async def test_the_family_record_is_small_and_expires_with_the_conversation(
    store: StateStore,
) -> None:
    if not isinstance(store, RedisStore):
        return  # what Redis keeps; the memory store has no bytes to count
    cid, first = conversation(), jti()
    second = (await renew(store, first, cid)).renewed
    assert second is not None
    await renew(store, second.jti, cid)
    key = store.keys.family(cid)
    size = await store.redis.memory_usage(key)
    ttl = await store.redis.pttl(key)
    print(f"family record: {size} bytes of Redis (MEMORY USAGE)")
    assert size is not None and size <= MAX_FAMILY_BYTES, size
    assert FAMILY_TTL_MS - 60_000 < ttl <= FAMILY_TTL_MS
    # revoked, it keeps its size and its expiry
    await admit(store, first, cid)
    revoked_size = await store.redis.memory_usage(key)
    assert revoked_size is not None and revoked_size <= MAX_FAMILY_BYTES, revoked_size
    assert 0 < await store.redis.pttl(key) <= FAMILY_TTL_MS
