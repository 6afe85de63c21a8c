"""The single-process store: plain dicts with expiry, same semantics as the Redis script.

``admit`` contains no ``await``, so it is atomic under the event loop. Expired entries are
dropped lazily on access and by an expiry heap swept on every call (amortised O(log n)).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.core.fingerprint import TAG_CHARS
from gateway.core.gcra import EPOCH_US, LimitSpec, LimitState, evaluate
from gateway.core.penalty_box import Failures, count_failure
from gateway.store.base import (
    REFUSING_VERDICTS,
    Admission,
    AdmitRequest,
    AttemptSlot,
    FamilyCheck,
    PenaltyRule,
    Renewed,
    TokenUse,
    TokenVerdict,
    record_ttl_ms,
)

V = TypeVar("V")


class ExpiringMap(Generic[V]):
    def __init__(self) -> None:
        self._items: dict[str, tuple[V, float]] = {}
        self._heap: list[tuple[float, str]] = []

    def sweep(self, now_ms: float) -> None:
        heap, items = self._heap, self._items
        while heap and heap[0][0] <= now_ms:
            _, key = heapq.heappop(heap)
            item = items.get(key)
            if item is not None and item[1] <= now_ms:
                del items[key]

    def get(self, key: str, now_ms: float) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= now_ms:
            del self._items[key]
            return None
        return item[0]

    def expires_at(self, key: str) -> float | None:
        item = self._items.get(key)
        return None if item is None else item[1]

    def set(self, key: str, value: V, expires_at_ms: float) -> None:
        self._items[key] = (value, expires_at_ms)
        heapq.heappush(self._heap, (expires_at_ms, key))
        if len(self._heap) > 4 * len(self._items) + 1024:  # drop stale heap entries
            self._heap = [(exp, k) for k, (_, exp) in self._items.items()]
            heapq.heapify(self._heap)

    def delete(self, key: str) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _TokenState:
    """A token's record (its fingerprints, None until it is bound) and the TATs of the limits
    scoped to it, expiring together: the Redis store's token hash (see admit.lua)."""

    fingerprints: list[str] | None = None
    revoked: bool = False
    tats: dict[str, int] = field(default_factory=dict)


@dataclass
class _Family:
    """A conversation's token family (admit.lua's family hash): the newest token, the one
    it retired and when (ms), and whether the family is revoked."""

    newest: str = ""
    retired: str = ""
    retired_at_ms: int = 0
    revoked: bool = False


def _now_ms() -> float:
    return time.time() * 1000.0


