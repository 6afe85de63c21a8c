"""Readiness checks: timeouts, caching, and the states before startup and while draining."""

import asyncio
import contextlib

from gateway.observability.health import CachedCheck, CheckFailed, Health
from gateway.observability.metrics import Metrics


async def test_a_probe_that_hangs_is_a_timeout() -> None:
    async def hang() -> None:
        await asyncio.sleep(10)

    result = await CachedCheck("store", hang, timeout=0.05).run()
    assert (result.ok, result.detail) == (False, "timeout")


async def test_results_are_reused_within_the_ttl_and_shared_by_concurrent_callers() -> None:
    calls = 0
    now = [100.0]

    async def probe() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls > 1:
            raise CheckFailed("status_503")

    check = CachedCheck("upstream", probe, timeout=1, ttl=2, clock=lambda: now[0])
    results = await asyncio.gather(*(check.run() for _ in range(5)))
    assert calls == 1 and all(r.ok for r in results)
    now[0] += 1.9
    assert (await check.run()).ok and calls == 1
    now[0] += 0.2
    result = await check.run()
    assert calls == 2 and (result.ok, result.detail) == (False, "status_503")


async def test_not_ready_before_startup_and_while_draining() -> None:
    health = Health(Metrics())
    report = await health.readiness(None)
    assert not report.ready and report.checks["config"] == "starting"

    async def ok() -> None:
        return None

    checks = [CachedCheck("store", ok, timeout=1)]
    assert (await health.readiness(checks)).ready
    health.start_draining()
    report = await health.readiness(checks)
    assert not report.ready and report.checks == {
        "config": "ok",
        "store": "ok",
        "draining": "true",
    }


async def test_a_stalled_loop_is_not_ready_then_not_alive_and_a_stopped_watch_is_neither() -> None:
    now = [100.0]
    health = Health(Metrics(), stall_seconds=2, dead_seconds=30, clock=lambda: now[0])

    async def ok() -> None:
        return None

    await health.refresh([CachedCheck("store", ok, timeout=1)])
    health.beat()
    now[0] += 1.9
    assert health.snapshot().ready and health.alive()
    now[0] += 0.2
    report = health.snapshot()
    assert not report.ready and report.checks["event_loop"] == "stalled 2.1s"
    assert report.checks["store"] == "ok" and health.alive()
    now[0] += 28
    assert not health.alive()
    health.beat()  # the loop turned again
    assert health.snapshot().ready and health.alive()

    watch = asyncio.create_task(health.watch([]))
    await asyncio.sleep(0)
    watch.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watch
    now[0] += 100  # no heartbeat since: stopped on purpose, not stalled
    assert health.snapshot().ready and health.alive()
