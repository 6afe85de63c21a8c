"""Slow and idle clients against a real ``gateway serve``: how many connections they hold.

``python -m bench.slow_clients`` starts the gateway (memory store, loopback only), opens
``--idle`` connections that send nothing and ``--slow`` connections that drip a request
head one byte per second (slowloris), and counts, ``--hold`` seconds later, how many the
gateway still keeps open; every connection is closed by then, the run lasts about
``--hold`` seconds plus the time to open the connections.

Extra ``server`` settings go in as ``--server FIELD=VALUE`` (YAML values); with none the
gateway runs its defaults. To measure another tree (an older one, whose settings lack the
newer fields), put it first on the path: ``PYTHONPATH=<tree> .venv/bin/python -m
bench.slow_clients``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.gateway_setup import Signing, shipped_policies, write_config
from bench.processes import Proc, free_port

GATEWAY = str(Path(sys.executable).with_name("gateway"))
SLOW_HEAD = (
    b"GET /v1/chat/conversation/public/message/token/demo HTTP/1.1\r\nHost: bench\r\n"
    + b"X-Slow: "
    + b"a" * 4000
    + b"\r\n\r\n"
)


@dataclass
class Held:
    """One client connection and what became of it."""

    kind: str
    opened: bool = False
    closed_after: float | None = None
    first_bytes: bytes = b""
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


async def watch(held: Held, reader: asyncio.StreamReader, started: float) -> None:
    """Until the gateway closes the connection."""
    with contextlib.suppress(ConnectionError):
        while True:
            chunk = await reader.read(4096)
            if not held.first_bytes:
                held.first_bytes = chunk[:16]
            if not chunk:
                break
    held.closed_after = time.monotonic() - started


async def drip(writer: asyncio.StreamWriter, held: Held) -> None:
    with contextlib.suppress(ConnectionError):
        for byte in SLOW_HEAD:
            if held.closed_after is not None:
                return
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1.0)


async def hold(port: int, idle: int, slow: int, seconds: float) -> list[Held]:
    started = time.monotonic()
    held: list[Held] = []
    writers: list[asyncio.StreamWriter] = []
    for kind, count in (("idle", idle), ("slowloris", slow)):
        for _ in range(count):
            entry = Held(kind)
            held.append(entry)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            entry.opened = True
            writers.append(writer)
            entry.tasks.append(asyncio.create_task(watch(entry, reader, started)))
            if kind == "slowloris":
                entry.tasks.append(asyncio.create_task(drip(writer, entry)))
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    for entry in held:
        for task in entry.tasks:
            task.cancel()
    for writer in writers:
        writer.close()
    await asyncio.gather(*(t for e in held for t in e.tasks), return_exceptions=True)
    return held


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report(held: list[Held], seconds: float, rss: float) -> str:
    rows = ["| clients | opened | refused at once | closed by the gateway | still open |"]
    rows.append("|---|---:|---:|---:|---:|")
    for kind in ("idle", "slowloris"):
        mine = [h for h in held if h.kind == kind]
        opened = [h for h in mine if h.opened]
        refused = [h for h in opened if h.first_bytes.startswith(b"HTTP/1.1 429")]
        refused += [h for h in opened if h.first_bytes.startswith(b"HTTP/1.1 503")]
        closed = [h for h in opened if h.closed_after is not None and h not in refused]
        still = [h for h in opened if h.closed_after is None]
        when = sorted(h.closed_after for h in closed if h.closed_after is not None)
        closed_text = str(len(closed))
        if when:
            closed_text += f" (after {when[0]:.1f} to {when[-1]:.1f} s)"
        rows.append(
            f"| {len(mine)} {kind} | {len(opened)} | {len(refused)} | {closed_text} | "
            f"{len(still)} |"
        )
    rows.append("")
    rows.append(f"after {seconds:g} s; gateway RSS with the connections open: {rss:.0f} MiB")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--slow", type=int, default=2000)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds")
    parser.add_argument("--server", action="append", default=[], metavar="FIELD=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slow-clients-") as tmp:
        work = Path(tmp)
        port, admin = free_port(), free_port()
        config = write_config(
            work,
            "gateway",
            port=port,
            admin_port=admin,
            upstream="http://127.0.0.1:9",
            keys_path=work / "keys.yaml",
            policies=shipped_policies(work / "policies"),
        )
        data = yaml.safe_load(config.read_text())
        for setting in args.server:
            name, _, value = setting.partition("=")
            data["server"][name] = yaml.safe_load(value)
        config.write_text(yaml.safe_dump(data))
        argv = [GATEWAY, "serve", "--config", str(config)]
        proc = Proc("gateway", argv, work, env=Signing.new().env)
        try:
            proc.wait_http(f"http://127.0.0.1:{admin}/healthz")
            rss: list[float] = []

            async def run() -> list[Held]:
                task = asyncio.create_task(hold(port, args.idle, args.slow, args.hold))
                await asyncio.sleep(args.hold * 0.25)
                rss.append(rss_mib(proc.pid))
                return await task

            held = asyncio.run(run())
            print(f"server settings: {args.server or 'defaults'}")
            print(report(held, args.hold, rss[0] if rss else 0.0))
        finally:
            proc.stop()


if __name__ == "__main__":
    main()
