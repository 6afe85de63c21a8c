"""`gateway serve` as a process: the admin listener (its own thread and event loop) answers
while the public event loop is blocked or saturated, and says when that loop is stuck."""

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import httpx
import pytest

from gateway.web.openapi import OPENAPI_PATH
from tests.support.harness import NO_LIMITS, write_policies
from tests.support.stack import SEND, stack

pytestmark = pytest.mark.slow  # gateway processes

#: imported by the gateway process only (its PYTHONPATH): SIGUSR1 blocks its main thread,
#: so the public event loop, for as many seconds as the file says (a real blocking call,
#: as a CPU-bound handler or a blocking library call would be)
BLOCKING_HOOK = """
import signal, time

def _block(signum, frame):
    with open({path!r}) as seconds:
        time.sleep(float(seconds.read()))

signal.signal(signal.SIGUSR1, _block)
"""


def hook_env(tmp_path: Path, seconds: float) -> dict[str, str]:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    duration = tmp_path / "block-seconds"
    duration.write_text(str(seconds))
    (hooks / "sitecustomize.py").write_text(BLOCKING_HOOK.format(path=str(duration)))
    return {"PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", ".")])}


def probe(url: str) -> httpx.Response:
    """An answer within a second, or the test fails (raises)."""
    return httpx.get(url, timeout=1)


def until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


def test_probes_answer_while_the_public_loop_is_blocked_and_say_it_is_stuck(
    tmp_path: Path,
) -> None:
    admin_section = {"loop_stall_seconds": 0.5, "loop_dead_seconds": 1.5}
    with stack(tmp_path, env=hook_env(tmp_path, 4), sections={"admin": admin_section}) as gw:
        assert probe(gw.admin + "/readyz").status_code == 200
        assert probe(gw.admin + "/healthz").status_code == 200
        gw.proc.send_signal(signal.SIGUSR1)
        with pytest.raises(httpx.TimeoutException):  # the public side is blocked indeed
            httpx.get(gw.public + OPENAPI_PATH, timeout=0.5)

        until(lambda: probe(gw.admin + "/readyz").status_code == 503)
        body = probe(gw.admin + "/readyz").json()
        assert body["status"] == "not_ready"
        assert body["checks"]["event_loop"].startswith("stalled ")
        until(lambda: probe(gw.admin + "/healthz").status_code == 503)
        assert probe(gw.admin + "/healthz").json()["status"] == "not_alive"
        metrics = probe(gw.admin + "/metrics")
        assert metrics.status_code == 200 and "gateway_http_requests_total" in metrics.text

        # the block ends: live and ready again, and the public side answers
        until(lambda: probe(gw.admin + "/readyz").status_code == 200)
        assert probe(gw.admin + "/healthz").status_code == 200
        assert httpx.get(gw.public + OPENAPI_PATH, timeout=5).status_code == 200


async def _flood(public: str, token: str, stop: asyncio.Event, answers: dict[int, int]) -> None:
    body = {"client_token": token, "message": "hello"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one_client() -> None:
            while not stop.is_set():
                try:
                    async with http.post(public + SEND, json=body) as resp:
                        await resp.read()
                        answers[resp.status] = answers.get(resp.status, 0) + 1
                except aiohttp.ClientError:
                    answers[0] = answers.get(0, 0) + 1

        await asyncio.gather(*(one_client() for _ in range(200)))


async def _probe_during(admin: str, stop: asyncio.Event, seconds: float) -> list[int]:
    statuses: list[int] = []
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
        while time.monotonic() < end:
            for path in ("/readyz", "/healthz", "/metrics"):
                try:
                    async with http.get(admin + path) as resp:
                        await resp.read()
                        statuses.append(resp.status)
                except (TimeoutError, aiohttp.ClientError):
                    statuses.append(0)
            await asyncio.sleep(0.1)
    stop.set()
    return statuses


def test_probes_answer_while_the_public_loop_is_saturated(tmp_path: Path) -> None:
    """200 clients sending without pause to a replica that admits 4 at a time: the public
    loop is busy shedding, the probes still get their answers (within a second each)."""
    sections = {
        "overload": {"min_limit": 4, "max_limit": 4, "queue_size": 8, "max_wait_ms": 50},
        # no limits: every request reaches the shedding
        "policies": {"path": str(write_policies(tmp_path, NO_LIMITS)), "allow_unprotected": True},
    }
    with stack(tmp_path, word_delay=0, sections=sections) as gw:
        _key, token = gw.token()

        async def run() -> tuple[list[int], dict[int, int]]:
            stop = asyncio.Event()
            answers: dict[int, int] = {}
            flood = asyncio.create_task(_flood(gw.public, token, stop, answers))
            await asyncio.sleep(0.5)  # the flood under way
            statuses = await _probe_during(gw.admin, stop, 3)
            await flood
            return statuses, answers

        statuses, answers = asyncio.run(run())
        assert answers.get(503, 0) > 0, answers  # the replica did shed: it was saturated
        assert statuses and all(status == 200 for status in statuses), statuses
