"""`make run`: the reference backend and the gateway together; Ctrl-C stops both.

The ports come from the environment: ``GATEWAY_PORT`` (public, 8080), ``ADMIN_PORT``
(metrics and health, 9090) and ``BACKEND_PORT`` (the reference backend, 8081), for
example ``GATEWAY_PORT=18080 BACKEND_PORT=18081 make run``. A port already in use is
named before anything starts.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_for(url: str, proc: subprocess.Popen[bytes], name: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"run_local: {name} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"run_local: {name} did not answer on {url} within {timeout:.0f}s")


#: variable, default, what listens there
PORTS = (
    ("GATEWAY_PORT", 8080, "the gateway's public port"),
    ("ADMIN_PORT", 9090, "the gateway's admin port"),
    ("BACKEND_PORT", 8081, "the reference backend"),
)


def chosen_ports(environ: dict[str, str]) -> dict[str, int]:
    """The three ports, from the environment or their defaults; exits naming a variable
    that is not a port number."""
    ports = {}
    for name, default, _what in PORTS:
        raw = environ.get(name, "").strip() or str(default)
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            sys.exit(f"run_local: {name}={raw!r} is not a port number (1-65535)")
        ports[name] = int(raw)
    if len(set(ports.values())) < len(ports):
        sys.exit(f"run_local: the ports must differ: {ports}")
    return ports


def in_use(port: int) -> bool:
    """Whether something already listens on ``port`` on the loopback address (bound as
    the servers bind, with SO_REUSEADDR, so a closing connection does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def refuse_busy_ports(ports: dict[str, int]) -> None:
    busy = [(name, what) for name, _default, what in PORTS if in_use(ports[name])]
    if not busy:
        return
    lines = [
        f"run_local: port {ports[name]} ({what}, {name}) is already in use." for name, what in busy
    ]
    example = " ".join(f"{name}={ports[name] + 10000}" for name, _what in busy)
    lines.append(f"Stop what holds it, or choose other ports, for example: {example} make run")
    sys.exit("\n".join(lines))


def _interrupt(signum: int, frame: object) -> None:
    # once: a second signal (make and the terminal often both send one) must not cut
    # the children's shutdown short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> int:
    # SIGTERM (and SIGINT even when started in the background) stops both children
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    config = os.environ.get("GATEWAY_CONFIG", str(ROOT / "config.yaml"))
    ports = chosen_ports(dict(os.environ))
    refuse_busy_ports(ports)
    gateway_url = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
    backend_url = f"http://127.0.0.1:{ports['BACKEND_PORT']}"
    admin_url = f"http://127.0.0.1:{ports['ADMIN_PORT']}"
    backend_args = ["--port", str(ports["BACKEND_PORT"]), "--demo-gateway", gateway_url]
    backend = subprocess.Popen([str(BIN / "chat-backend"), *backend_args], cwd=ROOT)
    procs = [backend]
    try:
        wait_for(f"{backend_url}/healthz", backend, "chat-backend")
        env = {
            **os.environ,
            "GATEWAY__SERVER__PORT": str(ports["GATEWAY_PORT"]),
            "GATEWAY__ADMIN__PORT": str(ports["ADMIN_PORT"]),
            "GATEWAY__UPSTREAM__URL": backend_url,
        }
        gateway = subprocess.Popen(
            [str(BIN / "gateway"), "serve", "--config", config], cwd=ROOT, env=env
        )
        procs.append(gateway)
        wait_for(f"{admin_url}/healthz", gateway, "gateway")
        print(
            f"run_local: gateway on {gateway_url} (admin: metrics, health on {admin_url}), "
            f"reference backend on {backend_url}. Ctrl-C stops both.\n"
            "run_local: the chat widget demo needs a key that allows the demo page's origin:\n"
            f"    .venv/bin/gateway keys create --model demo --origin {backend_url}\n"
            f"  then open {backend_url}/demo?key=<that key> in a browser.",
            file=sys.stderr,
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.2)
        failed = next(p for p in procs if p.poll() is not None)
        return failed.returncode or 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
