"""Deciding whether a request may proceed: penalty box, token checks, rate limits.

Each request is decided by one store call (:meth:`StateStore.admit`) that covers the
penalty box, the token's record (revocation and binding) and every rate limit that
applies, all or nothing. Around it, this module does the cheap local work (token
signature, fingerprint, policy matching, the revocations this replica has seen) and turns
the answer into a refusal or the ``RateLimit`` headers of the response.

An agent key's argon2 verification is paid for only after the penalty box has counted it
(:meth:`Admissions.verify_key`): a flood of wrong keys in parallel costs at most the
box's threshold in verifications, not one each.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple, NoReturn

import structlog

from gateway.core.dpop import Proof, ProofKeyMismatch, ProofRejected, ProofVerifier
from gateway.core.fingerprint import FingerprintCache
from gateway.core.policy import PolicySet, RequestFacts, Selection, retry_after_seconds
from gateway.core.renewal import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_CONVERSATION_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
    RenewalRules,
    family_revocation,
)
from gateway.core.revocations import RevocationSet
from gateway.core.sharding import Shard, Sharding
from gateway.core.token_codec import (
    ClientToken,
    TokenCodec,
    TokenRejected,
    VerifiedToken,
    log_hash,
)
from gateway.errors import ProblemError
from gateway.keystore.base import KeyRecord
from gateway.keystore.verifier import Candidate, KeyRejected, KeyVerifier
from gateway.observability.decision_log import CURRENT as CURRENT_DECISION
from gateway.observability.metrics import FamilyRevocation, Metrics
from gateway.policies.live import LivePolicies
from gateway.store.base import (
    REFUSING_VERDICTS,
    Admission,
    AdmitRequest,
    FamilyCheck,
    PenaltyRule,
    ProofUse,
    Renewed,
    StateStore,
    StoreUnavailable,
    TokenUse,
    TokenVerdict,
)
from gateway.store.errors import StoreCall

log = structlog.get_logger("gateway.security")
store_log = structlog.get_logger("gateway.store")

MAX_LOCAL_PENALTIES = 100_000
#: an attempt refused because the client's attempts in flight fill its allowance may come
#: back as soon as they end (an argon2 run lasts milliseconds): Retry-After 1
IN_FLIGHT_RETRY_MS = 1000
#: the problem codes of a refused client token (``gateway_token_uses_refused_total``)
TOKEN_REFUSALS = frozenset(
    {
        "token_expired",
        "token_invalid",
        "token_revoked",
        "token_reuse_suspected",
        "invalid_dpop_proof",
    }
)
#: token refusals that are security events (expired tokens are ordinary), by event name
SUSPICIOUS_TOKEN_REFUSALS = {
    "token_reuse_suspected": "token_reuse",
    "token_invalid": "invalid_token",
}
#: token refusals written to the security log
LOGGED_TOKEN_REFUSALS = frozenset({"token_invalid", "token_revoked"})
#: token refusals counted by the penalty box (as ``invalid_token``): a bad DPoP proof
#: costs a signature check, so a client that keeps sending them sits out
COUNTED_TOKEN_REFUSALS = frozenset({"token_invalid", "invalid_dpop_proof"})


class Client(NamedTuple):
    """The requester as the gateway sees it."""

    ip: str
    user_agent: str


class ProofRequest(NamedTuple):
    """A request's DPoP proof (RFC 9449) and what it must name."""

    #: the ``DPoP`` header (several joined by commas: malformed), None when absent
    header: str | None
    method: str
    #: the URL the client called, as :func:`gateway.core.dpop.normalize_url` reads it
    url: str


#: the ``WWW-Authenticate`` challenge of a refused DPoP proof
DPOP_CHALLENGE = 'DPoP error="invalid_dpop_proof", algs="ES256 EdDSA"'
#: a proof refused for its time (or a stale nonce): RFC 9449 section 9's answer, with a
#: ``DPoP-Nonce`` the client puts in its next proof (then its own clock does not matter)
NONCE_CHALLENGE = 'DPoP error="use_dpop_nonce", algs="ES256 EdDSA"'
NONCE_REASONS = frozenset({"time", "nonce"})