class MemoryStore:
    def __init__(self, clock_ms: Callable[[], float] = _now_ms) -> None:
        self._clock = clock_ms
        self.tokens: ExpiringMap[_TokenState] = ExpiringMap()
        self.tats: ExpiringMap[int] = ExpiringMap()
        self.failures: ExpiringMap[int] = ExpiringMap()
        #: attempts counted before their verification ran, not yet failed or released
        self.attempts: ExpiringMap[int] = ExpiringMap()
        self.penalties: ExpiringMap[bool] = ExpiringMap()
        self.families: ExpiringMap[_Family] = ExpiringMap()
        #: DPoP proofs used (``ProofUse.replay_id``), while they could pass again
        self.proofs: ExpiringMap[bool] = ExpiringMap()

    def _sweep(self, now: float) -> None:
        for table in (
            self.tokens,
            self.tats,
            self.failures,
            self.attempts,
            self.penalties,
            self.families,
            self.proofs,
        ):
            table.sweep(now)

    def _keep_family(self, check: FamilyCheck, family: _Family, now: float) -> None:
        """Store ``family`` for at least its ttl (never sooner than before)."""
        current = self.families.expires_at(check.conversation_id)
        until = now + check.ttl_ms
        if current is not None and current > until:
            until = current
        self.families.set(check.conversation_id, family, until)

    def _revoke_family(self, check: FamilyCheck, now: float) -> None:
        family = self.families.get(check.conversation_id, now) or _Family()
        family.revoked = True
        self._keep_family(check, family, now)

    def _check_family(
        self, check: FamilyCheck, jti: str, now: float
    ) -> tuple[TokenVerdict | None, Renewed | None, bool]:
        """As admit.lua: a refusing verdict, or None and the successor of a renewal and
        whether it rotates the family."""
        family = self.families.get(check.conversation_id, now)
        if family is not None and family.revoked:
            return TokenVerdict.FAMILY_REVOKED, None, False
        if family is not None and family.newest != jti:
            if family.retired == jti and now - family.retired_at_ms <= check.overlap_ms:
                if not check.successor:
                    return None, None, False
                return None, Renewed(family.newest, family.retired_at_ms), False
            self._revoke_family(check, now)
            return TokenVerdict.REPLAYED, None, False
        if check.successor:
            return None, Renewed(check.successor, int(now)), True
        return None, None, False

    def _state(self, jti: str, now: float) -> _TokenState:
        return self.tokens.get(jti, now) or _TokenState()

    def _keep_for(self, jti: str, state: _TokenState, now: float, ms: float) -> None:
        """Store ``state``, expiring at least ``ms`` from now (never sooner than before)."""
        current = self.tokens.expires_at(jti)
        until = now + ms
        if current is not None and current > until:
            until = current
        self.tokens.set(jti, state, until)

    def _tat(self, spec: LimitSpec, now: float) -> int | None:
        if spec.scope is None:
            return self.tats.get(spec.key, now)
        state = self.tokens.get(spec.scope, now)
        return None if state is None else state.tats.get(spec.key)

    @staticmethod
    def _us(now_ms: float) -> int:
        """The clock for GCRA: whole microseconds since the epoch of gateway.core.gcra."""
        return round(now_ms * 1000) - EPOCH_US

    def _check_token(
        self, use: TokenUse, family: FamilyCheck | None, now: float
    ) -> tuple[TokenVerdict, list[str] | None]:
        """The verdict and, for BOUND, the fingerprints to record on admission."""
        state = self.tokens.get(use.jti, now)
        record = state.fingerprints if state is not None else None
        if state is not None and state.revoked:
            return TokenVerdict.REVOKED, None
        fp = use.fingerprint
        if not fp:
            return TokenVerdict.OK, None
        tag = fp[:TAG_CHARS]
        if record and record[0][:TAG_CHARS] != tag:
            record = None  # bound under another binding rule: bind again (as admit.lua)
        issued = use.issued_fingerprint if use.issued_fingerprint[:TAG_CHARS] == tag else ""
        known = record if record is not None else ([issued] if issued else [])
        if fp in known:
            if record is None:
                return TokenVerdict.BOUND, known
            return TokenVerdict.OK, None
        if len(known) < use.max_fingerprints:
            return TokenVerdict.BOUND, [*known, fp]
        if use.on_reuse == "flag":
            return TokenVerdict.FLAGGED, None
        if use.on_reuse == "revoke":
            self._revoke(use.jti, known, now, use.ttl_ms)
            if family is not None:
                self._revoke_family(family, now)
        return TokenVerdict.REUSE, None

    def _revoke(self, jti: str, fingerprints: list[str], now: float, ttl_ms: int) -> None:
        state = self._state(jti, now)
        state.fingerprints, state.revoked = list(fingerprints), True
        self._keep_for(jti, state, now, record_ttl_ms(ttl_ms))

    async def admit(self, request: AdmitRequest) -> Admission:
        now = self._clock()
        self._sweep(now)
        if request.penalty_subject is not None:
            expires = self.penalties.expires_at(request.penalty_subject)
            if expires is not None and expires > now:
                return Admission(int(expires - now) or 1, None, ())
        verdict: TokenVerdict | None = None
        bind: list[str] | None = None
        renewed: Renewed | None = None
        rotate = False
        family = request.family if request.token is not None else None
        if request.token is not None:
            verdict, bind = self._check_token(request.token, family, now)
            if verdict in REFUSING_VERDICTS:
                return Admission(0, verdict, ())
        if family is not None and request.token is not None:
            refused, renewed, rotate = self._check_family(family, request.token.jti, now)
            if refused is not None:
                return Admission(0, refused, ())
        proof = request.proof
        if proof is not None:  # proof of possession, as admit.lua's delimited block
            if proof.key_mismatch and request.token is not None:
                if family is not None:
                    self._revoke_family(family, now)
                else:
                    record = self.tokens.get(request.token.jti, now)
                    held = (record.fingerprints if record is not None else None) or []
                    self._revoke(request.token.jti, held, now, request.token.ttl_ms)
                return Admission(0, TokenVerdict.REUSE, ())
            if not proof.key_mismatch and self.proofs.get(proof.replay_id, now):
                return Admission(0, TokenVerdict.PROOF_REPLAYED, ())
        now_us = self._us(now)
        states: list[LimitState] = [
            evaluate(spec, self._tat(spec, now), now_us) for spec in request.limits
        ]
        if any(
            not s.allowed and not spec.shadow
            for spec, s in zip(request.limits, states, strict=True)
        ):
            return Admission(0, verdict, tuple(states))
        keep: dict[str, tuple[_TokenState, float]] = {}  # jti -> state, ms to keep it
        for spec, state in zip(request.limits, states, strict=True):
            if not state.allowed:
                continue
            ttl_ms = max(-(-(state.new_tat - now_us) // 1000), 1)
            if spec.scope is None:
                self.tats.set(spec.key, state.new_tat, now + ttl_ms)
                continue
            token, ms = keep.get(spec.scope) or (self._state(spec.scope, now), 0.0)
            token.tats[spec.key] = state.new_tat
            keep[spec.scope] = token, max(ms, ttl_ms)
        if bind is not None and request.token is not None:
            use = request.token
            token, ms = keep.get(use.jti) or (self._state(use.jti, now), 0.0)
            token.fingerprints = bind
            keep[use.jti] = token, max(ms, record_ttl_ms(use.ttl_ms))
        for jti, (token, ms) in keep.items():
            self._keep_for(jti, token, now, ms)
        if proof is not None and not proof.key_mismatch:
            self.proofs.set(proof.replay_id, True, now + record_ttl_ms(proof.ttl_ms))
        if rotate and family is not None and renewed is not None and request.token is not None:
            rotated = _Family(renewed.jti, request.token.jti, renewed.issued_at_ms)
            self._keep_family(family, rotated, now)
        return Admission(0, verdict, tuple(states), renewed)

    async def peek(
        self, specs: tuple[LimitSpec, ...], shard: str | None = None
    ) -> tuple[LimitState, ...]:
        now = self._clock()
        return tuple(evaluate(spec, self._tat(spec, now), self._us(now)) for spec in specs)

    async def reserve_attempt(self, subject: str, rule: PenaltyRule) -> AttemptSlot:
        """As reserve.lua."""
        now = self._clock()
        self._sweep(now)
        expires = self.penalties.expires_at(subject)
        if expires is not None and expires > now:
            return AttemptSlot(int(expires - now) or 1, False)
        failures = self.failures.get(subject, now) or 0
        in_flight = self.attempts.get(subject, now) or 0
        if failures + in_flight >= rule.threshold:
            return AttemptSlot(0, False)
        self.attempts.set(subject, in_flight + 1, now + rule.window_ms)
        return AttemptSlot(0, True)

    async def release_attempt(self, subject: str) -> None:
        """As release.lua."""
        self._release(subject, self._clock())

    def _release(self, subject: str, now: float) -> None:
        in_flight = self.attempts.get(subject, now) or 0
        if in_flight > 1:
            self.attempts.set(subject, in_flight - 1, self.attempts.expires_at(subject) or now)
        elif in_flight == 1:
            self.attempts.delete(subject)

    async def record_failure(
        self, subject: str, rule: PenaltyRule, *, reserved: bool = False
    ) -> int:
        now = self._clock()
        self._sweep(now)
        if reserved:
            self._release(subject, now)
        held = self.failures.get(subject, now)
        ends = self.failures.expires_at(subject)
        current = None if held is None or ends is None else Failures(held, ends)
        kept, boxed_ms = count_failure(current, now, rule)
        if kept is None:
            self.failures.delete(subject)
            self.penalties.set(subject, True, now + boxed_ms)
            return boxed_ms
        self.failures.set(subject, kept.failures, kept.ends_ms)
        return 0

    async def ping(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
