"""`gateway health`, the image's HEALTHCHECK, against a real `gateway serve`: it finds the
admin listener where the configuration (file and environment) puts it."""

from pathlib import Path

import pytest

from gateway.config import AdminSettings
from tests.support.harness import SIGNING_ENV
from tests.support.processes import BIN, free_port, run_cli, running
from tests.support.stack import stack, write_config

pytestmark = pytest.mark.slow  # gateway processes


def test_health_asks_the_configured_admin_port(tmp_path: Path) -> None:
    with stack(tmp_path) as running_stack:
        config = str(running_stack.config)
        assert running_stack.admin != "http://127.0.0.1:9090"  # not the default port
        healthy = run_cli("health", "--config", config)
        assert healthy.returncode == 0, healthy.stderr
        ready = run_cli("health", "--ready", "--config", config)
        assert ready.returncode == 0, ready.stderr
    after = run_cli("health", "--config", config)
    assert after.returncode == 1
    assert after.stderr.startswith("gateway: unhealthy: http://127.0.0.1:")
    assert "/healthz" in after.stderr


def test_health_follows_an_environment_override(tmp_path: Path, backend_process: str) -> None:
    public, in_file, overridden = free_port(), free_port(), free_port()
    config = write_config(
        tmp_path,
        server={"port": public},
        admin={"enabled": True, "port": in_file},
        upstream={"url": backend_process},
    )
    env = {**SIGNING_ENV, "GATEWAY__ADMIN__PORT": str(overridden)}
    argv = [str(BIN / "gateway"), "serve", "--config", str(config)]
    with running(argv, f"http://127.0.0.1:{overridden}/healthz", env=env):
        assert run_cli("health", "--config", str(config), env=env).returncode == 0
        # without the override, the file's port: nothing listens there
        unset = run_cli("health", "--config", str(config))
        assert unset.returncode == 1
        assert f"http://127.0.0.1:{in_file}/healthz" in unset.stderr


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ("models: {demo: {}}\nadmin: {enabled: false}\n", "the admin listener is disabled"),
        ("models: {demo: {}}\nadmin: {port: lots}\n", "admin.port: Input should be a valid"),
    ],
)
def test_health_fails_with_1_and_says_why(tmp_path: Path, config_text: str, message: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    result = run_cli("health", "--config", str(config))
    assert result.returncode == 1  # never 2: Docker reserves it
    assert message in result.stderr


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:9191/healthz"),
        ("0.0.0.0", "http://127.0.0.1:9191/healthz"),
        ("::", "http://[::1]:9191/healthz"),
        ("10.1.2.3", "http://10.1.2.3:9191/healthz"),
        ("fd00::7", "http://[fd00::7]:9191/healthz"),
    ],
)
def test_a_listener_on_every_address_is_asked_on_loopback(host: str, url: str) -> None:
    from gateway.observability.health_probe import admin_url

    assert admin_url(AdminSettings(host=host, port=9191), "/healthz") == url
