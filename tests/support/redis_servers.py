"""Redis servers the tests start themselves: a dedicated one to kill or freeze, and a
cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from pytest_redis.executor import RedisExecutor

from bench.processes import cluster_port, form_cluster
from tests.support.processes import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def dedicated_redis(datadir: Path) -> RedisExecutor:
    """A Redis on its own port that a test may kill and start again (same port)."""
    executor = RedisExecutor(
        executable=REDIS_SERVER,
        databases=1,
        redis_timeout=30,
        loglevel="warning",
        host="127.0.0.1",
        port=free_port(),
        datadir=datadir,
        save="",
    )
    return executor.start()


@contextmanager
def running_redis(datadir: Path) -> Iterator[RedisExecutor]:
    """:func:`dedicated_redis` for the block, stopped after it."""
    datadir.mkdir(parents=True, exist_ok=True)
    executor = dedicated_redis(datadir)
    try:
        yield executor
    finally:
        if executor.running():
            executor.stop()


@contextmanager
def frozen(executor: RedisExecutor) -> Iterator[None]:
    """The server stopped with SIGSTOP for the block: connections stay open and the kernel
    still accepts new ones, but nothing answers (a hung or swapping server); then resumed."""
    assert executor.process is not None
    pid = executor.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@contextmanager
def redis_cluster(datadir: Path, masters: int = 3) -> Iterator[list[int]]:
    """``masters`` Redis servers in cluster mode on 127.0.0.1; yields their ports."""
    ports: list[int] = []
    while len(ports) < masters:
        port = cluster_port()
        if port not in ports:
            ports.append(port)
    procs = []
    try:
        for port in ports:
            node_dir = datadir / str(port)
            node_dir.mkdir(parents=True, exist_ok=True)
            procs.append(
                subprocess.Popen(
                    [
                        REDIS_SERVER,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                        "--logfile",
                        str(node_dir / "redis.log"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in ports:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1) as client:
                        client.ping()
                    break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        form_cluster(ports, REDIS_CLI)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
