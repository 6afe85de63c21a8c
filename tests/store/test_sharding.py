"""``store.sharding: key`` on a real three-master Redis Cluster: each agent key's
admissions keep every key (token, family, limits) in that key's slot, in one script call,
and the keys spread over the primaries; renewal keeps working in a shard; a hot key's
sub-buckets stay within their bound; and a switch on a live deployment keeps old
conversations (and their revocations) on the old layout until they end."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from gateway.admission import Admissions
from gateway.core.breaker import CircuitBreaker
from gateway.core.gcra import LimitSpec
from gateway.core.redis_keys import StateKeys
from gateway.core.sharding import Sharding
from gateway.errors import ProblemError
from gateway.observability.metrics import Metrics
from gateway.redis_connect import connect
from gateway.store.base import (
    AdmitRequest,
    FamilyCheck,
    ProofUse,
    StateStore,
    TokenUse,
    TokenVerdict,
)
from gateway.store.guarded import GuardedStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from tests.store.test_admissions import CODEC, ELSEWHERE, VISITOR, policies_at
from tests.support.clock import FixedClock
from tests.support.processes import free_port

FP_A = "7e57" + "a" * 12
DAY_US = 86_400_000_000
FAMILY_TTL_MS = 3_600_000


@pytest.fixture
async def cluster_store(cluster_url: str) -> AsyncIterator[RedisStore]:
    client = connect(cluster_url, socket_timeout=2, max_connections=8)
    store = RedisStore(client, prefix=f"sh{uuid.uuid4().hex[:6]}", max_calls=8)
    await store.start()
    yield store
    await store.close()


def key_ids(count: int) -> list[str]:
    return [f"Key{i:09d}" for i in range(count)]


def cluster_of(store: RedisStore) -> RedisCluster:
    assert isinstance(store.redis, RedisCluster)
    return store.redis


async def use(
    store: RedisStore,
    shard: str | None,
    jti: str,
    cid: str,
    *,
    successor: str = "",
    overlap_ms: int = 600_000,
    limits: tuple[LimitSpec, ...] = (),
) -> tuple[TokenVerdict | None, bool, str]:
    request = AdmitRequest(
        token=TokenUse(jti, FP_A, "", 1, "revoke", 60_000),
        limits=limits,
        family=FamilyCheck(cid, overlap_ms, FAMILY_TTL_MS, successor),
        shard=shard,
    )
    admission = await store.admit(request)
    renewed = admission.renewed.jti if admission.renewed else ""
    return admission.token, all(s.allowed for s in admission.limits), renewed


async def test_each_key_s_admissions_stay_in_its_slot_and_keys_spread_over_primaries(
    cluster_store: RedisStore,
) -> None:
    cluster = cluster_of(cluster_store)
    primaries: dict[str, int] = {}
    for key_id in key_ids(30):
        jti, cid = secrets.token_urlsafe(12), str(uuid.uuid4())
        per_key = LimitSpec(f"per-key:{key_id}", DAY_US, 5)
        per_conversation = LimitSpec("per-conversation", DAY_US, 5, scope=jti)
        limits = (per_key, per_conversation)
        # a use, then a renewal that rotates the family: one call each, no CROSSSLOT
        assert await use(cluster_store, key_id, jti, cid, limits=limits) == (
            TokenVerdict.BOUND,
            True,
            "",
        )
        _, allowed, renewed = await use(cluster_store, key_id, jti, cid, successor="s" + jti)
        assert allowed and renewed == "s" + jti
        built = cluster_store.keys.for_admission(key_id)
        written = [built.token(jti), built.family(cid), built.limit(per_key.key)]
        assert await cluster.exists(*written) == 3, key_id
        nodes = {cluster.get_node_from_key(k).name for k in written}
        assert len(nodes) == 1
        node = nodes.pop()
        primaries[node] = primaries.get(node, 0) + 1
        # nothing under the store's one tag
        assert not await cluster.exists(cluster_store.keys.family(cid))
    assert len(primaries) == 3, primaries  # 30 keys land on every primary


async def test_renewal_in_a_shard_rotates_and_a_late_retired_token_revokes_the_family(
    cluster_store: RedisStore,
) -> None:
    shard = Sharding().shard("Key000000001", "c", 1).name
    first, cid = secrets.token_urlsafe(12), str(uuid.uuid4())
    assert (await use(cluster_store, shard, first, cid))[0] is TokenVerdict.BOUND
    _, _, second = await use(cluster_store, shard, first, cid, successor="second", overlap_ms=0)
    assert second == "second"
    assert (await use(cluster_store, shard, "second", cid))[0] is TokenVerdict.BOUND
    await asyncio.sleep(0.01)  # past the (zero) overlap
    assert (await use(cluster_store, shard, first, cid, overlap_ms=0))[0] is (TokenVerdict.REPLAYED)
    assert (await use(cluster_store, shard, "second", cid))[0] is TokenVerdict.FAMILY_REVOKED


async def test_a_hot_key_s_sub_buckets_admit_at_most_buckets_minus_one_over_its_burst(
    cluster_store: RedisStore,
) -> None:
    """A per-key limit of burst 10 (and a rate of one a day: no refill during the test)
    over 4 sub-buckets of burst ceil(10/4) = 3: 200 conversations reach every sub-bucket,
    and the whole key admits 12 = 10 + (4 - 1), not one more."""
    buckets, burst, key_id = 4, 10, "HotKey000001"
    whole = LimitSpec(f"per-key:{key_id}", DAY_US, burst)
    allowed, sharding = 0, Sharding(cluster_store.keys.tag[1:-1])
    for _ in range(200):
        cid = str(uuid.uuid4())
        shard = sharding.shard(key_id, cid, buckets)
        spec = shard.split(whole, whole_key=True)
        assert spec.interval_us == DAY_US * buckets
        _, ok, _ = await use(
            cluster_store, shard.name, secrets.token_urlsafe(12), cid, limits=(spec,)
        )
        allowed += ok
    assert burst <= allowed <= burst + buckets - 1
    assert allowed == buckets * -(-burst // buckets)


# -- a live switch -----------------------------------------------------------------------
POLICIES = """
binding:
  bind_at: first_use
  components: [ip_prefix, user_agent]
  action: revoke
