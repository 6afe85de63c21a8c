"""The decision log: one JSON line per public request, for ``gateway policies replay``.

Opt-in (``observability.decision_log``). A line holds what a replay needs to put the
request through any policy set again (its route, method, model, key id, time and the
inputs of every partition) and nothing secret: the token's ``jti``, the conversation id,
the client's address and User-Agent appear only as keyed hashes (HMAC-SHA256 with the
deployment's secret, truncated to 96 bits), so the lines of several replicas that share
the secret join up, and nobody without it can tell whose they are. docs/operations.md
describes each field.

The request path only fills a :class:`Decision` (a few attribute writes) and hands it to
a bounded queue; a writer thread hashes, serialises and writes the lines in batches. When
the sink falls behind and the queue is full, lines are dropped and counted
(``gateway_decision_log_dropped_total``): a request never waits for the log.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

import orjson

from gateway.core.fingerprint import ip_prefix
from gateway.core.gcra import LimitState
from gateway.core.policy import PolicySet, RequestFacts, SelectedPolicy, client_key

#: the environment variable holding the HMAC secret (the same on every replica)
SECRET_ENV = "GATEWAY_DECISION_LOG_SECRET"
#: or the file holding it (a Compose secret)
SECRET_FILE_ENV = "GATEWAY_DECISION_LOG_SECRET_FILE"
#: the shortest secret accepted, in bytes
MIN_SECRET_BYTES = 16
#: the format of the lines; a replay refuses lines of another major version
VERSION = 1
#: lines waiting for the writer at most; past this they are dropped and counted
DEFAULT_QUEUE = 10_000
#: lines written per batch at most
BATCH = 1_000
#: route kinds of the public API (the policies' routes)
PUBLIC_KINDS = {
    "/v1/chat/conversation/public/message/token/{model_id}": "token",
    "/v1/chat/conversation/public/messages/{token}": "messages",
    "/v1/chat/conversation/public/message": "send",
    "/v1/chat/conversation/public/token/refresh": "refresh",
}


class Decision:
    """What the admission learnt about one request, filled in on the request path."""

    __slots__ = ("facts", "penalized", "policies", "reached", "states", "ts_us")

    def __init__(self) -> None:
        self.facts: RequestFacts | None = None
        self.policies: tuple[SelectedPolicy, ...] = ()
        self.states: tuple[LimitState, ...] = ()
        #: the limits were evaluated (the store answered them)
        self.reached = False
        self.penalized = False
        #: when the limits were decided (microseconds since the Unix epoch)
        self.ts_us = 0


#: the current request's decision; None when the decision log is off
CURRENT: ContextVar[Decision | None] = ContextVar("gateway_decision", default=None)


class Keyed:
    """HMAC-SHA256 of a value with the deployment's secret, 96 bits in base64url."""

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, digestmod=hashlib.sha256)

    def __call__(self, value: str | None) -> str | None:
        if value is None:
            return None
        mac = self._key.copy()
        mac.update(value.encode("utf-8", "surrogatepass"))
        return base64.urlsafe_b64encode(mac.digest()[:12]).decode()


def load_secret(environ: Mapping[str, str]) -> bytes:
    """From ``GATEWAY_DECISION_LOG_SECRET``, else the file ``GATEWAY_DECISION_LOG_SECRET_FILE``
    names (a Docker or Compose secret; one trailing newline is not part of it)."""
    secret = environ.get(SECRET_ENV, "")
    file_name = environ.get(SECRET_FILE_ENV, "").strip()
    source = SECRET_ENV
    if not secret and file_name:
        source = file_name
        try:
            secret = Path(file_name).read_text(encoding="utf-8").removesuffix("\n")
        except OSError as exc:
            raise ValueError(
                f"{file_name} ({SECRET_FILE_ENV}): cannot read the decision log's secret: "
                f"{exc.strerror}"
            ) from None
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(
            f"observability.decision_log needs {SECRET_ENV} (or {SECRET_FILE_ENV}): a secret "
            f"of at least {MIN_SECRET_BYTES} bytes, the same on every replica"
            + (f"; {source} holds {len(secret.encode())}" if secret else "")
        )
    return secret.encode()


