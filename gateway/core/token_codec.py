"""Client tokens: short-lived JWTs (pyjwt) signed with the active key of a key set.

Claims: ``iss``, ``aud``, ``iat``, ``nbf``, ``exp``, ``jti`` (128 random bits), ``cid``
(conversation id), ``mid`` (model id), ``akid`` (agent key id) and, when bound at issue,
``fph`` (the client fingerprint). The header carries ``kid``; decoding pins the algorithm
and the issuer/audience, and takes ``now`` from the caller.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.core.signing_keys import KeySet, SigningKeyError

MIN_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
REQUIRED_CLAIMS = ("iss", "aud", "iat", "exp", "jti", "cid", "mid", "akid")


class TokenRejected(Exception):
    """The token cannot be used; ``code`` is the public error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ClientToken:
    jti: str
    conversation_id: str
    model_id: str
    key_id: str
    issued_at: int
    expires_at: int
    fingerprint: str | None = None

    def remaining(self, now: float) -> float:
        return self.expires_at - now


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    claims: ClientToken


class TokenCodec:
    def __init__(
        self,
        keyset: KeySet,
        *,
        issuer: str,
        audience: str,
        ttl_seconds: int,
        algorithm: str = "HS256",
        leeway_seconds: int = 5,
    ) -> None:
        minimum = MIN_KEY_BYTES[algorithm]
        for key in keyset.keys:
            if len(key.secret) < minimum:
                raise SigningKeyError(
                    f"signing key {key.kid!r} is {len(key.secret)} bytes; {algorithm} needs "
                    f"at least {minimum} (RFC 7518 section 3.2)"
                )
        self._keyset = keyset
        self._verify_keys = keyset.by_kid()
        self._issuer = issuer
        self._audience = audience
        self.ttl_seconds = ttl_seconds
        self._algorithm = algorithm
        self._leeway = leeway_seconds
        self._decode_options: Any = {
            "require": list(REQUIRED_CLAIMS),
            # time claims are checked below against the caller's ``now``
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
        }

    @property
    def leeway_seconds(self) -> int:
        return self._leeway

    def issue(
        self, *, key_id: str, model_id: str, now: float, fingerprint: str | None = None
    ) -> IssuedToken:
        issued_at = int(now)
        claims = ClientToken(
            jti=secrets.token_urlsafe(16),
            conversation_id=str(uuid.uuid4()),
            model_id=model_id,
            key_id=key_id,
            issued_at=issued_at,
            expires_at=issued_at + self.ttl_seconds,
            fingerprint=fingerprint,
        )
        payload: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": claims.expires_at,
            "jti": claims.jti,
            "cid": claims.conversation_id,
            "mid": model_id,
            "akid": key_id,
        }
        if fingerprint is not None:
            payload["fph"] = fingerprint
        active = self._keyset.active
        token = jwt.encode(
            payload, active.secret, algorithm=self._algorithm, headers={"kid": active.kid}
        )
        return IssuedToken(token=token, claims=claims)

    def decode(self, token: str, now: float) -> ClientToken:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenRejected("token_invalid", "the token is malformed") from None
        kid = header.get("kid")
        secret = self._verify_keys.get(kid) if isinstance(kid, str) else None
        if secret is None:
            raise TokenRejected("token_invalid", "the token was not signed by this gateway")
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options=self._decode_options,
            )
        except jwt.InvalidTokenError:
            raise TokenRejected("token_invalid", "the token is not valid") from None
        try:
            exp, iat = int(claims["exp"]), int(claims["iat"])
            nbf = int(claims.get("nbf", iat))
            parsed = ClientToken(
                jti=_text(claims["jti"]),
                conversation_id=_text(claims["cid"]),
                model_id=_text(claims["mid"]),
                key_id=_text(claims["akid"]),
                issued_at=iat,
                expires_at=exp,
                fingerprint=_text(claims["fph"]) if "fph" in claims else None,
            )
        except (TypeError, ValueError):
            raise TokenRejected("token_invalid", "the token's claims are malformed") from None
        if now >= exp + self._leeway:
            raise TokenRejected("token_expired", "the token has expired")
        if now + self._leeway < nbf or now + self._leeway < iat:
            raise TokenRejected("token_invalid", "the token is not valid yet")
        return parsed


def _text(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ValueError("expected a short non-empty string")
    return value
