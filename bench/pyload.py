"""The bounded Python load generator used when ``wrk`` is not installed.

Keep-alive HTTP/1.1 connections on raw asyncio streams (uvloop), each sending the next
request of the list as soon as the previous answer is read, for a fixed duration; prints
the same JSON summary as ``wrk/requests.lua``. Slower than wrk, so a proxy faster than
this client is under-measured: the output says which generator ran.

``python -m bench.pyload PORT REQUESTS_FILE CONNECTIONS SECONDS``
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from pathlib import Path

import uvloop


def build(line: str, port: int) -> bytes:
    method, path, body, *headers = line.rstrip("\n").split("\t")
    data = body.encode()
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *headers]
    if data:
        head.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


async def read_response(reader: asyncio.StreamReader) -> int:
    """The status code; reads a Content-Length or chunked body entirely."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def worker(
    port: int, requests: itertools.cycle[bytes], until: float, latencies: list[float]
) -> tuple[int, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = bad = 0
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(next(requests))
            try:
                status = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            latencies.append(time.perf_counter() - started)
            if status >= 400:
                bad += 1
    finally:
        writer.close()
    return errors, bad


async def run(port: int, lines: list[str], connections: int, seconds: float) -> dict[str, float]:
    requests = itertools.cycle([build(line, port) for line in lines])
    latencies: list[float] = []
    started = time.perf_counter()
    results = await asyncio.gather(
        *(worker(port, requests, started + seconds, latencies) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> int:
        return int(latencies[min(int(len(latencies) * p / 100), len(latencies) - 1)] * 1e6)

    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "connect": 0,
        "read": sum(r[0] for r in results),
        "write": 0,
        "status": sum(r[1] for r in results),
        "timeout": 0,
        "p50_us": pct(50) if latencies else 0,
        "p99_us": pct(99) if latencies else 0,
        "mean_us": sum(latencies) / len(latencies) * 1e6 if latencies else 0,
    }


def main() -> None:
    port, path, connections, seconds = sys.argv[1:5]
    lines = [line for line in Path(path).read_text().splitlines() if line]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        summary = runner.run(run(int(port), lines, int(connections), float(seconds)))
    print("BENCH_JSON " + json.dumps(summary))


if __name__ == "__main__":
    main()
