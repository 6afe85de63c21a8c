"""`make run`: the reference backend and the gateway together; Ctrl-C stops both."""

from __future__ import annotations

import os
import signal
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
    backend = subprocess.Popen([str(BIN / "chat-backend"), "--port", "8081"], cwd=ROOT)
    procs = [backend]
    try:
        wait_for("http://127.0.0.1:8081/healthz", backend, "chat-backend")
        gateway = subprocess.Popen([str(BIN / "gateway"), "serve", "--config", config], cwd=ROOT)
        procs.append(gateway)
        print(
            "run_local: gateway on http://127.0.0.1:8080 (admin: metrics, health on "
            "http://127.0.0.1:9090), reference backend on http://127.0.0.1:8081. "
            "Ctrl-C stops both.\n"
            "run_local: the chat widget demo needs a key that allows the demo page's origin:\n"
            "    .venv/bin/gateway keys create --model demo --origin http://127.0.0.1:8081\n"
            "  then open http://127.0.0.1:8081/demo?key=<that key> in a browser.",
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
