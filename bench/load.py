"""Driving load: wrk (with ``wrk/requests.lua``) or the Python fallback, on the load CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.processes import pinned

LUA = Path(__file__).with_name("wrk") / "requests.lua"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: str = ""
    headers: tuple[str, ...] = ()

    def line(self) -> str:
        for part in (self.method, self.path, self.body, *self.headers):
            if "\t" in part or "\n" in part:
                raise ValueError("requests must not contain tabs or newlines")
        return "\t".join((self.method, self.path, self.body, *self.headers))


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    errors: int
    non_2xx: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx


@dataclass(frozen=True)
class LoadGenerator:
    kind: str  # "wrk" or "python"
    cpu: int | None
    connections: int

    @classmethod
    def choose(cls, prefer_wrk: bool, cpu: int | None, connections: int) -> LoadGenerator:
        kind = "wrk" if prefer_wrk and shutil.which("wrk") else "python"
        return cls(kind, cpu, connections)

    def describe(self) -> str:
        if self.kind == "wrk":
            version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
            name = version.split(" [")[0].strip() or "wrk"
            return f"{name}, 1 thread, {self.connections} connections"
        return f"bench.pyload (Python, uvloop), {self.connections} connections"

    def run(self, port: int, requests: list[Request], seconds: int, work: Path) -> LoadResult:
        data = work / "requests.txt"
        data.write_text("\n".join(r.line() for r in requests) + "\n")
        if self.kind == "wrk":
            argv = [
                "wrk", "-t1", f"-c{self.connections}", f"-d{seconds:g}s", "--timeout", "10s",
                "-s", str(LUA), f"http://127.0.0.1:{port}", "--", str(data),
            ]  # fmt: skip
        else:
            argv = [
                sys.executable, "-m", "bench.pyload",
                str(port), str(data), str(self.connections), str(seconds),
            ]  # fmt: skip
        done = subprocess.run(
            pinned(argv, self.cpu), capture_output=True, text=True, timeout=seconds + 60
        )
        for line in done.stdout.splitlines():
            if line.startswith("BENCH_JSON "):
                raw = json.loads(line.removeprefix("BENCH_JSON "))
                break
        else:
            raise RuntimeError(f"{self.kind} gave no summary:\n{done.stdout}\n{done.stderr}")
        errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
        return LoadResult(
            requests=raw["requests"],
            seconds=raw["duration_us"] / 1e6,
            errors=errors,
            non_2xx=raw["status"],
            p50_ms=raw["p50_us"] / 1000,
            p99_ms=raw["p99_us"] / 1000,
        )
