"""Compiled policies: which limits apply to a request, and under which partition key.

Pure: built from validated YAML by :mod:`gateway.policies.loader`, evaluated per request
with the facts the handler knows. A :class:`PolicySet` is immutable; hot reload swaps
the whole object, so a request in flight keeps the set it started with.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from gateway.core.fingerprint import FingerprintRule, ip_prefix
from gateway.core.gcra import LimitSpec, LimitState
from gateway.core.redis_keys import limit_name

Mode = Literal["enforce", "shadow"]
ReuseAction = Literal["deny", "revoke", "flag"]
MAX_RAW_PARTITION = 40
#: joins the values of a partition (its components, in the policy's order)
PARTITION_SEPARATOR = "|"
#: partition components that belong to one token: a limit partitioned by any of these
#: keeps its state with the token (a conversation has exactly one token)
TOKEN_SCOPED = frozenset({"token", "conversation"})
#: components whose value is the same for every request of one token
TOKEN_FIXED = frozenset({"token", "conversation", "api_key", "model", "global"})


class RequestFacts(NamedTuple):
    """What is known about a request when its limits are decided."""

    route: str
    method: str
    client_ip: str
    key_id: str | None = None
    model: str | None = None
    token: str | None = None  # the token's jti, never the token
    conversation: str | None = None


@dataclass(frozen=True, slots=True)
class Limit:
    rate: int
    per_seconds: float
    burst: int

    @property
    def interval_us(self) -> int:
        """The steady-state spacing of requests, rounded once to a whole microsecond."""
        return round(self.per_seconds * 1_000_000 / self.rate)


@dataclass(frozen=True, slots=True)
class Override:
    key_ids: frozenset[str]
    limit: Limit | None
    mode: Mode | None


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    routes: frozenset[str]
    partition: tuple[str, ...]
    limit: Limit
    mode: Mode = "enforce"
    models: frozenset[str] | None = None
    key_ids: frozenset[str] | None = None
    methods: frozenset[str] | None = None
    overrides: tuple[Override, ...] = ()

    def matches(self, facts: RequestFacts) -> bool:
        return (
            facts.route in self.routes
            and (self.methods is None or facts.method in self.methods)
            and (self.models is None or facts.model in self.models)
            and (self.key_ids is None or facts.key_id in self.key_ids)
        )

    def effective(self, key_id: str | None) -> tuple[Limit, Mode]:
        """The limit and mode after the first override naming ``key_id``."""
        if key_id is not None:
            for override in self.overrides:
                if key_id in override.key_ids:
                    return override.limit or self.limit, override.mode or self.mode
        return self.limit, self.mode


#: how tokens are bound (docs/policies.md, "Token reuse"): to the client's network
#: fingerprint; to a key the client proves it holds (DPoP, RFC 9449), required; or to a
#: key when the client sent a proof with its token request, else to the fingerprint
BindingMode = Literal["fingerprint", "proof", "proof_or_fingerprint"]


@dataclass(frozen=True, slots=True)
class Binding:
    mode: BindingMode = "proof_or_fingerprint"
    #: the mode for agent keys that list origins (used by pages in browsers); None: ``mode``
    browser_mode: BindingMode | None = None
    rule: FingerprintRule = field(default_factory=FingerprintRule)
    bind_at: Literal["first_use", "issue"] = "first_use"
    max_fingerprints: int = 1
    action: ReuseAction = "revoke"
    #: a key-bound token with a proof by another key: its conversation revoked, or only
    #: the request refused
    other_key: Literal["revoke", "refuse"] = "revoke"

    def mode_for(self, origins: tuple[str, ...], require_proof: bool = False) -> BindingMode:
        """The binding mode of an agent key with these origins (``proof`` for a key that
        requires proof, whatever the policies say)."""
        if require_proof:
            return "proof"
        if origins and self.browser_mode is not None:
            return self.browser_mode
        return self.mode


@dataclass(frozen=True, slots=True)
class Penalty:
    subject: Literal["client_ip", "ip_prefix"]
    window_ms: int
    threshold: int
    cooldown_ms: int
    count: frozenset[str]


@dataclass(frozen=True, slots=True)
class AppliedLimit:
    """One policy's limit for one request: the policy for headers, the spec for the store."""

    policy: str
    limit: Limit
    spec: LimitSpec


