"""What the run needs from the system (installed on demand) and what the machine is."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata

#: Debian packages tried, in order, for each tool
PACKAGES = {"wrk": ["wrk"], "nginx": ["nginx-light", "nginx"]}


def ensure_tools(install: bool, say: object = print) -> None:
    """Install wrk and nginx with apt-get when missing (root only), else say what the run
    will use instead."""
    missing = [tool for tool in PACKAGES if shutil.which(tool) is None]
    if not missing:
        return
    can = install and os.geteuid() == 0 and shutil.which("apt-get") is not None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    updated = False
    for tool in missing:
        if can:
            for package in PACKAGES[tool]:
                cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
                if (
                    subprocess.run(cmd, env=env, capture_output=True).returncode != 0
                    and not updated
                ):
                    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
                    updated = True
                    subprocess.run(cmd, env=env, capture_output=True)
                if shutil.which(tool):
                    say(f"installed {package} (apt-get)")  # type: ignore[operator]
                    break
        if shutil.which(tool) is None:
            fallback = "the Python load generator" if tool == "wrk" else "an aiohttp upstream"
            say(f"{tool} is not installed and could not be installed: using {fallback}")  # type: ignore[operator]


def cpus() -> tuple[int | None, int | None]:
    """(proxy CPU, load CPU): the first two CPUs this process may use, else no pinning."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "n/a"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            kib = int(re.findall(r"MemTotal:\s+(\d+)", f.read())[0])
        return f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, IndexError):
        return "?"


def describe(extra: dict[str, str]) -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "n/a"

    return {
        "CPU": f"{_cpu_model()}, {os.cpu_count()} CPUs",
        "memory": _memory_gib(),
        "system": f"{platform.system()} {platform.release()}",
        "Python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "runtime": (
            f"aiohttp {version('aiohttp')}, uvloop {version('uvloop')}, "
            f"redis-py {version('redis')}, hiredis {version('hiredis')}"
        ),
        "Redis": _first_line(["redis-server", "--version"]),
        "nginx": _first_line(["nginx", "-v"]) if shutil.which("nginx") else "not installed",
        **extra,
    }
