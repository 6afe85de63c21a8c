"""The shared store: every decision is one Lua script call (one round trip).

Each live token has one small hash (``{prefix}:ts:<jti>``) holding its record and the state
of the limits partitioned by it or its conversation, expiring with it (see admit.lua);
other limits, the penalty box, failure counts and attempts in flight are keys of their
own.

All keys of one admission carry the same hash tag, so a script that touches a token
record, its family, the penalty box and several rate-limit counters is valid on Redis
Cluster: ``{prefix}`` for all (one slot for the deployment), or with ``store.sharding:
key`` the admission's agent key's ``{prefix:<key id>}`` (``AdmitRequest.shard``), which
spreads keys over the Cluster's primaries (see docs/operations.md). Scripts are shipped
as files in the package, loaded once and called by SHA.

The per-request ``admit`` call goes through a :class:`~gateway.store.pipeline.RedisPipe`
when one is given (standalone Redis: one pipelined connection, far less CPU per call);
otherwise, and for every other operation, through the redis-py client.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from gateway.core.gcra import EPOCH_US, LimitSpec, LimitState, evaluate
from gateway.core.redis_keys import StateKeys
from gateway.redis_connect import AnyRedis
from gateway.store.base import (
    REUSE_ACTION_CODES,
    Admission,
    AdmitRequest,
    AttemptSlot,
    PenaltyRule,
    Renewed,
    TokenVerdict,
    record_ttl_ms,
)
from gateway.store.pipeline import RedisPipe

#: the script's verdicts as Redis sends them (bytes); '' when no token was checked
_VERDICTS: dict[bytes, TokenVerdict | None] = {
    b"": None,
    **{verdict.value.encode(): verdict for verdict in TokenVerdict},
}


def _verdict(raw: Any) -> TokenVerdict | None:
    if isinstance(raw, bytes) and raw in _VERDICTS:
        return _VERDICTS[raw]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return TokenVerdict(text) if text else None  # an unknown verdict raises ValueError


#: admit.lua's times are milliseconds since gateway.core.gcra's epoch
EPOCH_MS = EPOCH_US // 1000
#: admit.lua's arguments for no family
NO_FAMILY = (0, "", 0, 0, "")
#: admit.lua's arguments for no DPoP proof
NO_PROOF = (0, 0)


def _renewed(jti: Any, issued_ms: Any) -> Renewed | None:
    if not jti:
        return None
    text = jti.decode() if isinstance(jti, bytes) else str(jti)
    return Renewed(text, int(issued_ms) + EPOCH_MS)


def _lua(name: str) -> str:
    return resources.files("gateway.store").joinpath("lua", name).read_text(encoding="utf-8")


class RedisStore:
    def __init__(
        self,
        client: AnyRedis,
        *,
        prefix: str = "gw",
        pipe: RedisPipe | None = None,
        max_calls: int = 64,
    ) -> None:
        self.redis = client
        self.pipe = pipe
        #: redis-py's async pools (each Cluster node's too) raise MaxConnectionsError at
        #: once when full instead of waiting, and those errors would open the breaker on a
        #: mere burst: calls through redis-py wait for one of ``max_calls`` places (the
        #: client's ``max_connections``; a call uses one connection of one node), and the
        #: store's deadline bounds that wait as it bounds the call
        self._places = asyncio.Semaphore(max_calls)
        self.keys = keys = StateKeys(prefix)
        self.token_key = keys.token
        self.limit_key = keys.limit
        self.penalty_key = keys.penalty
        self.failure_key = keys.failures
        self.attempts_key = keys.attempts
        self._admit: AsyncScript = client.register_script(_lua("admit.lua"))
        self._failure: AsyncScript = client.register_script(_lua("failure.lua"))
        self._reserve: AsyncScript = client.register_script(_lua("reserve.lua"))
        self._release: AsyncScript = client.register_script(_lua("release.lua"))
        self._peek: AsyncScript = client.register_script(_lua("peek.lua"))

    # key names (see gateway.core.redis_keys) -------------------------------------------
    def limit_location(self, spec: LimitSpec, keys: StateKeys | None = None) -> tuple[str, str]:
        """(key, field): a limit of its own is a string key (field ''), a token-scoped
        one a field of the token's state hash; under ``keys`` (an admission's) or the
        store's one tag."""
        keys = keys or self.keys
        if spec.scope is None:
            return keys.limit(spec.key), ""
        return keys.token(spec.scope), spec.key

    # operations ----------------------------------------------------------------------
    async def admit(self, request: AdmitRequest) -> Admission:
        subject, use, limits = request.penalty_subject, request.token, request.limits
        # every key of the call comes from ``built`` (a new kind of key too): one slot
        built = self.keys.for_admission(request.shard)
        keys: list[str] = []
        if subject is not None:
            keys.append(built.penalty(subject))
        args: list[Any]
        if use is not None:
            keys.append(built.token(use.jti))
            args = [
                1 if subject is not None else 0,
                1,
                len(limits),
                use.fingerprint,
                use.issued_fingerprint,
                use.max_fingerprints,
                REUSE_ACTION_CODES[use.on_reuse],
                record_ttl_ms(use.ttl_ms),
            ]
            family = request.family
            if family is not None:
                keys.append(built.family(family.conversation_id))
                args += (1, use.jti, family.overlap_ms, family.ttl_ms, family.successor)
            else:
                args += NO_FAMILY
        else:
            args = [1 if subject is not None else 0, 0, len(limits), "", "", 0, 0, 0, *NO_FAMILY]
        proof = request.proof
        if proof is None:
            args += NO_PROOF
        elif proof.key_mismatch:
            args += (2, 0)
        else:
            keys.append(built.proof(proof.replay_id))
            args += (1, record_ttl_ms(proof.ttl_ms))
        for spec in limits:
            key, field = self.limit_location(spec, built)
            keys.append(key)
            args += (spec.interval_us, spec.burst, 1 if spec.shadow else 0, field)
        if self.pipe is not None:
            reply = await self.pipe.evalsha(self._admit.sha, self._admit.script, keys, args)
        else:
            reply = await self._call(self._admit, keys, args)
        states = [  # allowed, remaining, reset_ms, retry_ms (and no TAT to store)
            LimitState(bool(reply[i]), int(reply[i + 1]), int(reply[i + 2]), int(reply[i + 3]), 0)
            for i in range(4, len(reply), 4)
        ]
        return Admission(
            int(reply[0]), _verdict(reply[1]), tuple(states), _renewed(reply[2], reply[3])
        )

    async def peek(
        self, specs: tuple[LimitSpec, ...], shard: str | None = None
    ) -> tuple[LimitState, ...]:
        if not specs:
            return ()
        built = self.keys.for_admission(shard)
        locations = [self.limit_location(spec, built) for spec in specs]
        reply = await self._call(self._peek, [k for k, _ in locations], [f for _, f in locations])
        now = int(reply[0])
        return tuple(
            evaluate(spec, int(raw) if raw else None, now)
            for spec, raw in zip(specs, reply[1:], strict=True)
        )

    async def record_failure(
        self, subject: str, rule: PenaltyRule, *, reserved: bool = False
    ) -> int:
        reply = await self._call(
            self._failure,
            self.keys.failure_script(subject),
            [rule.window_ms, rule.threshold, rule.cooldown_ms, 1 if reserved else 0],
        )
        return int(reply)

    async def reserve_attempt(self, subject: str, rule: PenaltyRule) -> AttemptSlot:
        keys = self.keys.reserve_script(subject)
        args = [rule.window_ms, rule.threshold]
        if self.pipe is not None:
            reply = await self.pipe.evalsha(self._reserve.sha, self._reserve.script, keys, args)
        else:
            reply = await self._call(self._reserve, keys, args)
        return AttemptSlot(int(reply[0]), bool(reply[1]))

    async def release_attempt(self, subject: str) -> None:
        await self._call(self._release, [self.attempts_key(subject)], [])

    async def ping(self) -> None:
        async with self._places:
            await self.redis.ping()

    async def _call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        async with self._places:
            return await script(keys=keys, args=args)

    async def start(self) -> None:
        """Learn the cluster layout, open a connection and load every script, so the
        first requests do not pay for it inside their deadline."""
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()
        await self.redis.ping()
        scripts = (self._admit, self._failure, self._reserve, self._release, self._peek)
        for script in scripts:
            script.sha = await self.redis.script_load(script.script)

    async def close(self) -> None:
        if self.pipe is not None:
            await self.pipe.close()
        await self.redis.aclose()
