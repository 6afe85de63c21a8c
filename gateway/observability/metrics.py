"""Every Prometheus metric of the gateway, defined once, with the helpers that feed them.

One :class:`Metrics` object per application, each with its own ``CollectorRegistry``, so
several gateways in one process (the tests) never collide; ``gateway serve`` creates one
with the process collectors and serves it on the admin port.

Labels are bounded by construction: routes are templates, statuses are numbers or
classes, and every free-form word (reason, policy, outcome) goes through a
:class:`~gateway.observability.labels.Vocabulary` that accepts only ``snake_case`` words
and at most a fixed number of distinct values, so a key, a token, an IP address or a
conversation id can never become a label value. See docs/metrics.md for the catalogue.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from typing import Any, Literal, Protocol, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.gc_collector import GCCollector

from gateway import __version__
from gateway.core.breaker import BreakerState
from gateway.keystore.base import LookupOutcome
from gateway.observability.labels import (
    POLICY_NAME,
    Vocabulary,
    method_label,
    status_class,
)


class PoolStats(Protocol):
    """What the metrics read of a connection pool."""

    @property
    def open_connections(self) -> int: ...
    @property
    def idle_connections(self) -> int: ...
    @property
    def waiting(self) -> int: ...


class OpenConnections(Protocol):
    """What the metrics read of the listener's connection counts."""

    @property
    def total(self) -> int: ...


class OverloadFigures(Protocol):
    """What the metrics read of the load shedding."""

    @property
    def limit(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def streams(self) -> int: ...
    @property
    def waiting(self) -> int: ...


HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
TTFB_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)

#: label values: each metric's known values are created at zero (from these types, so a new
#: value cannot be forgotten), so alerts on ``increase()`` see the very first event
StreamOutcome = Literal[
    "completed", "upstream_error", "shutting_down", "truncated", "client_disconnected"
]
RateLimitOutcome = Literal["allowed", "limited", "shadow_limited"]
PenaltyEvent = Literal["entered", "refused", "in_flight"]
ReloadKind = Literal["policies", "config"]
ReloadResult = Literal["success", "failure"]
#: what a store failure was (see :func:`gateway.store.errors.error_kind`): ``oom`` a Redis
#: past its ``maxmemory``, ``readonly`` a replica, ``circuit_open`` the breaker refused
StoreErrorKind = Literal["timeout", "connection", "circuit_open", "oom", "readonly", "other"]
#: the store operations whose failures are created at zero
WatchedStoreOperation = Literal["admit"]
SuspiciousReason = Literal["token_reuse", "invalid_key", "invalid_token", "penalty_box"]
#: how a token renewal ended: ``renewed`` (the family rotated), ``repeated`` (a renewal of
#: the token just retired, within the overlap: the same successor), else the problem code
RenewalOutcome = Literal[
    "renewed",
    "repeated",
    "invalid_request",
    "token_invalid",
    "token_expired",
    "token_revoked",
    "token_reuse_suspected",
    "conversation_expired",
    "origin_not_allowed",
    "model_not_found",
    "rate_limited",
    "store_unavailable",
    "invalid_dpop_proof",
    "other",
]
#: why a token family was revoked: ``replayed`` (a retired token used after the rotation
#: overlap), ``binding`` (a token used from another client, reuse action ``revoke``),
#: ``proof`` (a key-bound token presented with a proof by another key)
FamilyRevocation = Literal["replayed", "binding", "proof"]
#: what a token was bound to when it was admitted from a network fingerprint new to it:
#: ``fingerprint`` (``binding.action: flag``: a possible theft let through) or ``proof``
#: (its key's proof passed: the visitor's network changed)
FlaggedBinding = Literal["fingerprint", "proof"]
#: why a DPoP proof was refused (``ProofRejected.reason``), or ``other_key``: a
#: valid proof by another key than the token's (403, the family revoked)
ProofRefusal = Literal[
    "missing",
    "malformed",
    "type",
    "algorithm",
    "key",
    "signature",
    "method",
    "url",
    "time",
    "nonce",
    "token_hash",
    "replayed",
    "other_key",
]
RENEWAL_OUTCOMES = frozenset(get_args(RenewalOutcome))
PROOF_REFUSALS = frozenset(get_args(ProofRefusal))
TokenRefusal = Literal[
    "missing_credentials",
    "malformed",
    "unknown",
    "revoked",
    "wrong_secret",
    "model_not_found",
    "rate_limited",
]
UpstreamOperation = Literal["get_messages", "send_message", "forward"]
UpstreamErrorReason = Literal[
    "timeout",
    "unavailable",
    "bad_response",
    "status_5xx",
    "request_id_mismatch",
    "request_id_missing",
]
ConnectionRefusal = Literal["client_limit", "total_limit"]
ConnectionPhase = Literal["request_head", "request_body", "response", "keep_alive"]
#: why a public request was shed (503 overloaded): no place in the queue, no place within
#: ``overload.max_wait_ms``, or the open streams at ``overload.stream_limit``
ShedReason = Literal["queue_full", "queue_timeout", "stream_limit"]
#: label children remembered per metric and label values (the values are bounded already;
#: this only spares the lookup on every request)
MAX_CACHED_CHILDREN = 4096


