"""The real programs: `gateway keys ...`, `gateway serve` and `chat-backend` as processes."""

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.harness import SIGNING_ENV
from tests.support.processes import BIN, free_port, run_cli, running
from tests.support.stack import write_config

pytestmark = pytest.mark.slow  # gateway processes

TOKEN = "/v1/chat/conversation/public/message/token/{model}"
SEND = "/v1/chat/conversation/public/message"
MESSAGES = "/v1/chat/conversation/public/messages/{token}"


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``check()`` held; fails after ``timeout``. Polls gently: each refused
    key counts towards the default penalty box (20 failures a minute)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.3)
    raise AssertionError(f"not true within {timeout}s")


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    created = run_cli(
        "keys", "create", "--model", "demo", "--label", "shop", "--json", "--config", str(config)
    )
    assert created.returncode == 0, created.stderr
    out = json.loads(created.stdout)
    assert set(out) == {"key", "key_id"} and out["key"].startswith("pak_")

    listed = run_cli("keys", "list", "--json", "--config", str(config))
    rows = json.loads(listed.stdout)
    assert [(r["key_id"], r["active"], r["label"]) for r in rows] == [(out["key_id"], True, "shop")]
    assert "hash" not in listed.stdout and out["key"] not in listed.stdout
    table = run_cli("keys", "list", "--config", str(config)).stdout
    assert out["key_id"] in table and "active" in table

    revoked = run_cli("keys", "revoke", out["key_id"], "--config", str(config))
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    rows = json.loads(run_cli("keys", "list", "--json", "--config", str(config)).stdout)
    assert rows[0]["active"] is False and rows[0]["revoked_at"]
    stored = (tmp_path / "keys.yaml").read_text()
    assert out["key"] not in stored and "$argon2id$" in stored


def test_plain_create_prints_only_the_key_on_stdout(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_cli("keys", "create", "--model", "demo", "--config", str(config))
    assert result.returncode == 0
    assert result.stdout.strip().startswith("pak_") and len(result.stdout.split()) == 1
    assert "not shown again" in result.stderr


def test_a_key_can_require_proof_of_possession(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    args = ("keys", "create", "--model", "demo", "--require-proof", "--config", str(config))
    created = run_cli(*args)
    assert created.returncode == 0, created.stderr
    assert "DPoP proof" in created.stderr
    rows = json.loads(run_cli("keys", "list", "--json", "--config", str(config)).stdout)
    assert [r["require_proof"] for r in rows] == [True]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--model", "gpt-9"], "unknown model 'gpt-9'"),
        (["keys", "create", "--model", "demo", "--origin", "example.com"], "expected scheme://"),
        (["keys", "revoke", "AAAAAAAAAAAA"], "no key with id AAAAAAAAAAAA"),
        (["keys", "revoke", "nope"], "is not a key id"),
    ],
)
def test_cli_refusals_are_clear(tmp_path: Path, args: list[str], message: str) -> None:
    config = write_config(tmp_path)
    result = run_cli(*args, "--config", str(config))
    assert result.returncode == 2
    assert message in result.stderr


def test_invalid_config_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models: {demo: {}}\nupstream:\n  timeouts:\n    read: soon\n")
    for args in (["serve"], ["keys", "list"]):
        result = run_cli(*args, "--config", str(path))
        assert result.returncode == 2
        assert f"{path}:4: upstream.timeouts.read: Input should be a valid number" in result.stderr


def test_config_from_environment_variable(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_cli("keys", "list", "--json", env={"GATEWAY_CONFIG": str(config)})
    assert result.returncode == 0 and json.loads(result.stdout) == []


def test_redis_store_refuses_to_start_without_signing_keys(tmp_path: Path) -> None:
    config = write_config(tmp_path, store={"type": "redis", "url": "redis://127.0.0.1:1/0"})
    env = {"GATEWAY_SIGNING_KEYS": "", "GATEWAY_SIGNING_KEYS_FILE": ""}
    result = run_cli("serve", "--config", str(config), env=env, timeout=30)
    assert result.returncode == 2
    assert "no token signing keys" in result.stderr and "GATEWAY_SIGNING_KEYS" in result.stderr


@pytest.mark.parametrize("stores", ["memory+file", "redis+redis"])
def test_serve_end_to_end(tmp_path: Path, stores: str, request: pytest.FixtureRequest) -> None:
    """The README's path: a key from the CLI, a token, plain and streamed messages, the
    history; then a revocation from the CLI reaches the running gateway."""
    backend_port, gateway_port = free_port(), free_port()
    changes: dict[str, Any] = {
        "server": {"port": gateway_port},
        "upstream": {"url": f"http://127.0.0.1:{backend_port}"},
    }
    env: dict[str, str] = {}
    if stores == "redis+redis":
        url = request.getfixturevalue("redis_url")
        changes["store"] = {"type": "redis", "url": url}
        changes["keys"] = {"type": "redis", "redis_url": url}
        env = dict(SIGNING_ENV)
    config = write_config(tmp_path, **changes)
    base = f"http://127.0.0.1:{gateway_port}"
    backend_argv = [str(BIN / "chat-backend"), "--port", str(backend_port), "--word-delay", "0.01"]
    with (
        running(backend_argv, f"http://127.0.0.1:{backend_port}/healthz"),
        running([str(BIN / "gateway"), "serve", "--config", str(config)], base + "/", env=env),
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        created = run_cli(
            "keys", "create", "--model", "demo", "--json", "--config", str(config), env=env
        )
        key = json.loads(created.stdout)["key"]
        auth = {"Authorization": f"Bearer {key}"}

        def token_ok() -> bool:
            return client.get(TOKEN.format(model="demo"), headers=auth).status_code == 200

        assert eventually(token_ok) < 5
        token = client.get(TOKEN.format(model="demo"), headers=auth).json()["token"]

        plain = client.post(SEND, json={"client_token": token, "message": "hello"})
        assert plain.status_code == 200
        assert plain.json()["message"]["content"] == "You said: hello"

        with client.stream(
            "POST", SEND, json={"client_token": token, "message": "stream it", "stream": True}
        ) as streamed:
            assert streamed.headers["content-type"].startswith("text/event-stream")
            body = "".join(streamed.iter_text())
        assert "event: done" in body

        history = client.get(MESSAGES.format(token=token)).json()["messages"]
        assert [m["content"] for m in history] == [
            "hello",
            "You said: hello",
            "stream it",
            "You said: stream it",
        ]

        key_id = json.loads(created.stdout)["key_id"]
        assert run_cli("keys", "revoke", key_id, "--config", str(config), env=env).returncode == 0

        def refused() -> bool:
            return client.get(TOKEN.format(model="demo"), headers=auth).status_code == 404

        assert eventually(refused) < 5