def client_key(address: str, ipv6_prefix: int) -> str:
    """One client's address for counting: IPv4 as is, IPv6 reduced to its prefix (a /64 by
    default), since one host holds a whole /64 and could rotate through it."""
    if ":" not in address:
        return address
    return ip_prefix(address, 32, ipv6_prefix)


def _partition_value(facts: RequestFacts, parts: tuple[str, ...], v4: int, v6: int) -> str:
    values: list[str] = []
    for part in parts:
        if part == "global":
            values.append("*")
        elif part == "client_ip":
            values.append(client_key(facts.client_ip, v6))
        elif part == "ip_prefix":
            values.append(ip_prefix(facts.client_ip, v4, v6))
        elif part == "api_key":
            values.append(facts.key_id or "-")
        elif part == "model":
            values.append(facts.model or "-")
        elif part == "token":
            values.append(facts.token or "-")
        elif part == "conversation":
            values.append(facts.conversation or "-")
        else:  # pragma: no cover - validated by the schema
            raise ValueError(f"unknown partition component {part!r}")
    raw = PARTITION_SEPARATOR.join(values)
    if len(raw) <= MAX_RAW_PARTITION:
        return raw
    digest = hashlib.blake2b(raw.encode(), digest_size=12).digest()
    return "h" + base64.urlsafe_b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class SelectedPolicy:
    """A policy that applies to a kind of request, with everything about its limit that
    does not depend on the request's own values (address, token) worked out once."""

    name: str
    partition: tuple[str, ...]
    limit: Limit
    interval_us: int
    shadow: bool
    #: partitioned by a token or its conversation: the state is kept with the token
    by_token: bool
    #: partitioned by nothing but values fixed for one token: the name is the whole key
    token_only: bool
    #: the name as a structured-field string, for the RateLimit headers
    header_name: str


class Selection:
    """The policies that apply to one kind of request (route, method, model, key), in
    policy order, and the ``RateLimit-Policy`` header they give. Immutable."""

    __slots__ = ("_v4", "_v6", "policies", "policy_header")

    def __init__(
        self, policies: tuple[SelectedPolicy, ...], ipv4_prefix: int, ipv6_prefix: int
    ) -> None:
        self.policies = policies
        self._v4, self._v6 = ipv4_prefix, ipv6_prefix
        self.policy_header = ", ".join(
            _policy_item(p.header_name, p.limit) for p in policies if not p.shadow
        )

    def specs(self, facts: RequestFacts) -> tuple[LimitSpec, ...]:
        """Each policy's limit for the request of ``facts`` (which must be of this kind)."""
        out = []
        for p in self.policies:
            scope = facts.token if p.by_token else None
            if scope is not None and p.token_only:
                key = p.name  # the token's own state: its name is enough
            else:
                key = limit_name(p.name, _partition_value(facts, p.partition, self._v4, self._v6))
            out.append(LimitSpec(key, p.interval_us, p.limit.burst, p.shadow, scope))
        return tuple(out)

    def headers(self, states: tuple[LimitState, ...]) -> dict[str, str]:
        """IETF ``RateLimit-Policy`` and ``RateLimit`` fields (draft-ietf-httpapi-ratelimit-
        headers) for the enforced limits: ``q`` is the rate per window ``w`` seconds, ``r``
        what the burst allowance has left and ``t`` the seconds until it is full again."""
        if not self.policy_header:
            return {}
        current = ", ".join(
            [
                _current_item(p.header_name, state)
                for p, state in zip(self.policies, states, strict=True)
                if not p.shadow
            ]
        )
        return {"RateLimit-Policy": self.policy_header, "RateLimit": current}


