"""What the connection guard costs per request: aiohttp's own server against the
gateway's listener, on one loopback connection, in one process (uvloop).

``python -m bench.listener_overhead`` serves a handler that answers at once through
``web.AppRunner`` and through :class:`~gateway.web.listener.ListenerRunner` (default
``server`` settings), sends rounds of ``--count`` keep-alive requests one after the
other over a raw socket to each in turn, and reports the lowest of ``--rounds`` rounds
in microseconds of process CPU time per request (client and server share the process,
so the difference between the two is the guard's cost; CPU time rather than wall time,
so other work on the machine skews it less). A few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop
from aiohttp import web

from gateway.config import ServerSettings
from gateway.observability.metrics import Metrics
from gateway.web.listener import Listener, ListenerRunner

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
    print(f"aiohttp AppRunner      {plain:8.2f} us/request")
    print(f"gateway ListenerRunner {guarded:8.2f} us/request ({guarded - plain:+.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    uvloop.run(main(args.count, args.rounds))
