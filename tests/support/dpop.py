"""A DPoP client for tests: a key pair and the proofs it signs (RFC 9449)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from gateway.core.dpop import thumbprint, token_hash


class ProofKey:
    """A client's key pair: ``alg`` ES256 (P-256) or EdDSA (Ed25519)."""

    def __init__(self, alg: str = "ES256") -> None:
        self.alg = alg
        if alg == "ES256":
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
            self.jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.jwk = json.loads(OKPAlgorithm.to_jwk(self.private.public_key()))
        self.jwk.pop("kid", None)
        self.jkt = thumbprint(self.jwk)

    def proof(
        self,
        method: str,
        url: str,
        *,
        token: str | None = None,
        iat: float | None = None,
        jti: str | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
    ) -> str:
        """A proof for ``method url`` (with ``ath`` when ``token``); ``header`` and
        ``claims`` override or add members, ``drop`` removes claims."""
        body: dict[str, Any] = {
            "jti": jti or secrets.token_urlsafe(16),
            "htm": method,
            "htu": url,
            "iat": int(time.time() if iat is None else iat),
        }
        if token is not None:
            body["ath"] = token_hash(token)
        body.update(claims or {})
        for name in drop:
            body.pop(name, None)
        headers = {"typ": "dpop+jwt", "jwk": self.jwk, **(header or {})}
        return jwt.encode(body, self.private, algorithm=self.alg, headers=headers)
