"""Proof of possession in the way of RFC 9449 (DPoP): checking one proof, with ``now``
passed in.

A proof is a JWT the client signs with a key it holds: header ``typ: dpop+jwt``, ``alg``
(ES256, or EdDSA with Ed25519), ``jwk`` (the public key, never a private member); claims
``jti``, ``htm`` (the request's method), ``htu`` (the URL called, without query or
fragment), ``iat`` and, with a token, ``ath`` (base64url SHA-256 of the token). A token
bound to a key carries ``cnf.jkt``, the key's RFC 7638 thumbprint.

:meth:`ProofVerifier.verify` checks everything that needs no state: the shape, the
signature with the header's key, the method, the URL, the time, the token hash, and only
then that the key is the token's; the proof's ``jti`` not seen before is the store's
check (admit.lua), in the same call as the rest of admission. A proof that fails is
:class:`ProofRejected` with a short ``reason`` (a metrics label); a valid proof by
another key than the token's is :class:`ProofKeyMismatch` (the token was copied).

A client whose clock is wrong sends proofs the window refuses: the refusal carries a
``DPoP-Nonce`` (:class:`ProofNonces`), and a proof with that ``nonce`` passes whatever
its ``iat`` says, as long as the nonce is valid (one to two windows).

Parsing a JWK into a key object costs more than the signature check itself: the keys of
the last :data:`KEY_CACHE` thumbprints are kept (a client proves with one key many times),
and so are the header segments they came in, exactly as sent (a client's proofs share
one): the next proof with that header goes straight to its signature.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidKeyError
from jwt.utils import base64url_decode, base64url_encode

#: the proof window's default (``tokens.proof_window_seconds``)
DEFAULT_WINDOW_SECONDS = 60
#: parsed public keys remembered, by thumbprint
KEY_CACHE = 4096
#: a proof longer than this is refused before any parsing (a P-256 proof is ~600 chars)
MAX_PROOF_CHARS = 2048
#: a ``jti`` longer than this is refused (RFC 9449 suggests 96 random bits)
MAX_JTI_CHARS = 128
PROOF_TYPE = "dpop+jwt"
#: members of a JWK that only a private key has (RFC 7518 section 6)
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
#: the members of each key type's thumbprint (RFC 7638 section 3.2), and its algorithm
THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}
#: alg -> (kty, crv) the key must have
KEY_TYPES = {"ES256": ("EC", "P-256"), "EdDSA": ("OKP", "Ed25519")}
#: pyjwt's own (ES256 pinned to P-256), on the ``cryptography`` backend
ALGORITHMS = {name: get_default_algorithms()[name] for name in KEY_TYPES}
DEFAULT_PORTS = {"http": 80, "https": 443}
#: URLs normalised (the request's and the proofs'), remembered: a client calls a few
URL_CACHE = 8192


class ProofRejected(Exception):
    """The proof is missing or bad: 401 ``invalid_dpop_proof``; ``reason`` is one of
    ``gateway.observability.metrics.ProofRefusal`` (a metrics label)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class ProofKeyMismatch(Exception):
    """A valid proof, by another key than the token's: the token was copied."""


@dataclass(frozen=True, slots=True)
class Proof:
    """A proof that passed every check but the replay check."""

    #: the key's RFC 7638 thumbprint
    jkt: str
    jti: str
    iat: int
    #: with a gateway nonce (``nonce``): the end of that nonce's validity (epoch
    #: seconds), which then bounds the proof's freshness instead of ``iat``; else 0
    nonce_until: float = 0.0

    def replay_id(self) -> str:
        """What the store remembers of this proof: its key and ``jti``, hashed (the key's
        ``jti`` are the client's choice; two keys may pick the same)."""
        return hashlib.sha256(f"{self.jkt}.{self.jti}".encode()).hexdigest()[:32]


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: base64url SHA-256 of the required members, sorted, no whitespace."""
    members = THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None:
        raise ValueError("unsupported key type")
    required = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise ValueError(f"the key has no {name}")
        required[name] = value
    canonical = orjson.dumps(required, option=orjson.OPT_SORT_KEYS)
    return base64url_encode(hashlib.sha256(canonical).digest()).decode()


def token_hash(token: str) -> str:
    """``ath``: base64url SHA-256 of the access token (RFC 9449 section 4.2)."""
    return base64url_encode(hashlib.sha256(token.encode()).digest()).decode()


@functools.lru_cache(maxsize=URL_CACHE)
def normalize_url(url: str) -> str | None:
    """``url`` as compared with ``htu``: scheme and host in lower case, the scheme's
    default port dropped, an empty path as ``/``, no query nor fragment; None when it
    is not an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in DEFAULT_PORTS or not host or parts.username or parts.password:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


