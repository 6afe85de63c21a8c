"""Liveness and readiness.

The admin listener runs on a thread of its own (:mod:`gateway.web.admin_thread`), so
probes never queue behind public traffic; it reads what the public event loop publishes
here, never the loop's objects. The public loop stamps a heartbeat every
``HEARTBEAT_SECONDS`` (:meth:`Health.watch`) and runs the dependency checks when a probe
finds their last result older than a moment (:meth:`Health.request_refresh`: no probe, no
store or upstream traffic); each result replaces the last in one assignment, so the admin
thread reads a whole one.

Readiness is: the configuration is loaded and the services are built, the state store
answered a ping within the store timeout, the upstream is reachable (a cheap check cached
for a couple of seconds, so the checks do not hammer it), the process is not draining,
and the public loop's heartbeat is younger than ``admin.loop_stall_seconds`` (a loop
blocked, or saturated past that, takes its replica out of the balancer).
Liveness is the admin listener answering, and the heartbeat younger than
``admin.loop_dead_seconds``: a loop stuck that long is restarted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.observability.metrics import Metrics

#: how often the public loop stamps its heartbeat
HEARTBEAT_SECONDS = 0.1

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
    """The process's lifecycle state as probes see it: written by the public event loop,
    read from any thread (the admin listener's)."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        stall_seconds: float = 2.0,
        dead_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.draining = False
        self.stall_seconds = stall_seconds
        self.dead_seconds = dead_seconds
        self._clock = clock
        #: the last dependency checks: all required ones fine, each one's detail, and
        #: when (None until the first ran)
        self._checks: tuple[bool, dict[str, str], float] | None = None
        #: the public loop and its checks, while :meth:`watch` runs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._to_check: Sequence[CachedCheck] | None = None
        self._pending: concurrent.futures.Future[None] | None = None
        self._refresh_lock = threading.Lock()
        #: the public loop's last heartbeat (None: no loop watched, as in tests that
        #: build the application alone, or once it stopped on purpose)
        self._beat: float | None = None

    def start_draining(self) -> None:
        self.draining = True
        self.metrics.draining.set(1)

    async def readiness(self, checks: Sequence[CachedCheck] | None) -> Report:
        """Run ``checks`` now and report (None until the services are built: the
        configuration is not loaded yet)."""
        if checks is not None:
            await self.refresh(checks)
        return self.snapshot()

    # -- the public loop's side
    def beat(self) -> None:
        self._beat = self._clock()

    async def refresh(self, checks: Sequence[CachedCheck]) -> None:
        """Run the checks and publish their result (one assignment)."""
        results = await asyncio.gather(*(check.run() for check in checks))
        out = {"config": "ok"}
        ready = True
        for check, result in zip(checks, results, strict=True):
            self.metrics.dependency(check.name, result.ok)
            if result.ok or check.required():
                out[check.name] = result.detail
                ready = ready and result.ok
            else:
                out[check.name] = f"{result.detail} (not required)"
        self._checks = (ready, out, self._clock())

    async def watch(self, checks: Sequence[CachedCheck]) -> None:
        """Stamp the heartbeat until cancelled, on the public loop; its first task is to
        publish the checks (which :meth:`request_refresh` then re-runs on demand)."""
        self._loop, self._to_check = asyncio.get_running_loop(), checks
        try:
            while True:
                self.beat()
                await asyncio.sleep(HEARTBEAT_SECONDS)
        finally:
            self._beat = None  # stopped on purpose (shutdown): not a stall
            self._loop = None

    # -- any thread's side
    def stalled_for(self) -> float:
        """Seconds since the public loop's last heartbeat (0 when none is watched)."""
        beat = self._beat
        return 0.0 if beat is None else max(0.0, self._clock() - beat)

    def checked_ago(self) -> float:
        """Seconds since the checks last published (infinite before the first)."""
        checks = self._checks
        return math.inf if checks is None else self._clock() - checks[2]

    def request_refresh(self) -> concurrent.futures.Future[None] | None:
        """Have the public loop run the checks again (one run at a time); the future
        ends when it published, None when no loop is watched."""
        loop, checks = self._loop, self._to_check
        if loop is None or checks is None:
            return None
        with self._refresh_lock:
            pending = self._pending
            if pending is None or pending.done():
                pending = asyncio.run_coroutine_threadsafe(self.refresh(checks), loop)
                self._pending = pending
            return pending

    def alive(self) -> bool:
        return self.stalled_for() < self.dead_seconds

    def snapshot(self) -> Report:
        """The readiness to answer now: the last checks, with the draining flag and the
        heartbeat as they are now."""
        draining = str(self.draining).lower()
        checks = self._checks
        if checks is None:
            return Report(False, {"config": "starting", "draining": draining})
        ready, published, _at = checks
        out = {**published, "draining": draining}
        stalled = self.stalled_for()
        if stalled >= self.stall_seconds:
            out["event_loop"] = f"stalled {stalled:.1f}s"
            ready = False
        return Report(ready and not self.draining, out)