class ProofBinding(NamedTuple):
    """A key-bound token's use: the request's proof and the token as presented (``ath``)."""

    request: ProofRequest
    token: str


class PenaltyCache:
    """Subjects known to be in the penalty box, so every replica that has seen one boxed
    refuses it before any signature or argon2 work. The store stays authoritative."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()

    def remember(self, subject: str, ms: int) -> None:
        self._until[subject] = self._clock() + ms / 1000
        self._until.move_to_end(subject)
        while len(self._until) > MAX_LOCAL_PENALTIES:
            self._until.popitem(last=False)

    def remaining_ms(self, subject: str) -> int:
        until = self._until.get(subject)
        if until is None:
            return 0
        left = until - self._clock()
        if left <= 0:
            del self._until[subject]
            return 0
        return max(int(left * 1000), 1)


def _rate_limited(
    detail: str, retry_ms: int, headers: dict[str, str] | None = None
) -> ProblemError:
    return ProblemError(
        "rate_limited",
        detail,
        {"Retry-After": str(retry_after_seconds(retry_ms)), **(headers or {})},
    )


class Attempt:
    """An attempt that costs (an argon2 verification), already counted by the penalty box:
    it must end as :meth:`failed` or :meth:`release`, on the store that counted it."""

    __slots__ = ("_admissions", "_rule", "_store", "_subject")

    def __init__(
        self,
        admissions: Admissions,
        subject: str | None,
        rule: PenaltyRule | None,
        store: StateStore,
    ) -> None:
        self._admissions = admissions
        self._subject, self._rule, self._store = subject, rule, store

    async def failed(self, reason: str) -> None:
        """The attempt failed: counted as one failure in its place in flight (or, when
        ``reason`` is not counted by the box, released)."""
        subject, rule = self._subject, self._rule
        if subject is None or rule is None:
            return
        if not self._admissions.boxes(reason):
            await self.release()
            return
        await self._admissions.record_failure(subject, rule, reason, self._store)

    async def release(self) -> None:
        """The attempt succeeded or never ran: its place is free again. When the store is
        down the place stays taken until the window ends."""
        if self._subject is None:
            return
        admissions = self._admissions
        try:
            with StoreCall(admissions.metrics, "release_attempt"):
                await self._store.release_attempt(self._subject)
        except StoreUnavailable:
            return


class Admissions:
    def __init__(
        self,
        codec: TokenCodec,
        store: StateStore,
        policies: LivePolicies,
        *,
        fallback: StateStore,
        key_active: Callable[[str], bool],
        max_token_chars: int,
        metrics: Metrics,
        renewal: RenewalRules | None = None,
        sharding: Sharding | None = None,
        proofs: ProofVerifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        #: the state layout: under ``store.sharding: key`` new conversations keep their
        #: state under their agent key's hash tag (their tokens say so, ``shd``)
        self.sharding = sharding or Sharding()
        #: DPoP proofs' checks (:mod:`gateway.core.dpop`); the replay check is the store's
        self.proofs = proofs or ProofVerifier()
        self._codec = codec
        #: the rules of token families (rotation overlap, lifetime): checked on every use
        self.renewal = renewal or RenewalRules(
            grace_seconds=DEFAULT_GRACE_SECONDS,
            overlap_seconds=DEFAULT_OVERLAP_SECONDS,
            max_conversation_seconds=DEFAULT_MAX_CONVERSATION_SECONDS,
            ttl_seconds=codec.ttl_seconds,
            leeway_seconds=codec.leeway_seconds,
        )
        self._store = store
        self._policies = policies
        #: local limits used while the shared store is down and the policy set fails open
        self.fallback = fallback
        self._key_active = key_active
        self._max_token_chars = max_token_chars
        self._clock = clock
        self.penalties = PenaltyCache()
        #: revoked tokens this replica has seen, refused without asking the store (and
        #: still refused while the store is down): see :meth:`remember_revoked`
        self.revocations = RevocationSet()
        self.metrics.watch_local_revocations(self.revocations)
        self.failing_open = False
        self._fingerprints = FingerprintCache()
        #: the decision log is on: admissions describe themselves (CURRENT_DECISION)
        self.record_decisions = False

    def now(self) -> float:
        return self._clock()

    # -- fingerprints ------------------------------------------------------------------
    def fingerprint(self, client: Client, policies: PolicySet | None = None) -> str:
        rule = (policies or self._policies.current).binding.rule
        if not rule.enabled:
            return ""
        return self._fingerprints(rule, client.ip, client.user_agent)

    def shards(self, key_id: str) -> int:
        """What a new conversation of ``key_id`` writes in its tokens (``shd``): 0 when
        state is not sharded."""
        return self.sharding.shards(key_id)

    def issue_fingerprint(self, client: Client) -> str | None:
        """The fingerprint to sign into the token when tokens are bound at issue."""
        policies = self._policies.current
        if policies.binding.bind_at != "issue" or not policies.binding.rule.enabled:
            return None
        return self.fingerprint(client, policies)

    # -- the penalty box ---------------------------------------------------------------
    def refuse_if_penalized(self, client: Client) -> None:
        """Local check, before any signature or argon2 work."""
        subject = self._policies.current.penalty_subject(client.ip)
        if subject is None:
            return
        left = self.penalties.remaining_ms(subject)
        if left:
            self.metrics.penalty_box_event("refused")
            raise _rate_limited("too many failed attempts from this client", left)

    def boxes(self, reason: str) -> bool:
        """Whether the penalty box counts failures of ``reason``."""
        penalty = self._policies.current.penalty
        return penalty is not None and reason in penalty.count

    async def failed(self, client: Client, reason: str) -> None:
        """Count a failure (``invalid_key``, ``invalid_token``, ``reuse``) for the box."""
        policies = self._policies.current
        penalty = policies.penalty
        subject = policies.penalty_subject(client.ip)
        if penalty is None or subject is None or reason not in penalty.count:
            return
        rule = PenaltyRule(penalty.window_ms, penalty.threshold, penalty.cooldown_ms)
        await self.record_failure(subject, rule, reason)

    async def record_failure(
        self,
        subject: str,
        rule: PenaltyRule,
        reason: str,
        reserved_on: StateStore | None = None,
    ) -> None:
        """One failure in the store (the local one when the store fails); ``reserved_on``:
        the store where the failed attempt was counted in flight."""
        store = self._store if reserved_on is None else reserved_on
        try:
            with StoreCall(self.metrics, "record_failure"):
                boxed_ms = await store.record_failure(
                    subject, rule, reserved=reserved_on is not None
                )
        except StoreUnavailable:
            boxed_ms = await self.fallback.record_failure(subject, rule)
        if boxed_ms:
            self.metrics.penalty_box_event("entered")
            self.penalties.remember(subject, boxed_ms)
            log.warning(
                "penalty_box",
                subject=subject,
                reason=reason,
                cooldown_seconds=boxed_ms / 1000,
            )

    async def attempt(self, client: Client) -> Attempt:
        """Count an attempt that costs before paying for it: the authoritative penalty
        check and one more attempt in flight, in one store call. 429 when the client is
        boxed, or when its failures and attempts in flight already reach the threshold
        (then nothing is counted: it may come back once those end)."""
        policies = self._policies.current
        penalty = policies.penalty
        subject = policies.penalty_subject(client.ip)
        if penalty is None or subject is None:
            return Attempt(self, None, None, self._store)
        rule = PenaltyRule(penalty.window_ms, penalty.threshold, penalty.cooldown_ms)
        store = self._store
        try:
            with StoreCall(self.metrics, "reserve_attempt"):
                slot = await store.reserve_attempt(subject, rule)
        except StoreUnavailable as exc:
            self._fail_open_or_refuse(policies, "reserve_attempt", exc)
            store = self.fallback
            slot = await store.reserve_attempt(subject, rule)
        else:
            self._store_answered()
        if slot.penalized_ms:
            self.metrics.penalty_box_event("refused")
            self.penalties.remember(subject, slot.penalized_ms)
            raise _rate_limited("too many failed attempts from this client", slot.penalized_ms)
        if not slot.granted:
            self.metrics.penalty_box_event("in_flight")
            raise _rate_limited(
                "too many failed or unfinished attempts from this client", IN_FLIGHT_RETRY_MS
            )
        return Attempt(self, subject, rule, store)

    async def verify_key(
        self, client: Client, keys: KeyVerifier, candidate: Candidate
    ) -> KeyRecord:
        """The key's argon2 verification, counted by the penalty box before it runs (see
        :meth:`attempt`), and its failure counted after. A key the cache vouches for, or
        whose verification another request already runs, costs nothing more: it is not
        counted in advance (so clients behind one address presenting the same key are
        not held back), only its failure is. Run it shielded from the client's
        disconnection: an attacker who hangs up mid-verification is still counted."""
        if candidate.verified or keys.verifying(candidate):
            try:
                return await keys.confirm(candidate)
            except KeyRejected:
                await self.failed(client, "invalid_key")
                raise
        attempt = await self.attempt(client)
        try:
            record = await keys.confirm(candidate)
        except KeyRejected:
            await attempt.failed("invalid_key")
            raise
        except Exception:  # the verifier is busy, or a bug: the attempt never ran
            await attempt.release()
            raise
        await attempt.release()
        return record

    def _refuse_penalized(self, admission: Admission, subject: str | None) -> None:
        if admission.penalized_ms and subject is not None:
            self.metrics.penalty_box_event("refused")
            self.penalties.remember(subject, admission.penalized_ms)
            raise _rate_limited("too many failed attempts from this client", admission.penalized_ms)

    # -- revocations seen here ---------------------------------------------------------
    def remember_revoked(self, jti: str, expires_at: float) -> None:
        """Refuse the token ``jti`` on this replica until it expires (``expires_at``, the
        codec's clock; the leeway is added here), before and without the store: a token
        revoked for reuse, or one the store said was revoked. Bounded: see
        :class:`RevocationSet`."""
        self.revocations.add(jti, expires_at + self._codec.leeway_seconds, self._clock())

    def remember_family_revoked(self, claims: ClientToken) -> None:
        """Refuse every token of ``claims``' conversation on this replica for as long as
        one could pass, before and without the store."""
        until = self._clock() + self.renewal.family_seconds
        self.revocations.add(family_revocation(claims.conversation_id), until, self._clock())

    # -- the store call ----------------------------------------------------------------
    async def _admit(
        self, request: AdmitRequest, policies: PolicySet, local: AdmitRequest | None = None
    ) -> Admission:
        """``local``: what the local store is asked when the store fails open, if not
        ``request`` (a sharded request's limits as configured, and the penalty box)."""
        try:
            with StoreCall(self.metrics, "admit"):  # latency and errors, by operation
                admission = await self._store.admit(request)
        except StoreUnavailable as exc:
            if request.family is not None and request.family.successor:
                # never a renewal on the local store: it knows no family, so a retired
                # token would be renewed (a thief's), and its rotation unknown to the
                # shared store would revoke the visitor's conversation on recovery; the
                # token in hand still works, and the grace covers the outage's wait
                _store_unavailable(exc)
            self._fail_open_or_refuse(policies, "admit", exc)
            return await self.fallback.admit(local or request)
        if self.failing_open:
            self._store_answered()
        return admission

    def _fail_open_or_refuse(
        self, policies: PolicySet, operation: str, exc: StoreUnavailable
    ) -> None:
        """The store failed: 503 unless the policies fail open (then the caller asks the
        local store instead)."""
        if policies.on_store_error != "fail_open":
            _store_unavailable(exc)
        self.metrics.store_failed_open(operation)
        if not self.failing_open:
            self.failing_open = True
            store_log.error(
                "store_fail_open",
                detail="enforcing local limits and the revocations seen here only",
                revocations_known=len(self.revocations),
            )

    def _store_answered(self) -> None:
        if self.failing_open:
            self.failing_open = False
            store_log.warning("store_recovered", detail="shared limits enforced again")

    def _limits_outcome(
        self, admission: Admission, selection: Selection, key_id: str | None
    ) -> dict[str, str]:
        headers = selection.headers(admission.limits)
        denied: list[str] = []
        retry_ms = 0
        for item, state in zip(selection.policies, admission.limits, strict=True):
            if state.allowed:
                self.metrics.ratelimit_decision(item.name, "allowed")
                continue
            if item.shadow:
                self.metrics.ratelimit_decision(item.name, "shadow_limited")
                log.info("shadow_limit_exceeded", policy=item.name, key_id=key_id)
                continue
            self.metrics.ratelimit_decision(item.name, "limited")
            denied.append(item.name)
            retry_ms = max(retry_ms, state.retry_ms)
        if denied:
            names = ", ".join(denied)
            raise _rate_limited(f"rate limited by policy {names}", retry_ms, headers)
        return headers

    # -- routes without a client token (token creation, private routes) ----------------
    async def admit_request(
        self,
        route: str,
        client: Client,
        method: str,
        *,
        key_id: str | None = None,
        model: str | None = None,
        proof: ProofUse | None = None,
    ) -> dict[str, str]:
        """Penalty box, the route's limits and a DPoP proof's replay check; the
        response's RateLimit headers."""
        policies = self._policies.current
        selection = policies.select(route, method, model, key_id)
        facts = RequestFacts(route, method, client.ip, key_id=key_id, model=model)
        subject = policies.penalty_subject(client.ip)
        shard = None
        shards = self.sharding.shards(key_id) if key_id is not None else 0
        if key_id is not None and shards:
            shard = self.sharding.shard(key_id, client.ip, shards)
        request, local = self._request(selection, facts, subject, shard, proof=proof)
        if not request.limits and subject is None and proof is None:
            if self.record_decisions:
                self._record(facts, selection, None)
            return {}
        admission = await self._admit(request, policies, local)
        if self.record_decisions:
            self._record(facts, selection, admission)
        self._refuse_penalized(admission, subject)
        if admission.token is TokenVerdict.PROOF_REPLAYED:
            raise self.proof_refused("replayed", "this DPoP proof was used before")
        return self._limits_outcome(admission, selection, key_id)

    # -- proof of possession (RFC 9449) ------------------------------------------------
    def proof_refused(self, reason: str, detail: str) -> ProblemError:
        """401 ``invalid_dpop_proof`` (counted by ``reason``)."""
        self.metrics.dpop_proof_refused(reason)
        nonces = self.proofs.nonces
        if reason in NONCE_REASONS and nonces is not None:  # the client's clock: ours
            headers = {
                "WWW-Authenticate": NONCE_CHALLENGE,
                "DPoP-Nonce": nonces.issue(self._clock()),
            }
            return ProblemError("invalid_dpop_proof", detail, headers)
        return ProblemError("invalid_dpop_proof", detail, {"WWW-Authenticate": DPOP_CHALLENGE})

    def issue_proof(
        self, request: ProofRequest | None, origins: tuple[str, ...], require_proof: bool = False
    ) -> tuple[ProofUse | None, Proof | None]:
        """A token request's proof under the binding mode of its agent key (with these
        ``origins``, and ``require_proof``): what the store checks and the proof (its key
        the token is bound to), or (None, None) for a token bound to the network. ``fingerprint``
        ignores proofs; ``proof`` requires one (401 without); ``proof_or_fingerprint``
        binds to the key when a proof is sent."""
        mode = self._policies.current.binding.mode_for(origins, require_proof)
        if mode == "fingerprint":
            return None, None
        if request is None or request.header is None:
            if mode == "proof":
                raise self.proof_refused(
                    "missing", "tokens are bound to a key here: send a DPoP proof"
                )
            return None, None
        return self.proof_use(request)

    def proof_use(
        self, request: ProofRequest, *, token: str | None = None, jkt: str | None = None
    ) -> tuple[ProofUse, Proof | None]:
        """Check ``request``'s proof (with the presented ``token`` bound to ``jkt``): what
        the store checks and remembers of it, and the proof; a valid proof by another key
        than ``jkt`` is a :class:`ProofUse` with ``key_mismatch`` (and no proof). 401
        ``invalid_dpop_proof`` when it is missing or bad."""
        now = self._clock()
        try:
            proof = self.proofs.verify(
                request.header,
                method=request.method,
                url=request.url,
                now=now,
                token=token,
                jkt=jkt,
            )
        except ProofRejected as exc:
            raise self.proof_refused(exc.reason, exc.detail) from None
        except ProofKeyMismatch:
            return ProofUse("", 0, key_mismatch=True), None
        return ProofUse(proof.replay_id(), self.proofs.replay_ttl_ms(proof, now)), proof

    def nonce_headers(self, proof: Proof | None) -> dict[str, str]:
        """A fresh ``DPoP-Nonce`` for the answer to a proof that carried one (RFC 9449
        section 8.2): a client that needs nonces (its clock is wrong) always holds a valid
        one, instead of being refused once per nonce."""
        nonces = self.proofs.nonces
        if proof is None or not proof.nonce_until or nonces is None:
            return {}
        return {"DPoP-Nonce": nonces.issue(self._clock())}

    @staticmethod
    def _request(
        selection: Selection,
        facts: RequestFacts,
        subject: str | None,
        shard: Shard | None,
        token: TokenUse | None = None,
        family: FamilyCheck | None = None,
        *,
        proof: ProofUse | None = None,
    ) -> tuple[AdmitRequest, AdmitRequest | None]:
        """The store request, and what the local store is asked instead when the store
        fails open (None: the same). In a shard, the admission's keys carry its tag, a
        hot key's limits of the key as a whole are split over its sub-buckets, and the
        penalty box (kept on the store's own tag, where failures are counted) is checked
        by this replica's cache only (docs/policies.md, "Sharded mode"); the local store
        gets the limits as configured and the penalty box."""
        specs = selection.specs(facts)
        plain = AdmitRequest(
            token=token, limits=specs, penalty_subject=subject, family=family, proof=proof
        )
        if shard is None:
            return plain, None
        if shard.buckets > 1:
            specs = tuple(
                shard.split(spec, p.token_only and not p.by_token)
                for p, spec in zip(selection.policies, specs, strict=True)
            )
        sharded = plain._replace(limits=specs, penalty_subject=None, shard=shard.name)
        return sharded, plain

    @staticmethod
    def _record(facts: RequestFacts, selection: Selection, admission: Admission | None) -> None:
        """The decision log's account of this request (only when the log is on)."""
        decision = CURRENT_DECISION.get()
        if decision is None:
            return
        decision.ts_us = time.time_ns() // 1000
        decision.facts = facts
        decision.policies = selection.policies
        if admission is None:  # nothing to decide: no limit, no penalty box
            decision.reached = True
        elif admission.penalized_ms:
            decision.penalized = True
        elif admission.token not in REFUSING_VERDICTS:
            decision.reached = True
            decision.states = admission.limits

    # -- message routes ----------------------------------------------------------------
    def decode(self, token: str) -> ClientToken:
        return self.verify(token).claims

    def verify(self, token: str, *, grace: float = 0.0) -> VerifiedToken:
        """The token's claims and log hash, or its problem (403 ``token_*``); ``grace``:
        seconds past its expiry it still passes (a renewal's)."""
        if not token or len(token) > self._max_token_chars:
            raise ProblemError("token_invalid", "the token is malformed")
        try:
            return self._codec.verify(token, self._clock(), grace=grace)
        except TokenRejected as exc:
            raise ProblemError(exc.code, exc.detail) from None

    async def token_refused(self, err: ProblemError, client: Client, key_id: str | None) -> None:
        """A message route refused ``client``'s token with ``err`` (any problem while
        admitting it): counted, logged and boxed by its code (the sets above)."""
        code = err.code
        if code not in TOKEN_REFUSALS:
            return
        self.metrics.token_use_refused(code)
        event = SUSPICIOUS_TOKEN_REFUSALS.get(code)
        if event is not None:
            self.metrics.suspicious_event(event)
        if code in LOGGED_TOKEN_REFUSALS:
            log.warning("token_refused", code=code, key_id=key_id)
        if code in COUNTED_TOKEN_REFUSALS:
            await self.failed(client, "invalid_token")

    async def use_token(
        self,
        claims: ClientToken,
        client: Client,
        route: str,
        method: str,
        proof: ProofBinding | None = None,
    ) -> dict[str, str]:
        """Admit one use of a decoded token: the response's RateLimit headers, or the
        matching 401/403/429/503 problem. A token bound to a key (``cnf.jkt``) needs
        ``proof``: the request's DPoP proof and the token as presented."""
        headers, _ = await self._use_token(claims, client, route, method, proof=proof)
        return headers

    async def renew_token(
        self,
        claims: ClientToken,
        client: Client,
        method: str,
        successor: str,
        proof: ProofBinding | None = None,
    ) -> tuple[dict[str, str], Renewed]:
        """Admit the renewal of a decoded token (route ``refresh``), in the same single
        store call as any use: the RateLimit headers and the successor's jti and issue
        time (``successor`` when this renewal rotated the family, the one an earlier
        renewal made when it repeats that one within the overlap), or the matching
        403/429/503 problem. The conversation's lifetime is the caller's to check."""
        headers, renewed = await self._use_token(
            claims, client, "refresh", method, successor=successor, proof=proof
        )
        if renewed is None:  # the store always names a successor for an admitted renewal
            raise RuntimeError("the store admitted a renewal without a successor")
        return headers, renewed

    async def _use_token(
        self,
        claims: ClientToken,
        client: Client,
        route: str,
        method: str,
        *,
        successor: str = "",
        proof: ProofBinding | None = None,
    ) -> tuple[dict[str, str], Renewed | None]:
        if not self._key_active(claims.key_id):
            raise ProblemError("token_revoked", "the agent key behind this token was revoked")
        now = self._clock()
        revocations = self.revocations
        if revocations.revoked(claims.jti, now):  # seen here: no need to ask the store
            raise ProblemError("token_revoked", "the token has been revoked")
        if revocations.revoked(family_revocation(claims.conversation_id), now):
            raise _family_revoked()
        policies = self._policies.current
        binding = policies.binding
        rules = self.renewal
        # a renewal accepts a token expired by up to the grace: its record lives as long
        grace = rules.grace_seconds if successor else 0
        proof_use: ProofUse | None = None
        checked: Proof | None = None
        on_reuse = binding.action
        if claims.jkt is not None:  # bound to a key, not to the network
            if proof is None:
                raise self.proof_refused("missing", "this request needs a DPoP proof")
            proof_use, checked = self.proof_use(proof.request, token=proof.token, jkt=claims.jkt)
            if proof_use.key_mismatch and binding.other_key == "refuse":
                await self._other_key_refused(claims, client)  # the store is not asked
            # the network fingerprint is only recorded: a new one is flagged, never refused
            on_reuse = "flag"
        use = TokenUse(
            jti=claims.jti,
            fingerprint=self.fingerprint(client, policies),
            issued_fingerprint=claims.fingerprint or "",
            max_fingerprints=binding.max_fingerprints,
            on_reuse=on_reuse,
            # the record (revocation, binding) must outlive every moment the codec still
            # accepts the token, expiry leeway included
            ttl_ms=int((claims.remaining(now) + self._codec.leeway_seconds + grace + 1) * 1000),
        )
        family = FamilyCheck(
            claims.conversation_id, rules.overlap_ms, rules.family_ttl_ms, successor
        )
        selection = policies.select(route, method, claims.model_id, claims.key_id)
        facts = RequestFacts(
            route,
            method,
            client.ip,
            key_id=claims.key_id,
            model=claims.model_id,
            token=claims.jti,
            conversation=claims.conversation_id,
        )
        subject = policies.penalty_subject(client.ip)
        shard = None
        if claims.shards:  # the conversation's layout, whatever the settings are now
            shard = self.sharding.shard(claims.key_id, claims.conversation_id, claims.shards)
        request, local = self._request(
            selection, facts, subject, shard, use, family, proof=proof_use
        )
        admission = await self._admit(request, policies, local)
        if self.record_decisions:
            self._record(facts, selection, admission)
        self._refuse_penalized(admission, subject)
        verdict = admission.token
        if verdict is TokenVerdict.REVOKED:
            self.remember_revoked(claims.jti, claims.expires_at)
            raise ProblemError("token_revoked", "the token has been revoked")
        if verdict is TokenVerdict.PROOF_REPLAYED:
            raise self.proof_refused("replayed", "this DPoP proof was used before")
        if verdict is TokenVerdict.REUSE and proof_use is not None and proof_use.key_mismatch:
            self._family_revoked(claims, "proof")  # this token is one of the family
            self.metrics.dpop_proof_refused("other_key")
            await self.failed(client, "reuse")
            raise ProblemError(
                "token_reuse_suspected",
                "the token was presented with a proof by another key: every token of the "
                "conversation is revoked",
            )
        if verdict is TokenVerdict.REUSE:
            if binding.action == "revoke":
                self.remember_revoked(claims.jti, claims.expires_at)
                self._family_revoked(claims, "binding")
            log.warning("token_reuse_suspected", key_id=claims.key_id, action=binding.action)
            await self.failed(client, "reuse")
            raise ProblemError("token_reuse_suspected", "the token was used from another client")
        if verdict is TokenVerdict.REPLAYED:
            self._family_revoked(claims, "replayed")
            log.warning("token_reuse_suspected", key_id=claims.key_id, action="revoke_family")
            await self.failed(client, "reuse")
            raise ProblemError(
                "token_reuse_suspected",
                "a token this conversation had retired was used again: every token of the "
                "conversation is revoked",
            )
        if verdict is TokenVerdict.FAMILY_REVOKED:
            self.remember_family_revoked(claims)
            raise _family_revoked()
        if verdict is TokenVerdict.FLAGGED:
            self._flagged(claims)
        headers = self._limits_outcome(admission, selection, claims.key_id)
        if checked is not None and checked.nonce_until:
            headers = {**headers, **self.nonce_headers(checked)}
        return headers, admission.renewed

    async def _other_key_refused(self, claims: ClientToken, client: Client) -> NoReturn:
        """``binding.other_key: refuse``: a key-bound token with a valid proof by another
        key is a copy, useless without its key; refused (403, counted as reuse by the
        penalty box) without revoking anything, so a copy cannot end the visitor's chat."""
        self.metrics.dpop_proof_refused("other_key")
        log.warning("token_reuse_suspected", key_id=claims.key_id, action="refuse")
        await self.failed(client, "reuse")
        raise ProblemError(
            "token_reuse_suspected", "the token was presented with a proof by another key"
        )

    def _flagged(self, claims: ClientToken) -> None:
        """A token was admitted from a network fingerprint it had not been seen from:
        under ``binding.action: flag`` a possible theft; for a token bound to a key (whose
        proof passed) the visitor's network changed, which proof of possession allows."""
        if claims.jkt is None:
            self.metrics.token_flagged("fingerprint")
            log.warning("token_reuse_flagged", key_id=claims.key_id)
            return
        self.metrics.token_flagged("proof")
        log.info(
            "token_network_changed",
            key_id=claims.key_id,
            conversation_hash=log_hash(claims.conversation_id),
        )

    def _family_revoked(self, claims: ClientToken, reason: FamilyRevocation) -> None:
        """The store revoked ``claims``' family just now, for ``reason``."""
        self.remember_family_revoked(claims)
        self.metrics.token_family_revoked(reason)
        log.warning(
            "token_family_revoked",
            key_id=claims.key_id,
            conversation_hash=log_hash(claims.conversation_id),  # never the id itself
            reason=reason,
        )


def _store_unavailable(exc: StoreUnavailable) -> NoReturn:
    raise ProblemError(
        "store_unavailable", "the state store is unavailable", {"Retry-After": "1"}
    ) from exc


def _family_revoked() -> ProblemError:
    return ProblemError(
        "token_reuse_suspected",
        "this conversation was opened elsewhere: its tokens were revoked",
    )
