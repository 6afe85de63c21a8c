"""`make run` (scripts/run_local.py) as a real process: ports from the environment, and a
port already in use named before anything starts."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.harness import SIGNING_ENV
from tests.support.processes import free_port, run_cli
from tests.support.stack import write_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "run_local.py"
TOKEN = "/v1/chat/conversation/public/message/token/demo"
SEND = "/v1/chat/conversation/public/message"


def environment(tmp_path: Path, **ports: int | str) -> dict[str, str]:
    config = write_config(tmp_path, admin={"enabled": True, "host": "127.0.0.1"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY__")}
    return {
        **env,
        **SIGNING_ENV,
        "GATEWAY_CONFIG": str(config),
        **{k: str(v) for k, v in ports.items()},
    }


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_busy_port_is_named_before_anything_starts(tmp_path: Path, held_port: int) -> None:
    gateway, admin = free_port(), free_port()
    env = environment(tmp_path, GATEWAY_PORT=gateway, ADMIN_PORT=admin, BACKEND_PORT=held_port)
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert (
        f"port {held_port} (the reference backend, BACKEND_PORT) is already in use" in result.stderr
    )
    assert f"BACKEND_PORT={held_port + 10000} make run" in result.stderr
    assert "chat-backend:" not in result.stderr  # nothing was started


def test_a_port_that_is_not_a_number_is_named(tmp_path: Path) -> None:
    env = environment(tmp_path, GATEWAY_PORT="eighty")
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "GATEWAY_PORT='eighty' is not a port number" in result.stderr


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_it_serves_on_the_ports_the_environment_chose(tmp_path: Path) -> None:
    ports = {"GATEWAY_PORT": free_port(), "ADMIN_PORT": free_port(), "BACKEND_PORT": free_port()}
    env = environment(tmp_path, **ports)
    created = run_cli("keys", "create", "--model", "demo", "--config", env["GATEWAY_CONFIG"])
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT)],
            env=environment(tmp_path, **ports),
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while "Ctrl-C stops both" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        assert f"gateway on http://127.0.0.1:{ports['GATEWAY_PORT']}" in text
        assert f"--origin http://127.0.0.1:{ports['BACKEND_PORT']}" in text
        assert answers(f"http://127.0.0.1:{ports['ADMIN_PORT']}/healthz")
        assert answers(f"http://127.0.0.1:{ports['BACKEND_PORT']}/healthz")
        # the demo page points at the gateway, and the gateway forwards to the backend
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['BACKEND_PORT']}/demo") as resp:
            assert f"http://127.0.0.1:{ports['GATEWAY_PORT']}" in resp.read().decode()
        public = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
        with httpx.Client(base_url=public, timeout=10) as http:
            got = http.get(TOKEN, headers={"Authorization": f"Bearer {key}"})
            assert got.status_code == 200, got.text
            sent = http.post(SEND, json={"client_token": got.json()["token"], "message": "hi"})
            assert sent.status_code == 200, sent.text
            assert sent.json()["message"]["content"] == "You said: hi"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
