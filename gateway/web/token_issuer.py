"""Client token issuance: the service behind ``GET .../message/token/{model_id}``.

The handler parses the request into a :class:`TokenRequest`; :class:`TokenIssuer` checks
the agent key (penalty box first, argon2 counted before it runs), the key's origins and
models, the route's limits, then signs a token; every refusal is counted by its reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass

import structlog

from gateway.admission import Admissions, Client, ProofRequest
from gateway.core.token_codec import IssuedToken, TokenCodec
from gateway.errors import ProblemError
from gateway.keystore.base import KeyRecord
from gateway.keystore.verifier import KeyRejected, KeyVerifier, VerifierBusy
from gateway.observability.metrics import Metrics
from gateway.web.payloads import AGENT_KEY_HINT, missing_credentials

security_log = structlog.get_logger("gateway.security")


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One request for a client token, as the handler parsed it."""

    model_id: str
    method: str
    client: Client
    #: the bearer credential (an agent key), None when the request has none
    credential: str | None
    #: told the key's id as soon as it is known (for the access line)
    note_key: Callable[[str], None]
    #: given the key's origins: refuses a browser origin the key does not list
    admit_origins: Callable[[tuple[str, ...]], None]
    #: the request's DPoP proof, if any: the token is then bound to its key
    proof: ProofRequest | None = None

    def __repr__(self) -> str:  # the agent key must not end up in a log by accident
        return f"TokenRequest(model_id={self.model_id!r}, client={self.client!r})"


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """An issued (or renewed) token, its remaining life and the RateLimit headers of its
    answer."""

    issued: IssuedToken
    expires_in: int
    headers: dict[str, str]


class TokenService:
    """What token issuance and renewal (:mod:`gateway.web.token_renewer`) work with."""

    def __init__(
        self,
        *,
        codec: TokenCodec,
        admissions: Admissions,
        keys: KeyVerifier,
        models: Collection[str],
        metrics: Metrics,
    ) -> None:
        self._codec = codec
        self._admissions = admissions
        self._keys = keys
        #: the configured models
        self._models = models
        self._metrics = metrics


class TokenIssuer(TokenService):
    async def issue(self, request: TokenRequest) -> TokenGrant:
        """A token for ``request``, or the problem that refuses it (counted)."""
        try:
            return await self._issue(request)
        except ProblemError as err:
            if err.code != "key_not_found":  # counted with its precise reason
                self._metrics.token_refused(err.code)
            if err.code == "invalid_dpop_proof":  # a signature check paid for: boxed
                await self._admissions.failed(request.client, "invalid_token")
            raise

    async def _issue(self, request: TokenRequest) -> TokenGrant:
        admissions, model_id = self._admissions, request.model_id
        admissions.refuse_if_penalized(request.client)
        if request.credential is None:
            raise missing_credentials(AGENT_KEY_HINT)
        record = await self._verified_record(request, request.credential)
        request.admit_origins(record.origins)
        if model_id not in record.models or model_id not in self._models:
            raise ProblemError("model_not_found", f"this key has no model {model_id!r}")
        # checked once the key passed, under the binding mode of the key
        proof, checked = admissions.issue_proof(request.proof, record.origins, record.require_proof)
        jkt = checked.jkt if checked is not None else None
        headers = await admissions.admit_request(
            "token",
            request.client,
            request.method,
            key_id=record.key_id,
            model=model_id,
            proof=proof,
        )
        issued = self._codec.issue(
            key_id=record.key_id,
            model_id=model_id,
            now=admissions.now(),
            # bound at issue; a token bound to a key records it only (a change is flagged)
            fingerprint=admissions.issue_fingerprint(request.client),
            shards=admissions.shards(record.key_id),
            jkt=jkt,
        )
        self._metrics.token_issued(model_id)
        headers = {**headers, **admissions.nonce_headers(checked)}
        return TokenGrant(issued, self._codec.ttl_seconds, headers)

    async def _verified_record(self, request: TokenRequest, credential: str) -> KeyRecord:
        """The active record of the presented key, verified; 401 ``key_not_found``
        (counted by its precise reason) or 503 when the verifiers are busy."""
        admissions, keys, metrics = self._admissions, self._keys, self._metrics
        try:
            try:
                candidate = await keys.resolve(credential)  # newer than the snapshot: served
            except KeyRejected:
                await admissions.failed(request.client, "invalid_key")
                raise
            request.note_key(candidate.record.key_id)
            # argon2 (unless cached), counted by the penalty box before it runs: one unit
            # that a client hanging up cannot interrupt
            return await asyncio.shield(admissions.verify_key(request.client, keys, candidate))
        except KeyRejected as exc:
            if exc.key_id:
                request.note_key(exc.key_id)
            security_log.warning("invalid_key", reason=exc.reason, key_id=exc.key_id)
            metrics.token_refused(exc.reason)
            metrics.suspicious_event("invalid_key")
            raise ProblemError("key_not_found", "no active agent key matches") from None
        except VerifierBusy:
            raise ProblemError(
                "overloaded", "too many key verifications in progress", {"Retry-After": "1"}
            ) from None
