"""What the connection guard costs per request: aiohttp's own server against the
gateway's listener, on one loopback connection, in one process (uvloop).

``python -m bench.listener_overhead`` serves a handler that answers at once through
``web.AppRunner`` and through :class:`~gateway.web.listener.ListenerRunner` (default
``server`` settings), sends rounds of ``--count`` keep-alive requests one after the
other over a raw socket to each in turn, and reports the lowest of ``--rounds`` rounds
in microseconds of process CPU time per request (client and server share the process,
so the difference between the two is the guard's cost; CPU time rather than wall time,
so other work on the machine skews it less). Then it times ``data_received`` alone, the
step the guard wraps: one whole request parsed off the wire into the connection's queue
(a transport that takes writes and drops them, no handler run), lowest of rounds taken in
turn. A few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvloop
from aiohttp import web

from gateway.config import ServerSettings
from gateway.observability.metrics import Metrics
from gateway.web.listener import Listener, ListenerRunner, ListenerServer

REQUEST = (
    b"POST /echo HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    b"User-Agent: bench/1.0\r\nContent-Length: 60\r\n\r\n"
    + b'{"client_token": "t", "message": "hello there", "pad": "xx"}'
)


def app() -> web.Application:
    answer = b'{"answer": "hello"}'

    async def echo(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/json")

    application = web.Application()
    application.router.add_post("/echo", echo)
    return application


async def serve(runner: web.AppRunner) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])


async def one_round(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int
) -> float:
    started = time.process_time()
    for _ in range(count):
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
        await reader.readexactly(length)
    return time.process_time() - started


class NullTransport(asyncio.Transport):
    """Enough of a transport for a connection to parse requests into its queue."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def write(self, data: Any) -> None:
        return None

    def close(self) -> None:
        return None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


async def parse_only(rounds: int, count: int = 5000) -> dict[str, float]:
    """Microseconds per ``data_received`` of one whole request, by server."""

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    listener = Listener.public(ServerSettings(), Metrics())
    servers = {
        "aiohttp RequestHandler": web.Server(answer, access_log=None),
        "gateway GuardedConnection": ListenerServer(answer, listener=listener, access_log=None),
    }
    connections = {}
    for name, server in servers.items():
        connection = server()
        connection.connection_made(NullTransport())
        connections[name] = connection
    best = dict.fromkeys(servers, float("inf"))
    for _ in range(rounds * 2):
        for name, connection in connections.items():
            queue, parser = connection._messages, connection._parser
            assert parser is not None
            started = time.perf_counter()
            for _ in range(count):
                connection.data_received(REQUEST)
                queue.clear()
                parser.message_consumed()
            best[name] = min(best[name], (time.perf_counter() - started) / count * 1e6)
    for connection in connections.values():
        connection.force_close()
    return best


async def main(count: int, rounds: int) -> None:
    listener = Listener.public(ServerSettings(), Metrics())
    runners = {
        "aiohttp AppRunner": web.AppRunner(app(), access_log=None),
        "gateway ListenerRunner": ListenerRunner(app(), listener, access_log=None),
    }
    clients = {name: await serve(runner) for name, runner in runners.items()}
    best = dict.fromkeys(runners, float("inf"))
    try:
        for round_ in range(rounds + 1):  # interleaved; the first round warms up
            for name, (reader, writer) in clients.items():
                elapsed = await one_round(reader, writer, count)
                if round_:
                    best[name] = min(best[name], elapsed / count * 1e6)
    finally:
        for _, writer in clients.values():
            writer.close()
        for runner in runners.values():
            await runner.cleanup()
    plain, guarded = best.values()
    print("loopback round trips, CPU per request:")
    print(f"  aiohttp AppRunner          {plain:8.2f} us")
    print(f"  gateway ListenerRunner     {guarded:8.2f} us ({guarded - plain:+.2f})")
    plain, guarded = (await parse_only(rounds)).values()
    print("data_received of one whole request:")
    print(f"  aiohttp RequestHandler     {plain:8.2f} us")
    print(f"  gateway GuardedConnection  {guarded:8.2f} us ({guarded - plain:+.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    uvloop.run(main(args.count, args.rounds))
