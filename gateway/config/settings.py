"""The configuration's sections: a validated, immutable tree with every default.

Secrets never live here: token signing keys come from ``GATEWAY_SIGNING_KEYS`` or a
mounted file (see :mod:`gateway.config.signing_keys`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    field_validator,
    model_validator,
)

from gateway.core.dpop import DEFAULT_WINDOW_SECONDS, normalize_url
from gateway.core.identifiers import KEY_ID, MODEL_ID
from gateway.core.renewal import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_CONVERSATION_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
)
from gateway.core.token_codec import MAX_SHARDS
from gateway.oauth.settings import OAuthSettings

MODEL_ID_PATTERN = rf"^{MODEL_ID}$"
ModelId = Annotated[str, Field(pattern=MODEL_ID_PATTERN)]
KeyId = Annotated[str, Field(pattern=rf"^{KEY_ID}$")]
#: an HTTP field name (RFC 9110 section 5.1)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _relayed_header(name: str) -> str:
    from gateway.upstream.response_headers import never_relayed

    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{name!r} is not a header name")
    if never_relayed(name):
        raise ValueError(f"{name} is never relayed: the gateway owns it")
    return name


#: a response header operators may add to the relayed ones
RelayedHeader = Annotated[str, AfterValidator(_relayed_header)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: the field a section written as one word stands for (``store: redis``), if any
    shorthand: ClassVar[str | None] = None

    @model_validator(mode="before")
    @classmethod
    def _expand_shorthand(cls, value: Any) -> Any:
        if cls.shorthand is not None and isinstance(value, str):
            return {cls.shorthand: value}
        return value


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: networks whose ``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and
    #: ``X-Request-Id`` are believed
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)
    #: the public API's scheme, host and port as clients call it (``https://chat.example``):
    #: what DPoP proofs' ``htu`` must name; unset, they come from the request (through
    #: trusted proxies)
    public_url: str | None = None
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_message_chars: int = Field(8000, ge=1, le=1_000_000)
    max_token_chars: int = Field(4096, ge=256, le=16384)
    #: on SIGTERM: time spent not ready but still serving, so load balancers stop
    #: sending new connections before the listener closes
    drain_seconds: float = Field(0.0, ge=0, le=300)
    #: then: time given to in-flight requests and streams before they are cancelled
    shutdown_grace_seconds: float = Field(20.0, ge=0, le=3600)
    #: hostile and slow clients (docs/configuration.md, "The public listener"):
    #: idle time allowed between two requests on a connection
    keepalive_timeout_seconds: float = Field(75.0, gt=0, le=3600)
    #: a request's line and headers must arrive within this (from the connection's
    #: start for its first request, from their first byte for later ones)
    header_timeout_seconds: float = Field(10.0, gt=0, le=300)
    #: a request's body must arrive within this once its headers have
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    #: a client that takes none of its answer for this long (while the gateway has more
    #: to send) is disconnected
    send_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    #: request line and header fields together (431 above)
    max_header_bytes: int = Field(32 * 1024, ge=4096, le=1024 * 1024)
    #: open connections on the public listener (0: no cap)
    max_connections: int = Field(10_000, ge=0, le=1_000_000)
    #: open connections per client address, IPv6 per /64 (0: no cap); peers in
    #: ``trusted_proxies`` are not capped
    max_connections_per_client: int = Field(100, ge=0, le=1_000_000)
    #: processes sharing the public port (``auto``: one per CPU); ``--workers`` wins
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 1
    #: accept ``store: memory`` with several workers: each counts limits on its own
    allow_per_worker_limits: bool = False

    @field_validator("public_url")
    @classmethod
    def _origin_only(cls, value: str | None) -> str | None:
        if value is None:
            return None
        normal = normalize_url(value)
        bare = urlsplit(value)
        if normal is None or bare.path not in ("", "/") or bare.query or bare.fragment:
            raise ValueError("must be an http(s) URL with no path, query or fragment")
        return normal.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _not_everyone(cls, value: list[Any]) -> list[Any]:
        for network in value:
            if network.prefixlen == 0:
                raise ValueError(
                    f"{network} trusts every address: any client could name its own IP"
                )
        return value


class AdminSettings(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)
    #: the public event loop's heartbeat older than this: ``/readyz`` answers 503
    loop_stall_seconds: float = Field(2.0, gt=0, le=600)
    #: ... older than this: ``/healthz`` answers 503 (the loop is stuck: restart)
    loop_dead_seconds: float = Field(30.0, gt=0, le=3600)


class StoreSettings(Section):
    shorthand = "type"

    type: Literal["memory", "redis"] = "memory"
    #: ``redis://``, ``rediss://``, ``redis+cluster://`` or ``redis+sentinel://``
    url: str = "redis://127.0.0.1:6379/0"
    #: every key is ``{prefix}:...`` so one request's keys share a Redis Cluster slot
    prefix: str = Field("gw", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    timeout_ms: int = Field(50, ge=1, le=10_000)
    max_connections: int = Field(64, ge=1, le=10_000)
    #: consecutive failures that open the circuit, and how long it stays open
    breaker_failures: int = Field(3, ge=1, le=1000)
    breaker_open_seconds: float = Field(1.0, gt=0, le=300)
    #: ``key``: each agent key's state under a hash tag of its own (``{prefix:<key id>}``)
    #: so a Redis Cluster spreads keys over its primaries; ``off``: one tag for all
    #: (docs/operations.md, "Sharded state")
    sharding: Literal["off", "key"] = "off"
    #: agent keys too busy for one primary: key id -> sub-buckets (each with rate/N of
    #: the key's own limits; docs/policies.md, "Sharded mode")
    hot_keys: dict[KeyId, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sharding_needs_redis(self) -> StoreSettings:
        if self.sharding != "off" and self.type != "redis":
            raise ValueError(
                f"sharding: {self.sharding} needs type: redis (the {self.type} store has "
                "one node: there is nothing to shard)"
            )
        if self.hot_keys and self.sharding != "key":
            raise ValueError("hot_keys needs sharding: key")
        for key_id, buckets in self.hot_keys.items():
            if not 2 <= buckets <= MAX_SHARDS:
                raise ValueError(
                    f"hot_keys.{key_id}: {buckets} sub-buckets; between 2 and {MAX_SHARDS}"
                )
        return self


class Argon2Settings(Section):
    """Cost of hashing newly created keys; verification reads the cost from each hash."""

    time_cost: int = Field(3, ge=1, le=20)
    memory_kib: int = Field(65536, ge=8192, le=4 * 1024 * 1024)
    parallelism: int = Field(4, ge=1, le=64)


class KeyStoreSettings(Section):
    type: Literal["file", "redis"] = "file"
    path: Path = Path("var/keys.yaml")
    #: Redis key store location; defaults to ``store.url``
    redis_url: str | None = None
    prefix: str = Field("gwkeys", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    #: how long a successful argon2 verification is remembered (0 disables the cache)
    verified_cache_seconds: float = Field(60.0, ge=0, le=3600)
    verified_cache_size: int = Field(10_000, ge=0, le=1_000_000)
    #: how often running gateways look for key changes (file: fallback poll beside
    #: change notifications; redis: a version counter)
    sync_seconds: float = Field(1.0, gt=0, le=5)
    #: look-ups a second (per replica) of well-formed key ids missing from the local
    #: snapshot, so a key created a moment ago is served before its change arrives;
    #: ids found missing are not looked up again for a minute; 0 turns look-ups off
    miss_lookups_per_second: float = Field(20.0, ge=0, le=10_000)
    argon2: Argon2Settings = Field(default_factory=Argon2Settings)


class TokenSettings(Section):
    #: 3 s at least: the widget renews a third of a lifetime ahead, so a second is left
    ttl_seconds: int = Field(900, ge=3, le=86_400)
    issuer: str = Field("agent-gateway", min_length=1)
    audience: str = Field("public-agent-api", min_length=1)
    algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    leeway_seconds: int = Field(5, ge=0, le=300)
    #: a mounted secret file with one ``kid:secret`` per line (first line signs);
    #: ``GATEWAY_SIGNING_KEYS`` / ``GATEWAY_SIGNING_KEYS_FILE`` take precedence
    signing_keys_file: Path | None = None
    #: renewal (``POST .../token/refresh``, see docs/browser.md): seconds past its expiry
    #: a token may still be renewed (a laptop waking from sleep keeps its chat)
    refresh_grace_seconds: int = Field(DEFAULT_GRACE_SECONDS, ge=0, le=3600)
    #: seconds a token retired by a renewal still passes (requests in flight) and a
    #: second renewal of it gets the same successor; after it, its use revokes the family
    rotation_overlap_seconds: int = Field(DEFAULT_OVERLAP_SECONDS, ge=0, le=120)
    #: a conversation's absolute lifetime across renewals, from its first token
    max_conversation_seconds: int = Field(DEFAULT_MAX_CONVERSATION_SECONDS, ge=60, le=2_592_000)
    #: a DPoP proof's ``iat`` may be this far from the gateway's clock (either way); its
    #: ``jti`` is remembered as long
    proof_window_seconds: int = Field(DEFAULT_WINDOW_SECONDS, ge=5, le=600)

    @model_validator(mode="after")
    def _overlap_within_a_token(self) -> TokenSettings:
        if self.rotation_overlap_seconds >= self.ttl_seconds:
            raise ValueError(
                f"rotation_overlap_seconds ({self.rotation_overlap_seconds}) must be shorter "
                f"than ttl_seconds ({self.ttl_seconds}): a retired token would outlive reuse "
                "detection"
            )
        return self


class PolicySettings(Section):
    #: a policy file or a directory of ``*.yaml`` policy files (see docs/policies.md)
    path: Path = Path("policies")
    #: reload on file change (SIGHUP always reloads)
    watch: bool = True
    #: run even when the policies leave the gateway unprotected (no enforcing limit on
    #: the token or send route, or no penalty box): a warning at every (re)load instead
    #: of a refusal (see :mod:`gateway.core.protection`)
    allow_unprotected: bool = False


class ModelSettings(Section):
    description: str = ""
    #: model id sent upstream; defaults to the public model id
    upstream_model: str | None = None


class UpstreamTimeouts(Section):
    connect: float = Field(2.0, gt=0, le=60)
    #: whole non-streamed answer, and the wait for a streamed answer's headers
    read: float = Field(30.0, gt=0, le=600)
    #: longest silence between two chunks of a streamed answer
    stream_idle: float = Field(30.0, gt=0, le=600)
    #: longest life of a streamed answer, however lively
    stream_max: float = Field(600.0, gt=0, le=86_400)


class UpstreamSettings(Section):
    url: str = Field("http://127.0.0.1:8081", pattern=r"^https?://[^/?#]+/?$")
    #: the HTTP client: the builtin HTTP/1.1 pool, or aiohttp's ClientSession
    client: Literal["builtin", "aiohttp"] = "builtin"
    messages_path: str = "/internal/conversations/{conversation_id}/messages"
    send_path: str = "/internal/conversations/{conversation_id}/messages"
    timeouts: UpstreamTimeouts = Field(default_factory=UpstreamTimeouts)
    max_connections: int = Field(100, ge=1, le=10_000)
    #: an idle keep-alive connection is closed after this long (keep it below the
    #: upstream's own idle timeout: uvicorn and Node.js close theirs after 5 s)
    idle_seconds: float = Field(4.0, gt=0, le=3600)
    max_response_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    #: bounds on an answer's head, enforced while it is read
    max_header_bytes: int = Field(65536, ge=1024, le=1024 * 1024)
    max_header_line_bytes: int = Field(8190, ge=256, le=65536)
    max_header_count: int = Field(128, ge=8, le=1000)
    #: refuse (502) any answer that does not echo the request's X-Request-Id
    require_request_id_echo: bool = False
    #: response headers relayed to clients beyond the built-in allow-list
    relay_headers: list[RelayedHeader] = Field(default_factory=list)
    #: readiness: GET this path on the upstream (2xx/3xx is up); unset, a TCP connect
    health_path: str | None = Field(None, pattern=r"^/[^\s?#]*(\?[^\s#]*)?$")

    @model_validator(mode="after")
    def _line_within_head(self) -> UpstreamSettings:
        if self.max_header_line_bytes > self.max_header_bytes:
            raise ValueError("max_header_line_bytes must not exceed max_header_bytes")
        return self

    @field_validator("messages_path", "send_path")
    @classmethod
    def _template(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        if "{conversation_id}" not in value:
            raise ValueError("must contain {conversation_id}")
        leftover = re.sub(r"\{conversation_id\}", "", value)
        if "{" in leftover or "}" in leftover:
            raise ValueError("only the {conversation_id} placeholder is known")
        return value


class OverloadSettings(Section):
    """Load shedding on the public listener (docs/configuration.md, "Overload"): an
    adaptive limit on requests in flight, a short bounded queue, a separate limit on
    open streams; past them, 503 ``overloaded`` before any key, token or store work."""

    enabled: bool = True
    #: the adaptive limit's floor and ceiling (it starts at the ceiling)
    min_limit: int = Field(64, ge=1, le=100_000)
    max_limit: int = Field(1000, ge=1, le=100_000)
    #: requests that may wait for a place, and for how long at most
    queue_size: int = Field(1000, ge=0, le=100_000)
    max_wait_ms: int = Field(250, ge=0, le=10_000)
    #: streamed answers open at once (they do not count against the adaptive limit)
    stream_limit: int = Field(1000, ge=1, le=1_000_000)
    #: the ``Retry-After`` of a shed answer
    retry_after_seconds: int = Field(1, ge=1, le=3600)
    #: how often the limit is reconsidered (at least 10 requests per window)
    window_seconds: float = Field(0.1, gt=0, le=60)
    #: latency above this multiple of the long-term average shrinks the limit
    tolerance: float = Field(1.5, ge=1.0, le=10.0)
    #: the event loop's mean lag past which the limit shrinks (0: not watched)
    loop_lag_target_ms: float = Field(2.0, ge=0, le=1000)

    @model_validator(mode="after")
    def _floor_below_ceiling(self) -> OverloadSettings:
        if self.min_limit > self.max_limit:
            raise ValueError("min_limit must not exceed max_limit")
        return self


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class ObservabilitySettings(Section):
    #: the decision log (docs/operations.md, "Decision log"): a file to append to, ``-``
    #: for stdout, or None (off). Needs the secret GATEWAY_DECISION_LOG_SECRET.
    decision_log: str | None = None
    #: lines waiting for the writer at most; past this they are dropped and counted
    decision_log_queue: int = Field(default=10_000, ge=1, le=1_000_000)


class Config(Section):
    server: ServerSettings = Field(default_factory=ServerSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    keys: KeyStoreSettings = Field(default_factory=KeyStoreSettings)
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    policies: PolicySettings = Field(default_factory=PolicySettings)
    models: dict[ModelId, ModelSettings] = Field(min_length=1)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    overload: OverloadSettings = Field(default_factory=OverloadSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    #: OAuth2-protected private routes (docs/oauth.md); none when absent
    oauth: OAuthSettings | None = None

    def resolve_paths(self, base: Path) -> Config:
        """Relative file paths are relative to the configuration file's directory."""
        keys = self.keys.model_copy(update={"path": _under(base, self.keys.path)})
        policies = self.policies.model_copy(update={"path": _under(base, self.policies.path)})
        tokens = self.tokens
        if tokens.signing_keys_file is not None:
            tokens = tokens.model_copy(
                update={"signing_keys_file": _under(base, tokens.signing_keys_file)}
            )
        return self.model_copy(update={"keys": keys, "tokens": tokens, "policies": policies})

    @property
    def key_store_redis_url(self) -> str:
        return self.keys.redis_url or self.store.url


def _under(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path)