#: selections remembered per policy set (kinds of request: routes x methods x keys x models)
MAX_SELECTIONS = 4096


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[Policy, ...] = ()
    binding: Binding = field(default_factory=Binding)
    penalty: Penalty | None = None
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    on_store_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    #: where each part came from, for ``gateway policies check``
    sources: tuple[str, ...] = ()
    _by_route: dict[str, tuple[Policy, ...]] = field(default_factory=dict, compare=False)
    #: policy name -> (partitioned by a token or its conversation, by that token alone)
    _token_parts: dict[str, tuple[bool, bool]] = field(default_factory=dict, compare=False)
    #: (route, method, model, key id) -> the selection for such requests (see :meth:`select`)
    _selections: dict[tuple[str, str, str | None, str | None], Selection] = field(
        default_factory=dict, compare=False
    )

    def __post_init__(self) -> None:
        routes = {r for p in self.policies for r in p.routes}
        for route in routes:
            self._by_route[route] = tuple(p for p in self.policies if route in p.routes)
        for p in self.policies:
            parts = frozenset(p.partition)
            self._token_parts[p.name] = (not TOKEN_SCOPED.isdisjoint(parts), parts <= TOKEN_FIXED)

    def select(self, route: str, method: str, model: str | None, key_id: str | None) -> Selection:
        """The policies that apply to requests with these facts. Which policies match,
        and with which limit and mode, depends on nothing else, so the answer is
        remembered (the set is immutable; a reload brings a new set)."""
        wanted = (route, method, model, key_id)
        found = self._selections.get(wanted)
        if found is None:
            found = self._select(route, method, model, key_id)
            if len(self._selections) >= MAX_SELECTIONS:
                self._selections.clear()
            self._selections[wanted] = found
        return found

    def _select(self, route: str, method: str, model: str | None, key_id: str | None) -> Selection:
        facts = RequestFacts(route, method, "", key_id=key_id, model=model)
        selected = []
        for policy in self._by_route.get(route, ()):
            if not policy.matches(facts):
                continue
            limit, mode = policy.effective(key_id)
            by_token, token_only = self._token_parts[policy.name]
            selected.append(
                SelectedPolicy(
                    name=policy.name,
                    partition=policy.partition,
                    limit=limit,
                    interval_us=limit.interval_us,
                    shadow=mode == "shadow",
                    by_token=by_token,
                    token_only=token_only,
                    header_name=_sf_string(policy.name),
                )
            )
        return Selection(tuple(selected), self.ipv4_prefix, self.ipv6_prefix)

    def applicable(self, facts: RequestFacts) -> tuple[AppliedLimit, ...]:
        selection = self.select(facts.route, facts.method, facts.model, facts.key_id)
        return tuple(
            AppliedLimit(p.name, p.limit, spec)
            for p, spec in zip(selection.policies, selection.specs(facts), strict=True)
        )

    def penalty_subject(self, client_ip: str) -> str | None:
        if self.penalty is None:
            return None
        if self.penalty.subject == "ip_prefix":
            return ip_prefix(client_ip, self.ipv4_prefix, self.ipv6_prefix)
        return client_key(client_ip, self.ipv6_prefix)


def _sf_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _policy_item(name: str, limit: Limit) -> str:
    """One policy of ``RateLimit-Policy``; ``name`` as a structured-field string."""
    window = max(round(limit.per_seconds), 1)
    return f"{name};q={limit.rate};w={window}"


def _current_item(name: str, state: LimitState) -> str:
    """One limit of ``RateLimit``; ``name`` as a structured-field string."""
    reset = math.ceil(state.reset_ms / 1000) if state.reset_ms > 0 else 0
    return f"{name};r={max(state.remaining, 0)};t={reset}"


def retry_after_seconds(ms: int) -> int:
    return max(math.ceil(ms / 1000), 1)
