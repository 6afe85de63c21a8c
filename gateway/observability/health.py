"""Liveness and readiness.

Liveness is the admin app answering at all (the process and its event loop run).
Readiness is: the configuration is loaded and the services are built, the state store
answers a ping within the store timeout, the upstream is reachable (a cheap check cached
for a couple of seconds, so probes do not hammer it), and the process is not draining.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.observability.metrics import Metrics

Probe = Callable[[], Awaitable[None]]


class CheckFailed(Exception):
    """A probe's refusal; its message is a short safe word shown in ``/readyz``."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    #: ``ok``, or the kind of failure (an exception class name: never a URL or secret)
    detail: str


class CachedCheck:
    """One dependency check: the probe must finish within ``timeout``; a result is
    reused for ``ttl`` seconds, and concurrent callers share one probe."""

    def __init__(
        self,
        name: str,
        probe: Probe,
        *,
        timeout: float,
        ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        required: Callable[[], bool] = lambda: True,
    ) -> None:
        self.name = name
        #: whether a failure makes the process unready (asked at every probe)
        self.required = required
        self._probe = probe
        self._timeout = timeout
        self._ttl = ttl
        self._clock = clock
        self._lock = asyncio.Lock()
        self._last: CheckResult | None = None
        self._at = 0.0

    def _fresh(self) -> CheckResult | None:
        if self._last is not None and self._clock() - self._at < self._ttl:
            return self._last
        return None

    async def run(self) -> CheckResult:
        cached = self._fresh()
        if cached is not None:
            return cached
        async with self._lock:
            cached = self._fresh()
            if cached is not None:
                return cached
            try:
                async with asyncio.timeout(self._timeout):
                    await self._probe()
                result = CheckResult(True, "ok")
            except TimeoutError:
                result = CheckResult(False, "timeout")
            except CheckFailed as exc:
                result = CheckResult(False, str(exc))
            except Exception as exc:
                result = CheckResult(False, type(exc.__cause__ or exc).__name__)
            self._last, self._at = result, self._clock()
            return result


@dataclass(frozen=True, slots=True)
class Report:
    ready: bool
    checks: dict[str, str]

    def body(self) -> dict[str, object]:
        return {"status": "ready" if self.ready else "not_ready", "checks": self.checks}


class Health:
    """The process's lifecycle state as probes see it."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.draining = False

    def start_draining(self) -> None:
        self.draining = True
        self.metrics.draining.set(1)

    async def readiness(self, checks: Sequence[CachedCheck] | None) -> Report:
        """``checks`` is None until the services are built (configuration not loaded)."""
        if checks is None:
            return Report(False, {"config": "starting", "draining": str(self.draining).lower()})
        results = await asyncio.gather(*(check.run() for check in checks))
        out = {"config": "ok"}
        ready = not self.draining
        for check, result in zip(checks, results, strict=True):
            self.metrics.dependency(check.name, result.ok)
            if result.ok or check.required():
                out[check.name] = result.detail
                ready = ready and result.ok
            else:
                out[check.name] = f"{result.detail} (not required)"
        out["draining"] = str(self.draining).lower()
        return Report(ready, out)
