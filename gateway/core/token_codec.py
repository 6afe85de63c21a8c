"""Client tokens: short-lived JWTs (pyjwt) signed with the active key of a key set.

Claims: ``iss``, ``aud``, ``iat``, ``nbf``, ``exp``, ``jti`` (128 random bits), ``cid``
(conversation id), ``mid`` (model id), ``akid`` (agent key id), when bound at issue ``fph``
(the client fingerprint), when bound to a key ``cnf.jkt`` (RFC 9449: the thumbprint of
the key whose proofs every use needs, :mod:`gateway.core.dpop`) and, in a renewed token,
``cst`` (when its conversation started:
the conversation's lifetime counts from there across renewals; a token without it started
its conversation), and ``shd`` when its conversation's state is sharded by agent key
(``store.sharding: key`` when the conversation started): 1, or a hot key's number of
sub-buckets. Renewals carry it over, so a conversation keeps one layout for its life.
The header carries ``kid``; decoding pins the algorithm and the issuer/audience, and
takes ``now`` from the caller.

Both directions skip pyjwt's generic machinery on the hot path. Signing writes the header
segment pyjwt writes, compact JSON claims and the HMAC (pyjwt reads the result; the tests
check it). Decoding has a fast path for the tokens this codec issues: when the header
segment is exactly one this codec writes, the HMAC over the first two segments matches in
canonical base64url, and the payload passes the claim checks that ``jwt.decode`` applies,
the claims are taken as they are. Anything else (any other header, a bad signature, a
malformed payload) goes to ``jwt.decode``, whose verdict stands, so the fast path accepts
nothing that pyjwt would refuse.

A client sends many messages with one token, and for one token string under this codec's
fixed keys the signature, JSON and claim checks always give the same verdict: the parsed
claims of the last ``VERIFIED_CACHE`` tokens that passed them are kept, and only the
clock-dependent checks (expiry, not-before) run again on each use. Only tokens that
passed enter, so junk cannot fill it; revocation and binding are the store's, per use.
Like the agent keys (:mod:`gateway.core.key_hash`), the tokens themselves are not kept:
the cache is keyed by a BLAKE2b of the token under a random per-codec key, and holds
what the log needs (:func:`log_hash`), so a memory dump shows no client token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jwt
import orjson
from jwt.utils import base64url_decode, base64url_encode

from gateway.core.identifiers import (
    CONVERSATION_ID_SHAPE,
    FINGERPRINT_SHAPE,
    KEY_ID_SHAPE,
    KEY_THUMBPRINT_SHAPE,
    MODEL_ID_SHAPE,
    TOKEN_ID_SHAPE,
    new_conversation_id,
    new_token_id,
)
from gateway.core.signing_keys import KeySet, SigningKey, SigningKeyError

#: verified tokens remembered (about 700 bytes each)
VERIFIED_CACHE = 8192
#: bytes of the BLAKE2b that keys the cache of verified tokens
CACHE_DIGEST_BYTES = 16
MIN_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
#: ``shd`` at most: the sub-buckets of a hot agent key (``store.hot_keys``)
MAX_SHARDS = 64
REQUIRED_CLAIMS = ("iss", "aud", "iat", "exp", "jti", "cid", "mid", "akid")
DIGESTS: dict[str, Callable[[], Any]] = {
    "HS256": hashlib.sha256,
    "HS384": hashlib.sha384,
    "HS512": hashlib.sha512,
}


class TokenRejected(Exception):
    """The token cannot be used; ``code`` is the public error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class ClientToken(NamedTuple):
    jti: str
    conversation_id: str
    model_id: str
    key_id: str
    issued_at: int
    expires_at: int
    fingerprint: str | None = None
    #: when the conversation started, for a renewed token (else ``issued_at``)
    conversation_started_at: int | None = None
    #: ``shd``: 0 when the conversation's state is under the store's one hash tag, else
    #: under its agent key's, over this many sub-buckets (1 for all but hot keys)
    shards: int = 0
    #: ``cnf.jkt``: the thumbprint of the key the token is bound to (proof of possession)
    jkt: str | None = None

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    @property
    def started_at(self) -> int:
        """When this token's conversation started (its first token was issued)."""
        started = self.conversation_started_at
        return self.issued_at if started is None else started


