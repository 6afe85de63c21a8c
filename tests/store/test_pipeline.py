"""The pipelined Redis connection: ordering, errors, scripts, reconnection."""

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import redis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.store.pipeline import Arg, RedisPipe, pack, pack_slowly


@pytest.fixture
async def pipe(redis_url: str) -> AsyncIterator[RedisPipe]:
    client = RedisPipe.from_url(redis_url, stale_after=0.5)
    yield client
    await client.close()


def test_pack_is_resp() -> None:
    assert pack(["SET", "k", 1, b"v"]) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$1\r\nv\r\n"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["EVALSHA", "a" * 40, 2, "{gw}:pb:203.0.113.7", "{gw}:ts:jti", 1, 0, "", -5, 10**20],
        ["x", 0.1, 1e20, 1 / 3, b"", b"\x00\xff", "é€", ""],
        [True, False, 3],  # hiredis refuses booleans: packed in Python
    ],
)
def test_hiredis_packs_the_same_bytes(args: list[Arg]) -> None:
    assert pack(args) == pack_slowly(args)


async def test_concurrent_commands_get_their_own_replies(pipe: RedisPipe) -> None:
    await pipe.execute("SET", "n", 0)
    replies = await asyncio.gather(*(pipe.execute("INCR", "n") for _ in range(200)))
    assert sorted(replies) == list(range(1, 201))
    assert await pipe.execute("ECHO", "x" * 100_000) == b"x" * 100_000  # split across reads


async def test_error_replies_raise_and_the_connection_stays_usable(pipe: RedisPipe) -> None:
    with pytest.raises(ResponseError):
        await pipe.execute("NOSUCHCOMMAND")
    assert await pipe.execute("PING") == b"PONG"


async def test_evalsha_loads_an_unknown_script_once(pipe: RedisPipe, redis_url: str) -> None:
    script = "return ARGV[1] .. KEYS[1]"
    sha = redis.Redis.from_url(redis_url).script_load(script)
    redis.Redis.from_url(redis_url).script_flush()
    assert await pipe.evalsha(sha, script, ["{t}:k"], ["a"]) == b"a{t}:k"
    assert await pipe.evalsha(sha, script, ["{t}:k"], ["b"]) == b"b{t}:k"


async def test_a_caller_that_gives_up_does_not_shift_the_replies(pipe: RedisPipe) -> None:
    await pipe.execute("PING")  # connected
    slow = asyncio.ensure_future(pipe.execute("EVAL", "redis.call('SET', 'late', 1)", 0))
    await asyncio.sleep(0)  # the command is written
    slow.cancel()
    assert await pipe.execute("ECHO", "mine") == b"mine"
    assert await pipe.execute("GET", "late") == b"1"


async def test_selects_the_database_of_the_url(redis_url: str) -> None:
    pipe = RedisPipe.from_url(redis_url.rsplit("/", 1)[0] + "/3")
    try:
        await pipe.execute("SET", "in-three", 1)
    finally:
        await pipe.close()
    assert redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3").get("in-three") == b"1"
    assert redis.Redis.from_url(redis_url).get("in-three") is None


async def test_a_lost_connection_fails_waiters_then_reconnects(
    pipe: RedisPipe, redis_url: str
) -> None:
    assert await pipe.execute("CLIENT", "SETNAME", "victim") == b"OK"
    redis.Redis.from_url(redis_url).client_kill_filter(skipme=True, _type="normal")

    async def ping_until_refused() -> None:
        for _ in range(50):  # the kill reaches the socket at its own pace
            await pipe.execute("PING")
            await asyncio.sleep(0.01)

    with pytest.raises(RedisConnectionError):
        await ping_until_refused()
    assert await pipe.execute("PING") == b"PONG"


async def test_a_silent_server_is_dropped_after_stale_after() -> None:
    """A server that accepts and never answers: the waiter hangs (its caller's deadline
    ends it), and the next call after ``stale_after`` reconnects instead of queueing."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    pipe = RedisPipe(port=port, stale_after=0.2)
    try:
        first = asyncio.ensure_future(pipe.execute("PING"))
        await asyncio.sleep(0.3)
        assert not first.done()
        second = asyncio.ensure_future(pipe.execute("PING"))
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(first, 2)  # failed when the next call found it stale
        await asyncio.sleep(0.05)
        assert not second.done()  # sent on a new connection (to the same silent server)
        second.cancel()
    finally:
        await pipe.close()
        server.close()


async def test_unreachable_server_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pipe = RedisPipe(port=port, connect_timeout=0.5)
    with pytest.raises(RedisConnectionError):
        await pipe.execute("PING")


def test_only_plain_urls() -> None:
    with pytest.raises(ValueError, match="redis-py"):
        RedisPipe.from_url("rediss://h:1/0")
    assert RedisPipe.from_url("unix:///tmp/r.sock?db=2")._path == "/tmp/r.sock"


def test_on_uvloop_as_the_gateway_runs(redis_url: str) -> None:
    async def scenario() -> list[object]:
        pipe = RedisPipe.from_url(redis_url)
        try:
            return list(await asyncio.gather(*(pipe.execute("ECHO", i) for i in range(50))))
        finally:
            await pipe.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == [str(i).encode() for i in range(50)]