def _segment_json(segment: str) -> dict[str, Any]:
    try:
        value = orjson.loads(base64url_decode(segment))
    except (orjson.JSONDecodeError, ValueError, binascii.Error):
        raise ProofRejected("malformed", "the DPoP proof is not a JWT") from None
    if not isinstance(value, dict):
        raise ProofRejected("malformed", "the DPoP proof is not a JWT")
    return value


class ProofNonces:
    """``DPoP-Nonce`` values (RFC 9449 section 9), stateless and shared by every replica:
    the current period's number (``window_seconds`` long) and an HMAC of it under a
    secret every replica holds (derived from the token signing keys: any of them, so a
    key rotation keeps nonces valid). A nonce is valid in its period and the next one,
    so for one to two windows; it proves the gateway's time, which is what a client
    whose clock is wrong lacks."""

    LABEL = b"agent-gateway dpop-nonce v1"
    #: MAC bytes of a nonce, and their base64url length: ``<period>.<mac>`` is about 33
    #: characters
    MAC_BYTES = 16
    MAC_CHARS = 22

    def __init__(
        self, secrets: tuple[bytes, ...], window_seconds: int, margin_seconds: float = 0.0
    ) -> None:
        if not secrets:
            raise ValueError("nonces need at least one secret")
        self.window_seconds = window_seconds
        #: how far another replica's clock may be ahead: its next period's nonces pass
        #: that long before this clock reaches the period
        self.margin_seconds = margin_seconds
        self._keys = tuple(
            hmac.new(secret, self.LABEL, hashlib.sha256).digest() for secret in secrets
        )

    def _mac(self, key: bytes, period: int) -> str:
        digest = hmac.new(key, str(period).encode(), hashlib.sha256).digest()
        return base64url_encode(digest[: self.MAC_BYTES]).decode()

    def issue(self, now: float) -> str:
        """The nonce of ``now``'s period (signed with the first secret)."""
        period = int(now // self.window_seconds)
        return f"{period}.{self._mac(self._keys[0], period)}"

    def valid_until(self, nonce: object, now: float) -> float | None:
        """When ``nonce`` stops being valid (epoch seconds), or None when it is not a
        nonce of this gateway's, or no longer valid at ``now``."""
        if not isinstance(nonce, str) or len(nonce) > 64:
            return None
        number, dot, mac = nonce.partition(".")
        # ASCII only: str.isdigit() admits '²', which int() refuses, and compare_digest
        # refuses to compare non-ASCII strings
        if not dot or not (number.isascii() and number.isdigit()) or len(number) > 12:
            return None
        if len(mac) != self.MAC_CHARS or not mac.isascii():
            return None
        period = int(number)
        window = self.window_seconds
        current = int(now // window)
        # the next period too, from a replica whose clock is ahead by up to the margin
        early = period == current + 1 and period * window - now <= self.margin_seconds
        if period not in (current, current - 1) and not early:
            return None
        for key in self._keys:
            if hmac.compare_digest(self._mac(key, period), mac):
                return (period + 2) * window
        return None


class ProofVerifier:
    """Checks proofs for one gateway (its window); keeps the keys it parsed."""

    def __init__(
        self,
        *,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        algorithms: tuple[str, ...] = ("ES256", "EdDSA"),
        key_cache: int = KEY_CACHE,
        nonces: ProofNonces | None = None,
        replay_margin_seconds: float = 1.0,
    ) -> None:
        for name in algorithms:
            if name not in ALGORITHMS:
                raise ValueError(f"unsupported DPoP algorithm {name!r}")
        self.window_seconds = window_seconds
        #: the gateway's nonces (``DPoP-Nonce``); None: a proof with a nonce is refused
        self.nonces = nonces
        #: a proof is remembered this much longer than it passes here: another replica's
        #: clock may be behind this one's (by as much as tokens tolerate, their leeway)
        self.replay_margin_seconds = replay_margin_seconds
        self._algorithms = frozenset(algorithms)
        self._key_cache = key_cache
        self._keys: OrderedDict[str, Any] = OrderedDict()
        #: header segments checked, as sent -> (alg, thumbprint, key)
        self._heads: OrderedDict[str, tuple[str, str, Any]] = OrderedDict()

    def replay_ttl_ms(self, proof: Proof, now: float) -> int:
        """How long the store must remember ``proof``: until it leaves the window, or
        its nonce expires."""
        # with a nonce, ``iat`` is the client's (any integer): never a duration
        until = proof.nonce_until or proof.iat + self.window_seconds
        return max(int((until - now + self.replay_margin_seconds) * 1000), 1000)

    def verify(
        self,
        proof: str | None,
        *,
        method: str,
        url: str,
        now: float,
        token: str | None = None,
        jkt: str | None = None,
    ) -> Proof:
        """The proof of a request ``method url`` (``url`` as the gateway was called,
        normalised by :func:`normalize_url`), with ``token`` when one is presented and
        ``jkt`` the key it is bound to. :class:`ProofRejected` or
        :class:`ProofKeyMismatch` when it does not pass."""
        if not proof:
            raise ProofRejected("missing", "this request needs a DPoP proof")
        if len(proof) > MAX_PROOF_CHARS or proof.count(".") != 2:
            raise ProofRejected("malformed", "the DPoP proof is not a JWT")
        head, body, signature = proof.split(".")
        heads = self._heads
        known = heads.get(head)
        if known is None:
            known = self._header(head)
        else:
            heads.move_to_end(head)
        alg, key_thumbprint, key = known
        try:
            raw_signature = base64url_decode(signature)
        except (ValueError, binascii.Error):
            raise ProofRejected("malformed", "the DPoP proof is not a JWT") from None
        signing_input = proof[: len(head) + 1 + len(body)].encode()
        if not ALGORITHMS[alg].verify(signing_input, key, raw_signature):
            raise ProofRejected("signature", "the DPoP proof's signature does not verify")
        claims = _segment_json(body)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
            raise ProofRejected("malformed", "the DPoP proof needs a jti")
        if claims.get("htm") != method:
            raise ProofRejected("method", "the DPoP proof is for another method")
        htu = claims.get("htu")
        expected = normalize_url(url)
        if not isinstance(htu, str) or expected is None or normalize_url(htu) != expected:
            raise ProofRejected("url", "the DPoP proof is for another URL")
        iat = claims.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int):
            raise ProofRejected("time", "the DPoP proof needs an integer iat")
        nonce_until = 0.0
        if "nonce" in claims:  # the gateway's own time vouches for the proof's freshness
            until = None if self.nonces is None else self.nonces.valid_until(claims["nonce"], now)
            if until is None:
                raise ProofRejected("nonce", "the DPoP proof's nonce is not valid: use DPoP-Nonce")
            nonce_until = until
        elif abs(now - iat) > self.window_seconds:
            raise ProofRejected("time", "the DPoP proof's iat is outside the accepted window")
        if token is not None and claims.get("ath") != token_hash(token):
            raise ProofRejected("token_hash", "the DPoP proof is for another token")
        if jkt is not None and key_thumbprint != jkt:
            raise ProofKeyMismatch()
        return Proof(key_thumbprint, jti, iat, nonce_until)

    def _header(self, head: str) -> tuple[str, str, Any]:
        """A header segment checked (its type, algorithm and public key): the algorithm,
        the key's thumbprint and key object. A client's proofs share one header (the same
        key, the same algorithm): the segment is remembered as it is, byte for byte, so the
        next proof by that key skips decoding, validating and hashing it again."""
        header = _segment_json(head)
        if "crit" in header:  # RFC 7515 4.1.11: no extension is understood here
            raise ProofRejected("malformed", "the DPoP proof names critical extensions")
        if header.get("typ") != PROOF_TYPE:
            raise ProofRejected("type", "the DPoP proof's typ must be dpop+jwt")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise ProofRejected("algorithm", "the DPoP proof's alg is not accepted")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise ProofRejected("key", "the DPoP proof has no public key")
        key_thumbprint, key = self._public_key(alg, jwk)
        known = (alg, key_thumbprint, key)
        heads = self._heads
        heads[head] = known
        if len(heads) > self._key_cache:
            heads.popitem(last=False)
        return known

    def _public_key(self, alg: str, jwk: dict[str, Any]) -> tuple[str, Any]:
        """The key's thumbprint and key object (cached by thumbprint)."""
        if PRIVATE_MEMBERS.intersection(jwk):
            raise ProofRejected("key", "the DPoP proof's key must be a public key")
        if (jwk.get("kty"), jwk.get("crv")) != KEY_TYPES[alg]:
            raise ProofRejected("key", "the DPoP proof's key does not suit its alg")
        try:
            jkt = thumbprint(jwk)
        except ValueError:
            raise ProofRejected("key", "the DPoP proof's key is malformed") from None
        keys = self._keys
        key = keys.get(jkt)
        if key is not None:
            keys.move_to_end(jkt)
            return jkt, key
        members = {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}
        try:
            key = ALGORITHMS[alg].from_jwk(members)
        except (InvalidKeyError, ValueError, TypeError):
            raise ProofRejected("key", "the DPoP proof's key is malformed") from None
        keys[jkt] = key
        if len(keys) > self._key_cache:
            keys.popitem(last=False)
        return jkt, key