policies:
  - name: send-per-key
    match: {routes: [send, refresh]}
    partition: [api_key]
    limit: {rate: 1000, per: 1m, burst: 100}
"""
KEY = "MigrateKey01"


def admissions_on(
    store: StateStore,
    tmp_path: Path,
    clock: FixedClock,
    sharding: Sharding | None,
    policies: str = POLICIES,
) -> Admissions:
    folder = tmp_path / uuid.uuid4().hex[:6]
    folder.mkdir()
    return Admissions(
        CODEC,
        store,
        policies_at(folder, policies),
        fallback=MemoryStore(),
        key_active=lambda _: True,
        max_token_chars=2048,
        metrics=Metrics(),
        sharding=sharding,
        clock=clock,
    )


async def test_switching_sharding_on_keeps_live_tokens_and_their_revocations(
    cluster_store: RedisStore, tmp_path: Path
) -> None:
    clock = FixedClock()
    before = admissions_on(cluster_store, tmp_path, clock, None)
    assert before.shards(KEY) == 0
    live = CODEC.issue(key_id=KEY, model_id="demo", now=clock(), shards=0)
    stolen = CODEC.issue(key_id=KEY, model_id="demo", now=clock(), shards=0)
    await before.use_token(live.claims, VISITOR, "send", "POST")
    await before.use_token(stolen.claims, VISITOR, "send", "POST")
    with pytest.raises(ProblemError):  # used elsewhere: revoked, with its family
        await before.use_token(stolen.claims, ELSEWHERE, "send", "POST")

    # the switch: new replicas, nothing carried over but the store
    after = admissions_on(cluster_store, tmp_path, clock, Sharding(enabled=True))
    assert after.shards(KEY) == 1
    with pytest.raises(ProblemError) as info:  # the revocation is not lost
        await after.use_token(stolen.claims, VISITOR, "send", "POST")
    assert info.value.code in {"token_revoked", "token_reuse_suspected"}
    await after.use_token(live.claims, VISITOR, "send", "POST")  # still bound, still ok
    _, renewed = await after.renew_token(live.claims, VISITOR, "POST", "successor-jti-1")
    successor = CODEC.renew(
        live.claims, jti=renewed.jti, issued_at=int(clock()), fingerprint=None
    ).claims
    assert successor.shards == 0  # the conversation keeps its layout
    one_tag = cluster_store.keys
    cluster = cluster_of(cluster_store)
    assert await cluster.exists(one_tag.family(live.claims.conversation_id))
    by_key = cluster_store.keys.for_admission(KEY)
    assert not await cluster.exists(by_key.family(live.claims.conversation_id))
    await after.use_token(successor, VISITOR, "send", "POST")

    # a new conversation is sharded, and so are its renewals
    fresh = CODEC.issue(key_id=KEY, model_id="demo", now=clock(), shards=after.shards(KEY))
    assert fresh.claims.shards == 1
    await after.use_token(fresh.claims, VISITOR, "send", "POST")
    assert await cluster.exists(by_key.token(fresh.claims.jti))
    assert not await cluster.exists(one_tag.token(fresh.claims.jti))
    renewed_fresh = CODEC.renew(fresh.claims, jti="j2", issued_at=int(clock()), fingerprint=None)
    assert renewed_fresh.claims.shards == 1
    # and a switch back off keeps it sharded until it ends
    back = admissions_on(cluster_store, tmp_path, clock, None)
    await back.use_token(fresh.claims, VISITOR, "send", "POST")
    record = await cluster.hget(by_key.token(fresh.claims.jti), "r")
    assert record is not None


def test_the_key_builder_of_an_unsharded_store_is_its_own() -> None:
    keys = StateKeys("gw")
    request = AdmitRequest()
    assert request.shard is None and keys.for_admission(request.shard) is keys


async def test_peek_reads_a_key_s_limits_in_its_shard(cluster_store: RedisStore) -> None:
    """What ``gateway policies explain --key-id`` shows under ``sharding: key``."""
    spec = LimitSpec("per-key:Key000000002", DAY_US, 5)
    await cluster_store.admit(AdmitRequest(limits=(spec,), shard="Key000000002"))
    (sharded,) = await cluster_store.peek((spec,), "Key000000002")
    (one_tag,) = await cluster_store.peek((spec,))
    assert sharded.remaining == one_tag.remaining - 1  # one taken, in the shard only


FAIL_OPEN_PER_KEY = """
on_store_error: fail_open
policies:
  - name: send-per-key
    match: {routes: [send]}
    partition: [api_key]
    limit: {rate: 1, per: 1h, burst: 8}