def _initialise(metric: Counter, *labels: Any) -> None:
    """Create ``metric``'s series at zero for every combination of the ``Literal`` types'
    values, one type per label."""
    for values in itertools.product(*(get_args(literal) for literal in labels)):
        metric.labels(*values)


class Metrics:
    """The gateway's metrics and the only way code records them."""

    def __init__(self, *, process: bool = False) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        if process:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self._words = Vocabulary()
        self._policies = Vocabulary(limit=128, pattern=POLICY_NAME)
        self._children: dict[tuple[Any, ...], Any] = {}
        #: (route, method, status) -> the request counter's and duration histogram's children
        self._request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        #: (policy, outcome) -> the decision counter's child
        self._decisions: dict[tuple[str, str], Any] = {}
        info = Gauge(
            "gateway_build_info", "Always 1; the running version.", ["version"], registry=registry
        )
        info.labels(__version__).set(1)
        self._define_http(registry)
        self._define_connections(registry)
        self._define_overload(registry)
        self._define_upstream(registry)
        self._define_keys_and_tokens(registry)
        self._define_rate_limits(registry)
        self._define_store(registry)
        self._define_operations(registry)

    def _define_http(self, registry: CollectorRegistry) -> None:
        """Public HTTP: requests, their duration, problems."""
        self.http_requests = Counter(
            "gateway_http_requests",
            "Requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "gateway_http_request_duration_seconds",
            "Time from request to the end of the response (whole stream for streams).",
            ["route", "method", "status_class"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.http_in_flight = Gauge(
            "gateway_http_requests_in_flight", "Requests being handled.", registry=registry
        )
        # counted in a plain attribute and read when the gauge is collected: two locked
        # updates per request spared (see request_started)
        self._requests_in_flight = 0
        self.http_in_flight.set_function(lambda: self._requests_in_flight)
        self.http_problems = Counter(
            "gateway_http_problems",
            "Error answers by route template and problem code.",
            ["route", "code"],
            registry=registry,
        )

    def _define_connections(self, registry: CollectorRegistry) -> None:
        """The public listener's connections."""
        self.connections_open = Gauge(
            "gateway_connections_open",
            "Connections open on the public listener.",
            registry=registry,
        )
        self.connections_accepted = Counter(
            "gateway_connections_accepted",
            "Connections accepted by the public listener (refused ones not included).",
            registry=registry,
        )
        self.connections_refused = Counter(
            "gateway_connections_refused",
            "Connections closed at once because a cap was reached, by cap (client_limit: "
            "the client's connections; total_limit: all connections).",
            ["reason"],
            registry=registry,
        )
        _initialise(self.connections_refused, ConnectionRefusal)
        self.connections_timed_out = Counter(
            "gateway_connections_timed_out",
            "Connections closed for a deadline, by phase (request_head: the request line "
            "and headers were late; request_body: the body; response: the client took none "
            "of its answer; keep_alive: idle between requests).",
            ["phase"],
            registry=registry,
        )
        _initialise(self.connections_timed_out, ConnectionPhase)

    def _define_overload(self, registry: CollectorRegistry) -> None:
        """Load shedding on the public listener (gateway.web.overload)."""
        self.requests_shed = Counter(
            "gateway_requests_shed",
            "Public requests answered 503 overloaded before any work, by reason (queue_full: "
            "the wait queue was full; queue_timeout: no place within overload.max_wait_ms; "
            "stream_limit: overload.stream_limit streams were open).",
            ["reason"],
            registry=registry,
        )
        _initialise(self.requests_shed, ShedReason)
        self.overload_limit = Gauge(
            "gateway_overload_limit",
            "The adaptive limit on public requests in flight (streams apart).",
            registry=registry,
        )
        self.overload_in_flight = Gauge(
            "gateway_overload_in_flight",
            "Places taken under the overload limits, by kind (requests: the adaptive "
            "limit's; streams: open streams).",
            ["kind"],
            registry=registry,
        )
        self.overload_waiting = Gauge(
            "gateway_overload_waiting",
            "Public requests waiting for a place under the adaptive limit.",
            registry=registry,
        )

    def _define_upstream(self, registry: CollectorRegistry) -> None:
        """The upstream and the streams relayed from it."""
        self.upstream_duration = Histogram(
            "gateway_upstream_request_duration_seconds",
            "Time until the upstream's response headers (whole body when buffered).",
            ["operation", "status_class"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Upstream failures by operation and reason.",
            ["operation", "reason"],
            registry=registry,
        )
        _initialise(self.upstream_errors, UpstreamOperation, UpstreamErrorReason)
        self.stream_ttfb = Histogram(
            "gateway_stream_time_to_first_byte_seconds",
            "From the request's arrival to the first streamed byte sent to the client.",
            buckets=TTFB_BUCKETS,
            registry=registry,
        )
        self.upstream_connections = Gauge(
            "gateway_upstream_connections",
            "Connections to the upstream, by state (open: all of them; idle: open and free).",
            ["state"],
            registry=registry,
        )
        self.upstream_waiting = Gauge(
            "gateway_upstream_requests_waiting",
            "Requests waiting in line for a connection to the upstream (the pool is full).",
            registry=registry,
        )
        self.streams_in_flight = Gauge(
            "gateway_streams_in_flight", "Streamed answers being relayed.", registry=registry
        )
        self.streams = Counter(
            "gateway_streams", "Streamed answers by outcome.", ["outcome"], registry=registry
        )
        _initialise(self.streams, StreamOutcome)

    def _define_keys_and_tokens(self, registry: CollectorRegistry) -> None:
        """Agent keys, client tokens and the security events around them."""
        self.tokens_issued = Counter(
            "gateway_tokens_issued", "Client tokens issued, by model.", ["model"], registry=registry
        )
        self.tokens_refused = Counter(
            "gateway_tokens_refused",
            "Token requests refused, by reason.",
            ["reason"],
            registry=registry,
        )
        _initialise(self.tokens_refused, TokenRefusal)
        self.token_uses_refused = Counter(
            "gateway_token_uses_refused",
            "Uses of a client token refused, by problem code.",
            ["reason"],
            registry=registry,
        )
        self.key_verifications = Counter(
            "gateway_key_verifications",
            "Agent key checks by result (cache_hit and verified are successes).",
            ["result"],
            registry=registry,
        )
        self.key_lookups = Counter(
            "gateway_key_lookups",
            "Key ids missing from this replica's key snapshot, by outcome of the look-up in "
            "the key store: found (a key newer than the snapshot), not_found, or not looked "
            "up: known_missing, over_budget, disabled; error: the store did not answer.",
            ["outcome"],
            registry=registry,
        )
        _initialise(self.key_lookups, LookupOutcome)
        self.suspicious = Counter(
            "gateway_suspicious_events",
            "Security events worth a look, by reason.",
            ["reason"],
            registry=registry,
        )
        _initialise(self.suspicious, SuspiciousReason)
        self.token_renewals = Counter(
            "gateway_token_renewals",
            "Client token renewals, by outcome (renewed, repeated, or the problem code).",
            ["outcome"],
            registry=registry,
        )
        _initialise(self.token_renewals, RenewalOutcome)
        self.token_family_revocations = Counter(
            "gateway_token_family_revocations",
            "Conversations whose every token was revoked, by reason.",
            ["reason"],
            registry=registry,
        )
        _initialise(self.token_family_revocations, FamilyRevocation)
        self.dpop_proofs_refused = Counter(
            "gateway_dpop_proofs_refused",
            "DPoP proofs refused, by reason (other_key: a valid proof by another key).",
            ["reason"],
            registry=registry,
        )
        _initialise(self.dpop_proofs_refused, ProofRefusal)
        self.tokens_flagged = Counter(
            "gateway_tokens_flagged",
            "Token uses admitted from a network fingerprint new to the token, by what the "
            "token is bound to (fingerprint: binding.action flag; proof: the key's proof "
            "passed, the network changed).",
            ["binding"],
            registry=registry,
        )
        _initialise(self.tokens_flagged, FlaggedBinding)

    def _define_rate_limits(self, registry: CollectorRegistry) -> None:
        """Rate limits and abuse defence."""
        self.ratelimit_decisions = Counter(
            "gateway_ratelimit_decisions",
            "Rate-limit decisions by policy and outcome (shadow_limited: would have limited).",
            ["policy", "outcome"],
            registry=registry,
        )
        self.penalty_box = Counter(
            "gateway_penalty_box_events",
            "Clients put in the penalty box (entered), requests refused there (refused), and "
            "attempts refused because the client's attempts in flight would reach the "
            "threshold (in_flight).",
            ["event"],
            registry=registry,
        )
        _initialise(self.penalty_box, PenaltyEvent)
        self.decision_log_dropped = Counter(
            "gateway_decision_log_dropped",
            "Decision-log lines dropped because the sink fell behind (the queue was full).",
            registry=registry,
        )

    def _define_store(self, registry: CollectorRegistry) -> None:
        """The state store: latency, failures, fail-open, the breaker."""
        self.store_duration = Histogram(
            "gateway_store_operation_duration_seconds",
            "State store call latency by operation (errors included).",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            "gateway_store_errors",
            "State store calls that failed, by operation and error kind.",
            ["operation", "error"],
            registry=registry,
        )
        _initialise(self.store_errors, WatchedStoreOperation, StoreErrorKind)
        self.store_fail_open = Counter(
            "gateway_store_fail_open",
            "Requests let through without the store because it failed (fail-open).",
            ["operation"],
            registry=registry,
        )
        _initialise(self.store_fail_open, WatchedStoreOperation)
        self.store_circuit_open = Gauge(
            "gateway_store_circuit_open",
            "1 while this replica's circuit breaker to the store is open or probing (store "
            "calls fail at once), else 0.",
            registry=registry,
        )
        self.local_revocations = Gauge(
            "gateway_local_revocations",
            "Revoked tokens this replica remembers until they expire: refused without asking "
            "the store, and all it knows of revocations while the store is down.",
            registry=registry,
        )
        self.store_deadlines_extended = Counter(
            "gateway_store_deadline_extended",
            "Store calls given more time because the event loop ran their deadline late.",
            registry=registry,
        )

    def _define_operations(self, registry: CollectorRegistry) -> None:
        """Configuration, health, the process."""
        self.config_reloads = Counter(
            "gateway_config_reloads",
            "Loads and reloads of the configuration and policies, by result.",
            ["kind", "result"],
            registry=registry,
        )
        _initialise(self.config_reloads, ReloadKind, ReloadResult)
        self.config_last_success = Gauge(
            "gateway_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load, by kind.",
            ["kind"],
            registry=registry,
        )
        self.dependency_up = Gauge(
            "gateway_dependency_up",
            "1 when the last readiness check reached the dependency, else 0.",
            ["dependency"],
            registry=registry,
        )
        self.draining = Gauge(
            "gateway_draining", "1 while shutting down (not ready).", registry=registry
        )
        self.loop_lag = Histogram(
            "gateway_event_loop_lag_seconds",
            "How late the event loop ran a timer; high values mean blocking work.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: the lookup is not free on every request."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*labels)
            if len(self._children) < MAX_CACHED_CHILDREN:
                self._children[key] = found
        return found

    # -- public HTTP -----------------------------------------------------------------------
    def request_started(self) -> None:
        """A request is being handled (``gateway_http_requests_in_flight``)."""
        self._requests_in_flight += 1

    def request_ended(self) -> None:
        self._requests_in_flight -= 1

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, code: str | None
    ) -> None:
        """Called once per request by the context middleware; ``route`` is a template."""
        series = self._request_series.get((route, method, status))
        if series is None:
            label = method_label(method)
            series = (
                self.child(self.http_requests, route, label, str(status)),
                self.child(self.http_duration, route, label, status_class(status)),
            )
            if len(self._request_series) < MAX_CACHED_CHILDREN:  # methods are the client's
                self._request_series[(route, method, status)] = series
        series[0].inc()
        series[1].observe(seconds)
        if code:
            self.child(self.http_problems, route, self._words(code)).inc()

    # -- overload ---------------------------------------------------------------------------
    def watch_overload(self, figures: OverloadFigures) -> None:
        """Read the shedding's limit, places and queue at each scrape."""
        self.overload_limit.set_function(lambda: figures.limit)
        self.overload_in_flight.labels("requests").set_function(lambda: figures.in_flight)
        self.overload_in_flight.labels("streams").set_function(lambda: figures.streams)
        self.overload_waiting.set_function(lambda: figures.waiting)

    def request_shed(self, reason: ShedReason) -> None:
        self.child(self.requests_shed, reason).inc()

    # -- public listener: connections ------------------------------------------------------
    def watch_connections(self, counts: OpenConnections) -> None:
        """Read the listener's open connections at each scrape."""
        self.connections_open.set_function(lambda: counts.total)

    def connection_accepted(self) -> None:
        self.connections_accepted.inc()

    def connection_refused(self, reason: ConnectionRefusal) -> None:
        self.connections_refused.labels(reason).inc()

    def connection_timed_out(self, phase: ConnectionPhase) -> None:
        self.connections_timed_out.labels(phase).inc()

    # -- upstream --------------------------------------------------------------------------
    def observe_upstream(
        self, operation: str, status: int | None, seconds: float, *, cancelled: bool = False
    ) -> None:
        """``status`` None means no response: an error (see :meth:`upstream_error`) or,
        with ``cancelled``, the client went away first."""
        if status is not None:
            label = status_class(status)
        else:
            label = "cancelled" if cancelled else "error"
        self.upstream_duration.labels(operation, label).observe(seconds)
        if status is not None and status >= 500:
            self.upstream_errors.labels(operation, "status_5xx").inc()

    def upstream_error(self, operation: str, reason: str) -> None:
        """``reason``: timeout, unavailable or bad_response."""
        self.upstream_errors.labels(operation, self._words(reason)).inc()

    # -- streams ---------------------------------------------------------------------------
    @contextmanager
    def stream(self) -> Iterator[None]:
        """Counts a stream in flight for the duration of the block."""
        self.streams_in_flight.inc()
        try:
            yield
        finally:
            self.streams_in_flight.dec()

    def stream_first_byte(self, seconds: float) -> None:
        self.stream_ttfb.observe(seconds)

    def stream_ended(self, outcome: StreamOutcome) -> None:
        self.streams.labels(outcome).inc()

    # -- keys and tokens -------------------------------------------------------------------
    def token_issued(self, model: str) -> None:
        """``model`` must be a configured model id (a bounded set)."""
        self.tokens_issued.labels(model).inc()

    def token_refused(self, reason: str) -> None:
        self.tokens_refused.labels(self._words(reason)).inc()

    def token_use_refused(self, code: str) -> None:
        self.token_uses_refused.labels(self._words(code)).inc()

    def token_renewal(self, outcome: str) -> None:
        """One renewal's outcome; a problem code outside :data:`RenewalOutcome` counts as
        ``other``."""
        known = outcome if outcome in RENEWAL_OUTCOMES else "other"
        self.token_renewals.labels(known).inc()

    def token_family_revoked(self, reason: FamilyRevocation) -> None:
        self.token_family_revocations.labels(reason).inc()

    def token_flagged(self, binding: FlaggedBinding) -> None:
        self.tokens_flagged.labels(binding).inc()

    def dpop_proof_refused(self, reason: str) -> None:
        if reason not in PROOF_REFUSALS:  # a label from outside the list: never a new series
            reason = "malformed"
        self.dpop_proofs_refused.labels(reason).inc()

    def key_verification(self, result: str) -> None:
        self.key_verifications.labels(self._words(result)).inc()

    def key_lookup(self, outcome: str) -> None:
        """A key id the snapshot lacked, and what the key store said (see
        :meth:`gateway.keystore.base.KeyStore.find`)."""
        self.key_lookups.labels(self._words(outcome)).inc()

    def suspicious_event(self, reason: str) -> None:
        """One security event (token reuse, invalid key, penalty box, ...)."""
        self.suspicious.labels(self._words(reason)).inc()

    # -- rate limits and abuse defence (fed by the policy engine) --------------------------
    def ratelimit_decision(self, policy: str, outcome: RateLimitOutcome) -> None:
        """One limit's decision for one request. ``policy`` is the policy's configured
        name (never a key, IP or other per-client value); ``shadow_limited`` is a shadow
        policy that would have refused the request."""
        counter = self._decisions.get((policy, outcome))
        if counter is None:
            counter = self.child(self.ratelimit_decisions, self._policies(policy), outcome)
            if len(self._decisions) < MAX_CACHED_CHILDREN:
                self._decisions[(policy, outcome)] = counter
        counter.inc()

    def penalty_box_event(self, event: PenaltyEvent) -> None:
        """``entered``: a client was put in the penalty box (also a suspicious event);
        ``refused``: a request was refused because its client sits there; ``in_flight``:
        an attempt was refused before its argon2 run because the client's failures and
        attempts in flight already reach the threshold."""
        self.penalty_box.labels(event).inc()
        if event == "entered":
            self.suspicious_event("penalty_box")

    # -- state store -----------------------------------------------------------------------
    def store_call_ended(
        self, operation: str, seconds: float, error: StoreErrorKind | None
    ) -> None:
        """One store call took ``seconds`` and failed with ``error`` (None: it answered);
        fed by :class:`gateway.store.errors.StoreCall`."""
        if error is not None:
            self.store_errors.labels(operation, error).inc()
        self.child(self.store_duration, operation).observe(seconds)

    def store_failed_open(self, operation: str = "admit") -> None:
        """A request was let through although the store failed (fail-open mode)."""
        self.store_fail_open.labels(self._words(operation)).inc()

    def watch_upstream_pool(self, pool: PoolStats) -> None:
        """Read the upstream pool's figures at each scrape."""
        self.upstream_connections.labels("open").set_function(lambda: pool.open_connections)
        self.upstream_connections.labels("idle").set_function(lambda: pool.idle_connections)
        self.upstream_waiting.set_function(lambda: pool.waiting)

    def watch_local_revocations(self, revocations: Sized) -> None:
        """Read the size of the replica's revocation set at each scrape."""
        self.local_revocations.set_function(lambda: len(revocations))

    def store_circuit(self, state: BreakerState) -> None:
        """The store's circuit breaker opened (or half-opened) or closed again."""
        self.store_circuit_open.set(0 if state is BreakerState.CLOSED else 1)

    def store_deadline_extended(self) -> None:
        """A store call's deadline fired late (the loop was busy, not the store), so the
        call was given more time; see :class:`~gateway.store.guarded.GuardedStore`."""
        self.store_deadlines_extended.inc()

    # -- configuration and health ----------------------------------------------------------
    def config_reload(self, kind: ReloadKind, ok: bool) -> None:
        """One load or reload of ``kind``; a success also stamps the time."""
        result: ReloadResult = "success" if ok else "failure"
        self.config_reloads.labels(kind, result).inc()
        if ok:
            self.config_last_success.labels(kind).set(time.time())

    def dependency(self, name: str, up: bool) -> None:
        self.dependency_up.labels(self._words(name)).set(1 if up else 0)
