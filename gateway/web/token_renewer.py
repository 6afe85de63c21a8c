"""Client token renewal: the service behind ``POST .../public/token/refresh``.

The handler parses the body into a :class:`RenewalRequest`; :class:`TokenRenewer` checks
the presented token (signature, expiry with the renewal grace), its key (still active,
still holding the model, the browser origin listed), the conversation's lifetime, then
admits the renewal in one store call (penalty box, binding, family, the ``refresh``
route's limits and the rotation, atomically) and signs the successor. The rules are
:mod:`gateway.core.renewal`'s; every outcome is counted (``gateway_token_renewals_total``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.admission import Client, ProofBinding, ProofRequest
from gateway.core.identifiers import new_token_id
from gateway.core.token_codec import ClientToken, log_hash
from gateway.errors import ProblemError
from gateway.web.token_issuer import TokenGrant, TokenService


@dataclass(frozen=True, slots=True)
class RenewalRequest:
    """One renewal, as the handler parsed it."""

    token: str
    method: str
    client: Client
    #: told the token's log hash, then its key's id, as soon as each is known (access line)
    note_token: Callable[[str], None]
    note_key: Callable[[str], None]
    #: given the key's origins: refuses a browser origin the key does not list
    admit_origins: Callable[[tuple[str, ...]], None]
    #: the request's DPoP proof: needed (by the same key) when the token is bound to one
    proof: ProofRequest | None = None

    def __repr__(self) -> str:  # the token must not end up in a log by accident
        return f"RenewalRequest(client={self.client!r})"


class TokenRenewer(TokenService):
    async def renew(self, request: RenewalRequest) -> TokenGrant:
        """The successor of ``request``'s token, or the problem that refuses it (counted,
        and a token refusal accounted for as on the message routes)."""
        admissions = self._admissions
        claims: ClientToken | None = None
        try:
            admissions.refuse_if_penalized(request.client)
            verified = admissions.verify(request.token, grace=admissions.renewal.grace_seconds)
            request.note_token(verified.log_hash)
            claims = verified.claims
            request.note_key(claims.key_id)
            await self._check_key(request, claims)
            if admissions.renewal.lifetime_over(claims, admissions.now()):
                raise ProblemError(
                    "conversation_expired",
                    "this conversation has reached its maximum length: start a new one",
                )
            successor = new_token_id()
            proof = request.proof
            headers, renewed = await admissions.renew_token(
                claims,
                request.client,
                request.method,
                successor,
                None if proof is None else ProofBinding(proof, request.token),
            )
        except ProblemError as err:
            if claims is None:  # refused before or by the token's checks: logged by hash
                request.note_token(log_hash(request.token))
            self._metrics.token_renewal(err.code)
            await admissions.token_refused(
                err, request.client, claims.key_id if claims is not None else None
            )
            raise
        # the successor keeps its predecessor's binding (a key-bound token its key,
        # cnf.jkt, and the fingerprint it records): under ``binding.action: flag`` a
        # renewal from another client is flagged and admitted, and must not rebind the
        # conversation to that client (its later uses would pass unflagged)
        # (none at all when the binding rule has no components)
        fingerprint = claims.fingerprint or admissions.fingerprint(request.client) or None
        issued = self._codec.renew(
            claims,
            jti=renewed.jti,
            issued_at=renewed.issued_at_ms // 1000,
            fingerprint=fingerprint,
        )
        self._metrics.token_renewal("renewed" if renewed.jti == successor else "repeated")
        expires_in = max(int(issued.claims.remaining(admissions.now())), 1)
        return TokenGrant(issued, expires_in, headers)

    async def _check_key(self, request: RenewalRequest, claims: ClientToken) -> None:
        """The token's key: its origins, still active, still holding the model."""
        keys = self._keys
        record = keys.store.lookup(claims.key_id)
        if record is None:  # a key newer than this replica's snapshot
            record = await keys.find_record(claims.key_id)
        request.admit_origins(record.origins if record is not None else ())
        if record is None or not record.active:
            raise ProblemError("token_revoked", "the agent key behind this token was revoked")
        if claims.model_id not in record.models or claims.model_id not in self._models:
            raise ProblemError("model_not_found", "the token's model is no longer served")
