"""The penalty box in a replay: which subjects a policy set's box would have boxed, and
for how long, on the logged clock.

The logged refusals that the box counts are failures (a ``key_not_found`` is an
``invalid_key``, a ``token_invalid`` or ``invalid_dpop_proof`` an ``invalid_token``, a
``token_reuse_suspected`` a
``reuse``: as :mod:`gateway.admission` counts them), counted with the gateway's own
arithmetic (:func:`gateway.core.penalty_box.count_failure`) per subject: the client
(the keyed hash of its address, an IPv6 client by its /64) or its logged prefix, as the
set's ``penalty_box.subject`` says. While a subject is boxed its requests would have been
refused (429) before anything else, so they count no failure.

What a log cannot tell: failures on the private routes (not logged), and whether requests
that the recorded run refused in its own box would have failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.core.penalty_box import Failures, count_failure
from gateway.core.policy import Penalty

if TYPE_CHECKING:
    from gateway.policies.replay import Recorded

#: a logged problem code -> the failure the penalty box counts it as
FAILURES = {
    "key_not_found": "invalid_key",
    "token_invalid": "invalid_token",
    "invalid_dpop_proof": "invalid_token",
    "token_reuse_suspected": "reuse",
}
#: idle counts and ended boxes are dropped every so many requests
SWEEP_EVERY = 50_000
#: distinct boxed subjects kept at most (then counted in ``other``)
MAX_SUBJECTS = 10_000


@dataclass
class Boxed:
    """One subject's time in the box under one set."""

    #: ``ip_prefix`` (the logged prefix) or ``client`` (its keyed hash)
    kind: str
    boxes: int = 0
    boxed_ms: int = 0
    first_ms: float = 0.0
    #: when its last box ends (it may end after the log)
    until_ms: float = 0.0
    #: logged requests that fall in a box: refused (429) under this set
    refused: int = 0


@dataclass
class BoxReplay:
    """One policy set's penalty box over a log."""

    penalty: Penalty | None
    failures_counted: int = 0
    subjects: dict[str, Boxed] = field(default_factory=dict)
    other: int = 0
    _failures: dict[str, Failures] = field(default_factory=dict)
    _until: dict[str, float] = field(default_factory=dict)
    _seen: int = 0

    def subject(self, request: Recorded) -> str | None:
        penalty = self.penalty
        if penalty is None:
            return None
        if penalty.subject == "ip_prefix":
            return request.ip_prefix
        return request.client

    def see(self, request: Recorded) -> bool:
        """Count one logged request; True when this set's box would have refused it."""
        penalty = self.penalty
        subject = self.subject(request)
        if penalty is None or subject is None:
            return False
        now = request.ts_us / 1000
        self._seen += 1
        if self._seen % SWEEP_EVERY == 0:
            self._sweep(now)
        until = self._until.get(subject)
        if until is not None and until > now:
            boxed = self.subjects.get(subject)
            if boxed is not None:
                boxed.refused += 1
            return True
        reason = FAILURES.get(request.code or "")
        if reason is None or reason not in penalty.count:
            return False
        self.failures_counted += 1
        kept, cooldown_ms = count_failure(self._failures.get(subject), now, penalty)
        if kept is not None:
            self._failures[subject] = kept
            return False
        self._failures.pop(subject, None)
        self._until[subject] = now + cooldown_ms
        self._box(subject, now, cooldown_ms)
        return False

    def _box(self, subject: str, now: float, cooldown_ms: int) -> None:
        boxed = self.subjects.get(subject)
        if boxed is None:
            if len(self.subjects) >= MAX_SUBJECTS:
                self.other += 1
                return
            kind = "ip_prefix" if self.penalty and self.penalty.subject == "ip_prefix" else "client"
            boxed = self.subjects[subject] = Boxed(kind, first_ms=now)
        boxed.boxes += 1
        boxed.boxed_ms += cooldown_ms
        boxed.until_ms = now + cooldown_ms

    def _sweep(self, now: float) -> None:
        self._failures = {k: f for k, f in self._failures.items() if f.ends_ms > now}
        self._until = {k: t for k, t in self._until.items() if t > now}

    def ranked(self) -> list[tuple[str, Boxed]]:
        """Boxed subjects, longest boxed first."""
        return sorted(self.subjects.items(), key=lambda kv: (-kv[1].boxed_ms, kv[1].first_ms))


def rule_json(penalty: Penalty | None) -> dict[str, Any] | None:
    if penalty is None:
        return None
    return {
        "subject": penalty.subject,
        "threshold": penalty.threshold,
        "window_seconds": penalty.window_ms / 1000,
        "cooldown_seconds": penalty.cooldown_ms / 1000,
        "count": sorted(penalty.count),
    }
