"""A local OAuth2 identity provider: real keys, a real JWKS endpoint on a real socket.

It publishes RSA and EC public keys at ``/.well-known/jwks.json``, counts the fetches,
can rotate to a new signing key (as a provider does on schedule, signing with the new key
at once) or fail on purpose, and signs access tokens with its private keys (or forges
tokens the gateway must refuse).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

JWKS_PATH = "/.well-known/jwks.json"
AUDIENCE = "agent-gateway-private"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str, alg: str = "RS256", bits: int = 2048) -> SigningKey:
        return cls(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=bits))

    @classmethod
    def ec(cls, kid: str, alg: str = "ES256") -> SigningKey:
        curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}[alg]
        return cls(kid, alg, ec.generate_private_key(curve))

    def public_jwk(self, *, with_alg: bool = True) -> dict[str, Any]:
        public = self.private.public_key()
        algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
        jwk: dict[str, Any] = algorithm.to_jwk(public, as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig"})
        if with_alg:
            jwk["alg"] = self.alg
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


@dataclass
class IdentityProvider:
    issuer: str = ""
    keys: list[SigningKey] = field(default_factory=list)
    #: extra raw JWKs published beside the keys (for odd-key tests)
    extra_jwks: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    status: int = 200
    #: the key :meth:`sign` uses when given none; the first published key until a rotation
    signing: SigningKey | None = None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys] + self.extra_jwks}

    def key(self, kid: str) -> SigningKey:
        return next(k for k in self.keys if k.kid == kid)

    def rotate(self, new: SigningKey | str, *, withdraw: bool = True) -> SigningKey:
        """Publish ``new`` (a fresh RSA key when given a ``kid``) and sign with it from now
        on; the first published key is withdrawn unless ``withdraw`` is false. Returns the
        withdrawn key (or, when nothing is withdrawn, the new one)."""
        key = SigningKey.rsa(new) if isinstance(new, str) else new
        self.keys.append(key)
        self.signing = key
        return self.keys.pop(0) if withdraw else key

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": "user-42",
            "client_id": "shop-backoffice",
            "scope": "chat:read chat:write",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def sign(
        self,
        key: SigningKey | None = None,
        *,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        key = key or self.signing or self.keys[0]
        head = {"kid": key.kid, "typ": "at+jwt", **(headers or {})}
        head = {k: v for k, v in head.items() if v is not None}
        return jwt.encode(self.claims(**claims), key.private, algorithm=key.alg, headers=head)

    def unsigned(self, **claims: Any) -> str:
        """``alg: none``: no signature at all."""
        header = {"alg": "none", "typ": "at+jwt", "kid": self.keys[0].kid}
        return f"{b64json(header)}.{b64json(self.claims(**claims))}."

    def hmac_with_public_key(self, key: SigningKey | None = None, **claims: Any) -> str:
        """HS256 keyed with the RSA public key's PEM: the classic algorithm confusion."""
        key = key or self.keys[0]
        header = {"alg": "HS256", "typ": "at+jwt", "kid": key.kid}
        signing_input = f"{b64json(header)}.{b64json(self.claims(**claims))}"
        mac = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(mac)}"


def tampered(token: str, **changes: Any) -> str:
    """``token`` with its payload changed and its signature kept."""
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{head}.{b64json(claims)}.{signature}"


IDP = web.AppKey("idp", IdentityProvider)


async def _jwks(request: web.Request) -> web.Response:
    idp = request.app[IDP]
    idp.fetches += 1
    if idp.status != 200:
        return web.Response(status=idp.status, text="unavailable")
    return web.json_response(idp.jwks())


def identity_provider_app(idp: IdentityProvider) -> web.Application:
    app = web.Application()
    app[IDP] = idp
    app.router.add_get(JWKS_PATH, _jwks)
    return app
