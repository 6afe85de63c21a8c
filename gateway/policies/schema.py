"""The policy language, as validated YAML (``policies/*.yaml``; see docs/policies.md).

A policy file may hold ``policies`` (a list of rate limits), and at most one file of a set
may hold each of the set-wide sections ``binding``, ``penalty_box``, ``ip_prefix`` and
``on_store_error``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gateway.config import MODEL_ID_PATTERN
from gateway.core.agent_keys import KEY_ID_PATTERN

Route = Literal["token", "messages", "send", "refresh", "private"]
Component = Literal["client_ip", "ip_prefix", "api_key", "token", "conversation", "model", "global"]
Mode = Literal["enforce", "shadow"]
ROUTES: tuple[Route, ...] = ("token", "messages", "send", "refresh", "private")
#: what each route knows about a request, so which partition components make sense there
AVAILABLE: dict[str, frozenset[str]] = {
    "token": frozenset({"client_ip", "ip_prefix", "api_key", "model", "global"}),
    "messages": frozenset(
        {"client_ip", "ip_prefix", "api_key", "token", "conversation", "model", "global"}
    ),
    "send": frozenset(
        {"client_ip", "ip_prefix", "api_key", "token", "conversation", "model", "global"}
    ),
    "refresh": frozenset(
        {"client_ip", "ip_prefix", "api_key", "token", "conversation", "model", "global"}
    ),
    "private": frozenset({"client_ip", "ip_prefix", "global"}),
}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """``500ms``, ``10s``, ``1m``, ``2h``, ``1d`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 1m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError("expected a duration such as 10s, 1m or 1h")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
KeyId = Annotated[str, Field(pattern=KEY_ID_PATTERN.pattern)]
ModelId = Annotated[str, Field(pattern=MODEL_ID_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitModel(_Strict):
    """``rate`` requests per ``per``, with ``burst`` admitted at once from idle."""

    rate: int = Field(ge=1, le=1_000_000)
    per: Duration
    burst: int = Field(ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _sane(self) -> LimitModel:
        if self.per / self.rate < 0.001:
            raise ValueError("rate/per is finer than one request per millisecond")
        if self.per / self.rate * self.burst > 366 * 86400:
            raise ValueError("burst x per / rate spans more than a year")
        return self


class MatchModel(_Strict):
    routes: list[Route] = Field(min_length=1)
    models: list[ModelId] | None = None
    key_ids: list[KeyId] | None = None
    methods: list[Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]] | None = None


class OverrideModel(_Strict):
    """Another limit (or mode) for some agent keys."""

    key_ids: list[KeyId] = Field(min_length=1)
    limit: LimitModel | None = None
    mode: Mode | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> OverrideModel:
        if self.limit is None and self.mode is None:
            raise ValueError("an override needs a limit, a mode or both")
        return self


class PolicyModel(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,47}$")
    match: MatchModel
    partition: list[Component] = Field(min_length=1)
    limit: LimitModel
    mode: Mode = "enforce"
    overrides: list[OverrideModel] = Field(default_factory=list)

    @field_validator("partition")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("partition components must not repeat")
        if "global" in value and len(value) > 1:
            raise ValueError("'global' cannot be combined with other components")
        if "client_ip" in value and "ip_prefix" in value:
            raise ValueError("use either client_ip or ip_prefix, not both")
        return value

    @model_validator(mode="after")
    def _partition_known_on_routes(self) -> PolicyModel:
        for route in self.match.routes:
            missing = [c for c in self.partition if c not in AVAILABLE[route]]
            if missing:
                raise ValueError(
                    f"partition component {missing[0]!r} is not known on route {route!r} "
                    f"(known there: {', '.join(sorted(AVAILABLE[route]))})"
                )
        return self


class BindingModel(_Strict):
    #: fingerprint, proof (DPoP required) or proof_or_fingerprint (DPoP when the client
    #: sent a proof with its token request)
    mode: Literal["fingerprint", "proof", "proof_or_fingerprint"] = "proof_or_fingerprint"
    #: the mode for agent keys that list origins (pages in browsers); unset: ``mode``
    browser_mode: Literal["fingerprint", "proof", "proof_or_fingerprint"] | None = None
    bind_at: Literal["first_use", "issue"] = "first_use"
    #: fingerprint parts; an empty list disables binding
    components: list[Literal["ip_prefix", "client_ip", "user_agent"]] = Field(
        default_factory=lambda: ["ip_prefix", "user_agent"]  # type: ignore[arg-type]
    )
    ipv4_prefix: int = Field(24, ge=8, le=32)
    ipv6_prefix: int = Field(64, ge=16, le=128)
    #: distinct fingerprints a token may show; one more is suspicious
    max_fingerprints: int = Field(1, ge=1, le=16)
    #: deny: refuse the request; revoke: refuse and revoke the token; flag: log and admit
    action: Literal["deny", "revoke", "flag"] = "revoke"
    #: a key-bound token presented with a valid proof by another key (a copy): revoke
    #: every token of its conversation, or refuse the request only (a copy is useless
    #: without the key; revoking lets whoever holds a copy end the visitor's chat)
    other_key: Literal["revoke", "refuse"] = "revoke"

    @field_validator("components")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("components must not repeat")
        if "ip_prefix" in value and "client_ip" in value:
            raise ValueError("use either ip_prefix or client_ip, not both")
        return value


class PenaltyBoxModel(_Strict):
    """A client that fails too often within ``window`` is refused for ``cooldown``."""

    enabled: bool = True
    subject: Literal["client_ip", "ip_prefix"] = "client_ip"
    window: Duration = 60.0
    threshold: int = Field(20, ge=1, le=100_000)
    cooldown: Duration = 300.0
    count: list[Literal["invalid_key", "invalid_token", "reuse"]] = Field(
        default_factory=lambda: ["invalid_key", "invalid_token", "reuse"],  # type: ignore[arg-type]
        min_length=1,
    )


class IpPrefixModel(_Strict):
    ipv4: int = Field(24, ge=8, le=32)
    ipv6: int = Field(64, ge=16, le=128)


class PolicyFile(_Strict):
    policies: list[PolicyModel] = Field(default_factory=list)
    binding: BindingModel | None = None
    penalty_box: PenaltyBoxModel | None = None
    ip_prefix: IpPrefixModel | None = None
    on_store_error: Literal["fail_closed", "fail_open"] | None = None
