"""The ``oauth:`` configuration section: the identity provider and the private routes.

Kept apart from :mod:`gateway.config` (which includes it) because it is the one section
with security rules of its own: only asymmetric algorithms, route prefixes that cannot
shadow the public API or escape their upstream prefix, RFC 6749 scope syntax.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: JWS algorithms a resource server may verify with a public key (RFC 7518, RFC 8037)
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
HTTP_METHODS: tuple[Method, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
#: the public API and the widget are never behind OAuth2
RESERVED_PATHS = ("/v1/chat/conversation/public", "/widget.js", "/openapi.json")
_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
#: RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = r"^[\x21\x23-\x5B\x5D-\x7E]{1,200}$"
_SCOPE = re.compile(SCOPE_TOKEN)


def _path(value: str, what: str) -> str:
    value = value.rstrip("/") if value != "/" else value
    if not _PATH.fullmatch(value):
        raise ValueError(f"{what} must look like /segment[/segment...] (letters, digits, ._~-)")
    if any(part in (".", "..") for part in value.split("/")):
        raise ValueError(f"{what} must not contain '.' or '..' segments")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrivateRoute(_Section):
    """Requests under ``prefix`` go to ``upstream_prefix`` (same path by default) with the
    rest of the path and the query unchanged, for tokens holding every one of ``scopes``."""

    prefix: str
    upstream_prefix: str | None = None
    scopes: tuple[str, ...] = ()
    methods: tuple[Method, ...] = HTTP_METHODS

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = _path(value, "prefix")
        for reserved in RESERVED_PATHS:
            if reserved == value or reserved.startswith(value + "/"):
                raise ValueError(f"prefix {value!r} would cover {reserved}, which stays public")
            if value.startswith(reserved + "/"):
                raise ValueError(f"prefix {value!r} is inside {reserved}, which stays public")
        return value

    @field_validator("upstream_prefix")
    @classmethod
    def _upstream_prefix(cls, value: str | None) -> str | None:
        return None if value is None else _path(value, "upstream_prefix")

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for scope in value:
            if not _SCOPE.fullmatch(scope):
                raise ValueError(f"{scope!r} is not a scope token (RFC 6749 section 3.3)")
        return tuple(dict.fromkeys(value))

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[Method, ...]) -> tuple[Method, ...]:
        if not value:
            raise ValueError("list at least one method")
        return tuple(dict.fromkeys(value))

    @property
    def target_prefix(self) -> str:
        return self.upstream_prefix or self.prefix


class OAuthSettings(_Section):
    issuer: str = Field(min_length=1)
    #: accepted ``aud`` values; a token must name at least one
    audience: tuple[str, ...] = Field(min_length=1)
    jwks_url: str = Field(pattern=r"^https?://[^\s/?#]+(/[^\s#]*)?$")
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway_seconds: int = Field(30, ge=0, le=300)
    #: require the RFC 9068 header ``typ: at+jwt`` (keeps ID tokens out)
    require_typ_at_jwt: bool = False
    #: a fetched key set is used this long before it is fetched again
    jwks_cache_seconds: float = Field(600, ge=10, le=86_400)
    #: at most one fetch per this interval, whatever the tokens say (unknown ``kid``s)
    jwks_min_refresh_seconds: float = Field(30, ge=1, le=3600)
    jwks_timeout_seconds: float = Field(5, gt=0, le=60)
    routes: tuple[PrivateRoute, ...] = Field(min_length=1)

    @field_validator("jwks_url")
    @classmethod
    def _tls_unless_local(cls, value: str) -> str:
        host = urlsplit(value).hostname or ""
        if value.startswith("http://") and host not in ("localhost", "127.0.0.1", "::1"):
            raise ValueError(
                "the key set must come over https: whoever can alter it can forge every "
                "access token (plain http only for a provider on this host)"
            )
        return value

    @field_validator("audience", mode="before")
    @classmethod
    def _one_audience(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one algorithm")
        for alg in value:
            if alg.lower() == "none":
                raise ValueError("'none' means unsigned tokens and is never accepted")
            if alg.upper().startswith("HS"):
                raise ValueError(
                    f"{alg} is symmetric (the provider's secret would be needed to verify); "
                    f"use one of {', '.join(ASYMMETRIC_ALGORITHMS)}"
                )
            if alg not in ASYMMETRIC_ALGORITHMS:
                known = ", ".join(ASYMMETRIC_ALGORITHMS)
                raise ValueError(f"unknown algorithm {alg!r}; use one of {known}")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _consistent(self) -> OAuthSettings:
        if self.jwks_min_refresh_seconds > self.jwks_cache_seconds:
            raise ValueError("jwks_min_refresh_seconds must not exceed jwks_cache_seconds")
        seen: dict[tuple[str, str], int] = {}
        for index, route in enumerate(self.routes):
            for method in route.methods:
                if (route.prefix, method) in seen:
                    raise ValueError(
                        f"routes[{index}]: {method} {route.prefix} is already routed by "
                        f"routes[{seen[(route.prefix, method)]}]"
                    )
                seen[(route.prefix, method)] = index
        return self
