"""`gateway policies check|explain` and SIGHUP reload on a real process."""

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_cli_and_processes import TOKEN
from tests.support.harness import SIGNING_ENV
from tests.support.processes import BIN, free_port, run_cli, running
from tests.support.stack import ROOT, write_config

pytestmark = pytest.mark.slow  # gateway processes

SEND = "/v1/chat/conversation/public/message"


def test_check_prints_the_effective_policies() -> None:
    result = run_cli("policies", "check", "--config", str(ROOT / "config.yaml"))
    assert result.returncode == 0, result.stderr
    assert "8 policies from" in result.stdout
    assert "refresh-per-token" in result.stdout and "6/1m burst 3" in result.stdout
    assert "send-per-token" in result.stdout and "10/1m burst 5" in result.stdout
    assert "penalty box: 20 x" in result.stdout
    assert result.stderr == ""


def test_check_refuses_an_invalid_file_with_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "policies:\n  - name: p\n    match: {routes: [send]}\n    partition: [token]\n"
        "    limit: {rate: 1, per: soon, burst: 1}\n"
    )
    result = run_cli("policies", "check", str(bad))
    assert result.returncode == 1
    assert f"{bad}:5: policies[0].limit.per: Value error, expected a duration" in result.stderr


def test_check_strict_fails_on_warnings(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    rule = "{match: {routes: [send]}, partition: [token], limit: {rate: 1, per: 1s, burst: 1}}"
    token = (
        "{match: {routes: [token]}, partition: [client_ip], limit: {rate: 1, per: 1s, burst: 1}}"
    )
    path.write_text(
        "penalty_box: {threshold: 20}\n"
        f"policies:\n  - {{name: a, {rule[1:]}\n  - {{name: b, {rule[1:]}\n"
        f"  - {{name: t, {token[1:]}\n"
    )
    relaxed = run_cli("policies", "check", str(path))
    assert relaxed.returncode == 0
    assert "warning:" in relaxed.stderr and "same requests by the same partition" in relaxed.stderr
    assert run_cli("policies", "check", str(path), "--strict").returncode == 1


def test_explain_shows_live_state_from_redis(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        server={"port": port},
        store={"type": "redis", "url": redis_url},
        upstream={"url": "http://127.0.0.1:9"},  # never called: token route only
    )
    base = f"http://127.0.0.1:{port}"
    with (
        running(
            [str(BIN / "gateway"), "serve", "--config", str(config)], base + "/", env=SIGNING_ENV
        ),
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        import json

        created = run_cli("keys", "create", "--model", "demo", "--json", "--config", str(config))
        key, key_id = json.loads(created.stdout)["key"], json.loads(created.stdout)["key_id"]
        time.sleep(1.5)
        for _ in range(3):
            assert (
                client.get(
                    TOKEN.format(model="demo"), headers={"Authorization": f"Bearer {key}"}
                ).status_code
                == 200
            )
        result = run_cli(
            "policies",
            "explain",
            "--route",
            "token",
            "--ip",
            "127.0.0.1",
            "--key-id",
            key_id,
            "--model",
            "demo",
            "--config",
            str(config),
            env=SIGNING_ENV,
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    per_ip = next(line for line in lines if line.startswith("token-per-ip"))
    assert "key=token-per-ip:127.0.0.1" in per_ip
    assert "remaining 6, would admit" in per_ip  # burst 10, 3 used, this one counted
    assert "penalty box (127.0.0.1): not boxed" in result.stdout
    assert "binding: mode proof_or_fingerprint (proof for keys with origins);" in result.stdout


@pytest.mark.parametrize("watch", [False])
def test_sighup_reloads_policies(tmp_path: Path, backend_process: str, watch: bool) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    limit = (
        "policies:\n  - {{name: send-per-token, match: {{routes: [send]}}, "
        "partition: [token], limit: {{rate: 1, per: 1m, burst: {burst}}}}}\n"
    )
    (policies / "p.yaml").write_text(limit.format(burst=1))
    port = free_port()
    config = write_config(
        tmp_path,
        server={"port": port},
        upstream={"url": backend_process},
        policies={"path": str(policies), "watch": watch, "allow_unprotected": True},
    )
    base = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "gateway"), "serve", "--config", str(config)]
    with running(argv, base + "/") as proc, httpx.Client(base_url=base, timeout=10) as client:
        import json

        created = run_cli("keys", "create", "--model", "demo", "--json", "--config", str(config))
        key = json.loads(created.stdout)["key"]
        time.sleep(1.5)

        def token() -> str:
            resp = client.get(
                TOKEN.format(model="demo"), headers={"Authorization": f"Bearer {key}"}
            )
            return str(resp.json()["token"])

        def send(tok: str) -> Any:
            return client.post(SEND, json={"client_token": tok, "message": "hi"})

        first = token()
        assert send(first).headers["RateLimit-Policy"] == '"send-per-token";q=1;w=60'
        assert send(first).status_code == 429
        (policies / "p.yaml").write_text(limit.format(burst=3))
        time.sleep(0.3)
        second = token()
        assert [send(second).status_code for _ in range(2)] == [200, 429]  # not watched
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        third = token()
        assert [send(third).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_check_warns_what_sharding_changes(tmp_path: Path) -> None:
    """The shipped policies and config, with ``store.sharding: key`` set by the
    environment: a warning per policy whose meaning changes, none without it."""
    config = str(ROOT / "config.yaml")
    plain = run_cli("policies", "check", "--config", config)
    assert "store.sharding" not in plain.stderr
    env = {"GATEWAY__STORE__TYPE": "redis", "GATEWAY__STORE__SHARDING": "key"}
    sharded = run_cli("policies", "check", "--config", config, env=env)
    assert sharded.returncode == 0, sharded.stderr
    assert "is counted per agent key on routes" in sharded.stderr
    assert "penalty_box under store.sharding: key" in sharded.stderr


def test_explain_names_a_key_s_binding_mode(tmp_path: Path) -> None:
    import json

    config = write_config(tmp_path)
    modes = {}
    for extra in ((), ("--origin", "https://shop.example"), ("--require-proof",)):
        created = run_cli(
            "keys", "create", "--model", "demo", *extra, "--json", "--config", str(config)
        )
        key_id = json.loads(created.stdout)["key_id"]
        shown = run_cli(
            "policies",
            "explain",
            "--route",
            "send",
            "--ip",
            "203.0.113.9",
            "--key-id",
            key_id,
            "--config",
            str(config),
        )
        assert shown.returncode == 0, shown.stderr
        (line,) = [x for x in shown.stdout.splitlines() if x.startswith(f"binding of key {key_id}")]
        modes[extra[:1]] = line.split(": ", 1)[1]
    assert modes == {
        (): "mode proof_or_fingerprint (a key without origins)",
        ("--origin",): "mode proof (a key with origins)",  # the shipped browser_mode
        ("--require-proof",): "mode proof (the key requires proof)",
    }