"""


async def test_a_hot_key_failing_open_gets_its_limit_as_configured_locally(
    tmp_path: Path,
) -> None:
    """The store refuses connections (nothing listens on its port) and the policies fail
    open: the local store gets the hot key's limit whole (burst 8), not one sub-bucket's
    share (ceil(8 / 4) = 2) under one name."""
    dead = GuardedStore(
        RedisStore(redis.asyncio.Redis(port=free_port()), prefix="gw"),
        timeout=0.5,
        breaker=CircuitBreaker(1, 60.0),  # open after the first failure: no more waits
    )
    clock = FixedClock()
    hot = Sharding("gw", {KEY: 4}, enabled=True)
    admissions = admissions_on(dead, tmp_path, clock, hot, FAIL_OPEN_PER_KEY)
    statuses = []
    for _ in range(20):
        claims = CODEC.issue(key_id=KEY, model_id="demo", now=clock(), shards=4).claims
        try:
            await admissions.use_token(claims, VISITOR, "send", "POST")
            statuses.append(200)
        except ProblemError as err:
            statuses.append(429 if err.code == "rate_limited" else 0)
    assert statuses == [200] * 8 + [429] * 12
    assert admissions.failing_open


async def test_a_proof_s_replay_record_lives_in_its_admission_s_shard(
    cluster_store: RedisStore,
) -> None:
    """A DPoP proof's replay key carries the shard's tag like the token's and family's
    keys: one script on one node (a key under the store's one tag was a cross-slot call),
    and a replay inside the shard is caught."""
    proof = ProofUse(secrets.token_hex(16), 60_000)
    request = AdmitRequest(
        token=TokenUse("J" * 22, "", "", 1, "revoke", 60_000),
        family=FamilyCheck(str(uuid.uuid4()), 10_000, FAMILY_TTL_MS),
        proof=proof,
        shard="Key000000001",
    )
    assert (await cluster_store.admit(request)).token is TokenVerdict.OK
    assert (await cluster_store.admit(request)).token is TokenVerdict.PROOF_REPLAYED
    built = cluster_store.keys.for_admission("Key000000001")
    assert await cluster_of(cluster_store).exists(built.proof(proof.replay_id)) == 1