class _Entry:
    __slots__ = ("client_ip", "decision", "error", "key_id", "method", "route", "status", "ua")

    def __init__(
        self,
        decision: Decision,
        route: str,
        method: str,
        status: int,
        error: str | None,
        client_ip: str | None,
        user_agent: str | None,
        key_id: str | None,
    ) -> None:
        self.decision, self.route, self.method = decision, route, method
        self.status, self.error = status, error
        self.client_ip, self.ua, self.key_id = client_ip, user_agent, key_id


def decisions_of(d: Decision) -> list[dict[str, str]]:
    out = []
    for p, state in zip(d.policies, d.states, strict=False):
        decision = "allowed" if state.allowed else "shadow_limited" if p.shadow else "limited"
        out.append({"name": p.name, "decision": decision})
    return out


def line_of(entry: _Entry, keyed: Keyed, policies: PolicySet, now_us: int) -> dict[str, Any]:
    """The JSON object of one line (hashes computed here, on the writer's thread)."""
    d = entry.decision
    facts = d.facts
    ip = entry.client_ip or ""
    v4, v6 = policies.ipv4_prefix, policies.ipv6_prefix
    applied = decisions_of(d) if d.reached else []
    limited = [a["name"] for a in applied if a["decision"] == "limited"]
    if d.penalized:
        outcome = "penalized"
    elif limited:
        outcome = "limited"
    elif d.reached:
        outcome = "admitted"
    elif entry.status >= 400:
        outcome = "refused"
    else:  # answered without any limit to decide (a CORS preflight)
        outcome = "unlimited"
    line: dict[str, Any] = {
        "log": "decision",
        "v": VERSION,
        "ts_us": d.ts_us or now_us,
        "route": entry.route,
        "method": entry.method,
        "model": facts.model if facts else None,
        "key_id": facts.key_id if facts else entry.key_id,
        "token": keyed(facts.token) if facts else None,
        "conversation": keyed(facts.conversation) if facts else None,
        "ip_prefix": ip_prefix(ip, v4, v6) if ip else None,
        "ip": keyed(ip) if ip else None,
        "ua": keyed(entry.ua),
        "outcome": outcome,
        "code": entry.error,
        "status": entry.status,
        "reached": d.reached,
        "policies": applied,
    }
    if ip and ":" in ip:  # an IPv6 client counts by its /64 (policy.client_key)
        line["client"] = keyed(client_key(ip, v6))
    if limited:
        line["limited_by"] = limited
    return line


class DecisionLog:
    """The bounded queue and the writer thread behind ``observability.decision_log``."""

    def __init__(
        self,
        sink: str,
        secret: bytes,
        policies: Callable[[], PolicySet],
        on_drop: Callable[[], None],
        *,
        max_queue: int = DEFAULT_QUEUE,
        clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.sink = sink
        self._keyed = Keyed(secret)
        self._policies = policies
        self._on_drop = on_drop
        self._queue: queue.Queue[_Entry | None] = queue.Queue(max_queue)
        self._clock_us = clock_us
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0

    # -- the request path ------------------------------------------------------------
    def submit(
        self,
        decision: Decision,
        route: str,
        method: str,
        status: int,
        error: str | None,
        client_ip: str | None,
        user_agent: str | None,
        key_id: str | None,
    ) -> None:
        kind = PUBLIC_KINDS.get(route)
        if kind is None:
            return
        entry = _Entry(decision, kind, method, status, error, client_ip, user_agent, key_id)
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.dropped += 1
            self._on_drop()

    # -- the writer ------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end the writer."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None

    def _open(self) -> IO[bytes]:
        if self.sink == "-":
            return sys.stdout.buffer
        return open(self.sink, "ab", buffering=0)

    def _run(self) -> None:
        out = self._open()
        try:
            done = False
            while not done:
                entry = self._queue.get()
                batch: list[_Entry] = []
                if entry is None:
                    done = True
                else:
                    batch.append(entry)
                while len(batch) < BATCH and not done:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        done = True
                    else:
                        batch.append(more)
                if batch:
                    self._write(out, batch)
        finally:
            if out is not sys.stdout.buffer:
                out.close()

    def _write(self, out: IO[bytes], batch: list[_Entry]) -> None:
        policies = self._policies()
        now = self._clock_us()
        data = b"".join(orjson.dumps(line_of(e, self._keyed, policies, now)) + b"\n" for e in batch)
        try:
            out.write(data)  # one write per batch: O_APPEND keeps lines whole
            out.flush()
        except OSError:
            self.dropped += len(batch)
            for _ in batch:
                self._on_drop()
            return
        self.written += len(batch)