def log_hash(token: str) -> str:
    """What logs show instead of a token: enough to correlate, useless to replay."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed every check but the clock's: its claims, the time before
    which it is not valid yet, and its :func:`log_hash` (never the token itself)."""

    claims: ClientToken
    not_before: int
    log_hash: str


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
        self._digest = DIGESTS[algorithm]
        #: the exact header segment this codec writes for each key -> an HMAC keyed with
        #: that key's secret and fed nothing, copied per token (keying costs a third of it)
        self._own_headers = {self._header_segment(key): self._keyed(key) for key in keyset.keys}
        self._active_header = (self._header_segment(keyset.active).encode(), keyset.active)
        #: keyed BLAKE2b of a token -> what its checks found, oldest first (see the module
        #: docstring); the key is random, per codec, and never leaves it
        self._verified: dict[bytes, VerifiedToken] = {}
        #: BLAKE2b keyed once with a random key, copied per token (keying costs a third)
        self._cache_hash = hashlib.blake2b(
            key=secrets.token_bytes(32), digest_size=CACHE_DIGEST_BYTES
        )

    def _keyed(self, key: SigningKey) -> hmac.HMAC:
        return hmac.new(key.secret, digestmod=self._digest)

    def _header_segment(self, key: SigningKey) -> str:
        """The exact first segment pyjwt writes for ``key`` (computed once)."""
        token = jwt.encode({}, key.secret, algorithm=self._algorithm, headers={"kid": key.kid})
        return token.split(".", 1)[0]

    @property
    def leeway_seconds(self) -> int:
        return self._leeway

    @property
    def secrets(self) -> tuple[bytes, ...]:
        """The signing key set's secrets, the signing one first (other keys derive theirs
        from them: every replica holds the same)."""
        return tuple(key.secret for key in self._keyset.keys)

    def issue(
        self,
        *,
        key_id: str,
        model_id: str,
        now: float,
        fingerprint: str | None = None,
        shards: int = 0,
        jkt: str | None = None,
    ) -> IssuedToken:
        issued_at = int(now)
        claims = ClientToken(
            jti=new_token_id(),
            conversation_id=new_conversation_id(),
            model_id=model_id,
            key_id=key_id,
            issued_at=issued_at,
            expires_at=issued_at + self.ttl_seconds,
            fingerprint=fingerprint,
            shards=shards,
            jkt=jkt,
        )
        return IssuedToken(token=self._sign(self._payload(claims)), claims=claims)

    def renew(
        self, old: ClientToken, *, jti: str, issued_at: int, fingerprint: str | None
    ) -> IssuedToken:
        """The token that succeeds ``old`` in its conversation: same conversation, model
        and key, the given ``jti`` and issue time, the conversation's start, its state
        layout (``shd``) and the bound key (``cnf.jkt``) carried over.
        Deterministic: the same arguments under the same signing key give the same token
        (a renewal repeated within the rotation overlap gets the token the first got)."""
        claims = ClientToken(
            jti=jti,
            conversation_id=old.conversation_id,
            model_id=old.model_id,
            key_id=old.key_id,
            issued_at=issued_at,
            expires_at=issued_at + self.ttl_seconds,
            fingerprint=fingerprint,
            # the issue time is the store's clock, the start was the issuing replica's:
            # a replica ahead of the store must not make ``cst`` later than ``iat``
            conversation_started_at=min(old.started_at, issued_at),
            shards=old.shards,
            jkt=old.jkt,
        )
        return IssuedToken(token=self._sign(self._payload(claims)), claims=claims)

    def _payload(self, claims: ClientToken) -> dict[str, Any]:
        issued_at = claims.issued_at
        payload: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": claims.expires_at,
            "jti": claims.jti,
            "cid": claims.conversation_id,
            "mid": claims.model_id,
            "akid": claims.key_id,
        }
        if claims.fingerprint:  # none, or the empty one of a rule without components
            payload["fph"] = claims.fingerprint
        if claims.conversation_started_at is not None:
            payload["cst"] = claims.conversation_started_at
        if claims.shards:
            payload["shd"] = claims.shards
        if claims.jkt is not None:
            payload["cnf"] = {"jkt": claims.jkt}
        return payload

    def _sign(self, payload: dict[str, Any]) -> str:
        """What ``jwt.encode`` writes for the active key (the same header segment, compact
        JSON claims, HMAC signature), without its generic machinery."""
        header, key = self._active_header
        body = base64url_encode(orjson.dumps(payload))
        signing_input = header + b"." + body
        signature = base64url_encode(hmac.new(key.secret, signing_input, self._digest).digest())
        return (signing_input + b"." + signature).decode()

    def decode(self, token: str, now: float) -> ClientToken:
        return self.verify(token, now).claims

    def verify(self, token: str, now: float, *, grace: float = 0.0) -> VerifiedToken:
        """The token's claims and log hash if it passes every check now, else
        :class:`TokenRejected`; ``grace``: seconds past its expiry (and the leeway) it is
        still accepted (a renewal's grace)."""
        key = self._key(token)
        known = self._verified.get(key)
        if known is None:
            claims = self._own_claims(token)
            if claims is None:
                claims = self._pyjwt_claims(token)
            parsed, not_before = self._parse(claims)
            known = VerifiedToken(parsed, not_before, log_hash(token))
            verified = self._verified
            if len(verified) >= VERIFIED_CACHE:
                del verified[next(iter(verified))]
            verified[key] = known
        return self._in_time(known, now, grace)

    def _key(self, token: str) -> bytes:
        """The cache's key for ``token``: a BLAKE2b keyed with this codec's random key."""
        digest = self._cache_hash.copy()
        digest.update(token.encode())
        return digest.digest()

    def _in_time(self, known: VerifiedToken, now: float, grace: float = 0.0) -> VerifiedToken:
        """The clock-dependent checks, on every use."""
        if now >= known.claims.expires_at + self._leeway + grace:
            raise TokenRejected("token_expired", "the token has expired")
        if now + self._leeway < known.not_before:
            raise TokenRejected("token_invalid", "the token is not valid yet")
        return known

    def _own_claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a token exactly as this codec issues it, or None (see the module
        docstring). The checks mirror ``jwt.decode`` with this codec's options."""
        header, _, rest = token.partition(".")
        keyed = self._own_headers.get(header)
        if keyed is None:
            return None
        payload, dot, signature = rest.partition(".")
        if not dot or "." in signature:
            return None
        signing_input = token[: len(header) + 1 + len(payload)].encode()
        mac = keyed.copy()
        mac.update(signing_input)
        expected = base64url_encode(mac.digest())
        if not hmac.compare_digest(expected, signature.encode()):
            return None
        try:
            claims = orjson.loads(base64url_decode(payload))
        except (orjson.JSONDecodeError, ValueError):
            return None
        if not isinstance(claims, dict) or not self._claims_pass(claims):
            return None
        return claims

    def _claims_pass(self, claims: dict[str, Any]) -> bool:
        """``jwt.decode``'s claim checks: required claims not null, issuer, audience
        (a string or a list of strings holding ours), ``sub`` and ``jti`` strings."""
        for name in REQUIRED_CLAIMS:  # a loop, not any(): this runs on every request
            if claims.get(name) is None:
                return False
        if not isinstance(claims["iss"], str) or claims["iss"] != self._issuer:
            return False
        audience = claims["aud"]
        if not audience:
            return False
        if isinstance(audience, str):  # the usual case (ours): one string
            if audience != self._audience:
                return False
        elif isinstance(audience, list):
            for item in audience:
                if not isinstance(item, str):
                    return False
            if self._audience not in audience:
                return False
        else:
            return False
        return isinstance(claims["jti"], str) and isinstance(claims.get("sub", ""), str)

    def _pyjwt_claims(self, token: str) -> dict[str, Any]:
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
        return claims

    def _parse(self, claims: dict[str, Any]) -> tuple[ClientToken, int]:
        """The claims, and the time before which the token is not valid yet. Every id
        must have the shape this gateway gives it (:mod:`gateway.core.identifiers`):
        they go into upstream headers, store keys and logs."""
        try:
            exp, iat = int(claims["exp"]), int(claims["iat"])
            nbf = int(claims.get("nbf", iat))
            started = claims.get("cst")
            parsed = ClientToken(
                jti=_shaped(claims["jti"], TOKEN_ID_SHAPE),
                conversation_id=_shaped(claims["cid"], CONVERSATION_ID_SHAPE),
                model_id=_shaped(claims["mid"], MODEL_ID_SHAPE),
                key_id=_shaped(claims["akid"], KEY_ID_SHAPE),
                issued_at=iat,
                expires_at=exp,
                fingerprint=_shaped(claims["fph"], FINGERPRINT_SHAPE) if "fph" in claims else None,
                conversation_started_at=_started(started, iat),
                shards=_shards(claims.get("shd")),
                jkt=_confirmation(claims.get("cnf")),
            )
        except (TypeError, ValueError, OverflowError):
            raise TokenRejected("token_invalid", "the token's claims are malformed") from None
        return parsed, max(nbf, iat)


def _started(value: object, issued_at: int) -> int | None:
    """``cst``: an integer time no later than the token's issue."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value > issued_at:
        raise ValueError("not a conversation start this gateway writes")
    return value


def _shards(value: object) -> int:
    """``shd``: absent (0), or a number of shards from 1 to :data:`MAX_SHARDS`."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SHARDS:
        raise ValueError("not a layout this gateway writes")
    return value


def _confirmation(value: object) -> str | None:
    """``cnf``: absent, or exactly ``{"jkt": <thumbprint>}`` (the only member written)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"jkt"}:
        raise ValueError("not a confirmation this gateway writes")
    return _shaped(value["jkt"], KEY_THUMBPRINT_SHAPE)


def _shaped(value: object, shape: re.Pattern[str]) -> str:
    if not isinstance(value, str) or shape.fullmatch(value) is None:
        raise ValueError("not an id this gateway issues")
    return value
