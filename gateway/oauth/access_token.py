"""Checking a JWT access token (RFC 9068) once its signing key is known. No I/O.

Two steps, because the key depends on the header: :func:`read_header` refuses what can be
refused without a key (malformed, ``alg`` outside the allow-list, which also rules out
``none`` and HMAC "signed with the public key", wrong ``typ``, ``crit``); then
:func:`verify` checks the signature with the key chosen for that ``kid``/``alg`` and the
claims: ``iss``, ``aud``, ``exp``/``nbf`` against the caller's ``now`` with a small
leeway, ``sub``; and reads the scopes (``scope``, space-separated, or ``scp``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.oauth.settings import SCOPE_TOKEN, OAuthSettings

MAX_TOKEN_CHARS = 16 * 1024
#: RFC 9068 section 4: "at+jwt", or its full media type
AT_JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})
_SCOPE = re.compile(SCOPE_TOKEN)
_HEADER_SAFE = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?$")


class TokenInvalid(Exception):
    """The access token is not acceptable; ``str()`` is safe to show its bearer."""


class TokenOutOfTime(TokenInvalid):
    """A genuine token used too late or too early: ordinary, not an attack."""


class TokenKeyUnknown(TokenInvalid):
    """Signed with a key the provider's key set (as last fetched) does not have: maybe a
    key the provider has just rotated to. Nothing was verified, so it proves nothing
    either way; not counted as a forgery."""


@dataclass(frozen=True, slots=True)
class TokenHeader:
    alg: str
    kid: str | None


@dataclass(frozen=True, slots=True)
class AccessToken:
    subject: str
    scopes: frozenset[str]
    client_id: str | None
    expires_at: int


@dataclass(frozen=True, slots=True)
class AccessTokenPolicy:
    issuer: str
    audiences: tuple[str, ...]
    algorithms: frozenset[str]
    leeway_seconds: int
    require_typ_at_jwt: bool

    @classmethod
    def from_settings(cls, settings: OAuthSettings) -> AccessTokenPolicy:
        return cls(
            issuer=settings.issuer,
            audiences=settings.audience,
            algorithms=frozenset(settings.algorithms),
            leeway_seconds=settings.leeway_seconds,
            require_typ_at_jwt=settings.require_typ_at_jwt,
        )


def read_header(token: str, policy: AccessTokenPolicy) -> TokenHeader:
    if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise TokenInvalid("the access token is not a JWS compact serialisation")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise TokenInvalid("the access token header is malformed") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in policy.algorithms:
        raise TokenInvalid("the access token's algorithm is not accepted")
    if "crit" in header:
        raise TokenInvalid("the access token names critical extensions this server lacks")
    typ = header.get("typ")
    if policy.require_typ_at_jwt and (not isinstance(typ, str) or typ.lower() not in AT_JWT_TYPES):
        raise TokenInvalid("the token is not an access token (typ must be at+jwt)")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256):
        raise TokenInvalid("the access token's kid is malformed")
    return TokenHeader(alg=alg, kid=kid)


def verify(
    token: str, header: TokenHeader, key: Any, policy: AccessTokenPolicy, now: float
) -> AccessToken:
    """``key`` is the verification key (a ``cryptography`` public key) for ``header``."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[header.alg],
            audience=list(policy.audiences),
            issuer=policy.issuer,
            options={
                "require": ["iss", "aud", "exp", "sub"],
                # time claims are checked below against the caller's ``now``
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise TokenInvalid("the access token's signature does not verify") from None
    except jwt.InvalidIssuerError:
        raise TokenInvalid("the access token's issuer is not accepted") from None
    except jwt.InvalidAudienceError:
        raise TokenInvalid("the access token is not meant for this server (aud)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenInvalid(f"the access token has no {exc.claim!r} claim") from None
    except (jwt.PyJWTError, TypeError, ValueError):
        raise TokenInvalid("the access token is not valid") from None
    expires_at = _number(claims.get("exp"), "exp")
    leeway = policy.leeway_seconds
    if now >= expires_at + leeway:
        raise TokenOutOfTime("the access token has expired")
    if "nbf" in claims and now + leeway < _number(claims["nbf"], "nbf"):
        raise TokenOutOfTime("the access token is not valid yet")
    return AccessToken(
        subject=_header_safe(claims.get("sub"), "sub"),
        scopes=_scopes(claims),
        client_id=_client_id(claims),
        expires_at=int(expires_at),
    )


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenInvalid(f"the access token's {name!r} claim is not a number")
    return float(value)


def _header_safe(value: object, name: str) -> str:
    """Claims forwarded in headers: printable ASCII, no surrounding blanks, 256 at most."""
    if not isinstance(value, str) or not _HEADER_SAFE.fullmatch(value):
        raise TokenInvalid(f"the access token's {name!r} claim is not a short printable string")
    return value


def _client_id(claims: dict[str, Any]) -> str | None:
    for name in ("client_id", "azp"):
        if claims.get(name) is not None:
            return _header_safe(claims[name], name)
    return None


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    raw = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw, str):
        items = raw.split()
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        items = raw
    else:
        raise TokenInvalid("the access token's scope claim is malformed")
    if not all(_SCOPE.fullmatch(item) for item in items):
        raise TokenInvalid("the access token's scope claim is malformed")
    return frozenset(items)
