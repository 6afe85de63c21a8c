"""The application's resources are built and closed in one place: a start that fails
half-way closes what it had opened."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from aiohttp import web
from pytest_redis.executor import RedisExecutor

from gateway import server as server_module
from gateway.core.redis_keys import KeyStoreKeys
from gateway.keystore.base import KeyStoreError
from gateway.web.admin_thread import AdminThread
from gateway.web.app import create_app
from tests.support.harness import SIGNING_ENV, make_config
from tests.support.processes import free_port
from tests.support.redis_servers import running_redis


@pytest.fixture
def dedicated(tmp_path: Path) -> Iterator[RedisExecutor]:
    with running_redis(tmp_path / "redis") as executor:
        yield executor


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def other_clients(url: str) -> int:
    """Connections to the server other than the one asking."""
    with redis.Redis.from_url(url) as client:
        return len(client.client_list()) - 1


async def test_a_key_store_failing_at_start_leaves_nothing_open(
    tmp_path: Path, dedicated: RedisExecutor
) -> None:
    url = f"redis://127.0.0.1:{dedicated.port}/0"
    with redis.Redis.from_url(url) as client:  # the key ids' set is a string: refresh fails
        client.set(KeyStoreKeys("gwkeys").ids, "not a set")
    config = make_config(
        tmp_path, f"http://127.0.0.1:{free_port()}", redis_url=url, keys={"type": "redis"}
    )
    gc.collect()
    fds, threads = open_fds(), set(threading.enumerate())

    runner = web.AppRunner(create_app(config, environ=SIGNING_ENV))
    with pytest.raises(KeyStoreError):
        await runner.setup()

    gc.collect()
    assert other_clients(url) == 0
    assert set(threading.enumerate()) <= threads
    assert open_fds() <= fds


async def test_the_public_port_accepts_before_the_admin_listener_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe that finds /healthz or /readyz answering must find the public port bound:
    the admin listener started first once let a rollout (and the test stacks) connect to
    a public port not bound yet (connection refused)."""
    public_port, admin_port = free_port(), free_port()
    config = make_config(
        tmp_path,
        "http://127.0.0.1:9",
        server={"host": "127.0.0.1", "port": public_port, "drain_seconds": 0},
        admin={"enabled": True, "host": "127.0.0.1", "port": admin_port},
    )
    seen: list[bool] = []
    start = AdminThread.start

    def probing_start(self: AdminThread) -> None:
        with socket.socket() as probe:
            seen.append(probe.connect_ex(("127.0.0.1", public_port)) == 0)
        start(self)
        os.kill(os.getpid(), signal.SIGTERM)  # stop once started

    monkeypatch.setattr(AdminThread, "start", probing_start)
    await asyncio.wait_for(server_module.serve(config, SIGNING_ENV), 30)
    assert seen == [True]
