"""DPoP proofs in the state store (memory, Redis through the pipe and through redis-py,
Redis Cluster): a proof's key and jti pass once within its window, in the admission's one
call; a refused request does not use the proof up; a valid proof by another key than the
token's revokes the token's family."""

import asyncio
import secrets
import uuid

from gateway.core.gcra import LimitSpec
from gateway.store.base import (
    AdmitRequest,
    FamilyCheck,
    ProofUse,
    StateStore,
    TokenUse,
    TokenVerdict,
)
from gateway.store.redis import RedisStore

TTL_MS = 60_000


def replay_id() -> str:
    return secrets.token_hex(16)


def token_request(jti: str, cid: str, proof: ProofUse | None, **kwargs: object) -> AdmitRequest:
    use = TokenUse(jti, "", "", 1, "revoke", 60_000)
    family = FamilyCheck(cid, 10_000, 3_600_000)
    return AdmitRequest(token=use, family=family, proof=proof, **kwargs)  # type: ignore[arg-type]


async def test_a_proof_passes_once_with_a_token(store: StateStore) -> None:
    jti, cid, proof = secrets.token_urlsafe(16), str(uuid.uuid4()), ProofUse(replay_id(), TTL_MS)
    assert (await store.admit(token_request(jti, cid, proof))).token is TokenVerdict.OK
    again = await store.admit(token_request(jti, cid, proof))
    assert again.token is TokenVerdict.PROOF_REPLAYED
    fresh = ProofUse(replay_id(), TTL_MS)
    assert (await store.admit(token_request(jti, cid, fresh))).token is TokenVerdict.OK


async def test_a_proof_passes_once_without_a_token(store: StateStore) -> None:
    proof = ProofUse(replay_id(), TTL_MS)
    assert (await store.admit(AdmitRequest(proof=proof))).token is None
    replayed = await store.admit(AdmitRequest(proof=proof))
    assert replayed.token is TokenVerdict.PROOF_REPLAYED


async def test_concurrent_replays_pass_exactly_once(store: StateStore) -> None:
    proof = ProofUse(replay_id(), TTL_MS)
    answers = await asyncio.gather(*(store.admit(AdmitRequest(proof=proof)) for _ in range(8)))
    assert sorted(str(a.token) for a in answers) == ["None"] + ["proof_replayed"] * 7


async def test_a_proof_passes_again_once_out_of_its_window(store: StateStore) -> None:
    proof = ProofUse(replay_id(), 1000)  # the shortest the store keeps
    assert (await store.admit(AdmitRequest(proof=proof))).token is None
    assert (await store.admit(AdmitRequest(proof=proof))).token is TokenVerdict.PROOF_REPLAYED
    await asyncio.sleep(1.2)  # the verifier refuses the proof by then: its iat is too old
    assert (await store.admit(AdmitRequest(proof=proof))).token is None


async def test_a_rate_limited_request_does_not_use_the_proof_up(store: StateStore) -> None:
    limit = LimitSpec(f"proofs-{uuid.uuid4()}", 60_000_000, 1)
    first = ProofUse(replay_id(), TTL_MS)
    assert (await store.admit(AdmitRequest(limits=(limit,), proof=first))).limits[0].allowed
    second = ProofUse(replay_id(), TTL_MS)
    refused = await store.admit(AdmitRequest(limits=(limit,), proof=second))
    assert not refused.limits[0].allowed
    assert (await store.admit(AdmitRequest(proof=second))).token is None  # not seen before


async def test_a_proof_by_another_key_revokes_the_family(store: StateStore) -> None:
    cid, jti, sibling = str(uuid.uuid4()), secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    assert (await store.admit(token_request(jti, cid, ProofUse(replay_id(), TTL_MS)))).token
    stolen = ProofUse(replay_id(), TTL_MS, key_mismatch=True)
    assert (await store.admit(token_request(jti, cid, stolen))).token is TokenVerdict.REUSE
    owner = ProofUse(replay_id(), TTL_MS)
    refused = await store.admit(token_request(jti, cid, owner))
    assert refused.token is TokenVerdict.FAMILY_REVOKED
    later = await store.admit(token_request(sibling, cid, ProofUse(replay_id(), TTL_MS)))
    assert later.token is TokenVerdict.FAMILY_REVOKED


async def test_a_proof_by_another_key_revokes_a_token_without_a_family(store: StateStore) -> None:
    jti = secrets.token_urlsafe(16)
    use = TokenUse(jti, "", "", 1, "revoke", 60_000)
    stolen = ProofUse(replay_id(), TTL_MS, key_mismatch=True)
    assert (await store.admit(AdmitRequest(token=use, proof=stolen))).token is TokenVerdict.REUSE
    owner = ProofUse(replay_id(), TTL_MS)
    assert (await store.admit(AdmitRequest(token=use, proof=owner))).token is TokenVerdict.REVOKED


async def test_the_proof_key_is_in_the_token_s_slot_and_expires(store: StateStore) -> None:
    if not isinstance(store, RedisStore):
        return
    rid = replay_id()
    await store.admit(AdmitRequest(proof=ProofUse(rid, TTL_MS)))
    key = store.keys.proof(rid)
    assert key.startswith(store.keys.tag + ":pj:")
    assert 0 < await store.redis.pttl(key) <= TTL_MS
