"""Shared fixtures: real Redis processes, the reference backend and gateways on sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor

from chat_backend.app import create_app as create_backend
from chat_backend.models import EchoModel
from tests.support.harness import NO_LIMITS, Gateway, make_config, start_gateway, stop_gateway

# one Redis for the session (flushed before each test), started by the tests themselves
redis_server = factories.redis_proc(port=None)


@pytest.fixture
def redis_url(redis_server: RedisExecutor) -> Iterator[str]:
    url = f"redis://{redis_server.host}:{redis_server.port}/0"
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    return url


@pytest.fixture
async def backend() -> AsyncIterator[TestServer]:
    """The reference backend (echo model, 10 ms between words) on a real socket."""
    server = TestServer(create_backend(EchoModel(word_delay=0.01)), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
def backend_url(backend: TestServer) -> str:
    return str(backend.make_url("")).rstrip("/")


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def gateway_factory(
    tmp_path: Path, backend_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[GatewayFactory]:
    """``await gateway_factory(store="redis", policies="...", server={...})`` starts a
    configured gateway (each in its own directory); unprotected policy sets are allowed
    unless ``allow_unprotected=False``; ``prepare(app)`` runs before it starts."""
    started: list[Gateway] = []

    async def factory(
        *,
        store: str = "memory",
        environ: dict[str, str] | None = None,
        policies: str = NO_LIMITS,
        allow_unprotected: bool = True,
        prepare: Callable[[web.Application], None] | None = None,
        **sections: Any,
    ) -> Gateway:
        redis_url = request.getfixturevalue("redis_url") if store == "redis" else None
        sections.setdefault("upstream", {})
        sections["upstream"] = {"url": backend_url, **sections["upstream"]}
        room = tmp_path / f"gw{len(started)}"
        room.mkdir()
        # replicas of one deployment share the key store; each has its own policy files
        sections["keys"] = {"path": str(tmp_path / "keys.yaml"), **sections.get("keys", {})}
        config = make_config(
            room,
            backend_url,
            redis_url=redis_url,
            policies=policies,
            allow_unprotected=allow_unprotected,
            **sections,
        )
        gateway = await start_gateway(config, environ, prepare=prepare)
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        await stop_gateway(gateway)


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory, store_kind: str) -> Gateway:
    """A gateway in front of the reference backend, once per store kind."""
    return await gateway_factory(store=store_kind)


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Any, str]]:
    """A scripted upstream on a real socket: ``script, url = scripted``."""
    from tests.support.upstreams import Script, scripted_app

    script = Script()
    server = TestServer(scripted_app(script), host="127.0.0.1")
    await server.start_server()
    yield script, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture(scope="session")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-master Redis Cluster started from redis-server for this test session."""
    from tests.support.redis_servers import redis_cluster

    with redis_cluster(tmp_path_factory.mktemp("cluster")) as ports:
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)


@pytest.fixture
def backend_process() -> Iterator[str]:
    """The reference backend as its own process (for tests whose gateways are processes)."""
    from tests.support.processes import BIN, free_port, running

    port = free_port()
    argv = [str(BIN / "chat-backend"), "--port", str(port), "--word-delay", "0"]
    with running(argv, f"http://127.0.0.1:{port}/healthz"):
        yield f"http://127.0.0.1:{port}"
