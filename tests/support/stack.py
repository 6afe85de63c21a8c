"""A whole installation as processes: the reference backend and `gateway serve` with its
public and admin listeners, configured from the embedded default config.yaml."""

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.harness import FAST_ARGON2, SIGNING_ENV
from tests.support.processes import BIN, free_port, run_cli, running

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "/v1/chat/conversation/public/message/token/demo"
SEND = "/v1/chat/conversation/public/message"


def write_config(tmp_path: Path, **changes: Any) -> Path:
    """The embedded default config.yaml with its ports and paths moved into the test's room,
    the admin listener off and the shipped policies; ``changes`` update whole sections."""
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    data["keys"]["path"] = str(tmp_path / "keys.yaml")
    data["keys"]["argon2"] = FAST_ARGON2
    data["admin"] = {"enabled": False}
    data["policies"]["path"] = str(ROOT / "policies")
    for section, values in changes.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Stack:
    """A reference backend and a gateway (public and admin listeners) as processes."""

    def __init__(self, proc: Any, backend: Any, config: Path, public: str, admin: str) -> None:
        self.proc = proc
        self.backend = backend
        self.config = config
        self.public = public
        self.admin = admin

    def log(self) -> str:
        """Everything the gateway wrote, stdout and stderr."""
        return Path(self.proc.log_path).read_text()

    def create_key(self) -> tuple[str, str]:
        created = run_cli(
            "keys", "create", "--model", "demo", "--json", "--config", str(self.config)
        )
        assert created.returncode == 0, created.stderr
        out = json.loads(created.stdout)
        return str(out["key"]), str(out["key_id"])

    def token(self, key: str | None = None) -> tuple[str, str]:
        """A key (new unless given) and a client token issued with it."""
        key = key or self.create_key()[0]
        deadline = time.monotonic() + 5
        with httpx.Client(base_url=self.public, timeout=5) as client:
            while time.monotonic() < deadline:  # a new key reaches the gateway within seconds
                resp = client.get(TOKEN, headers={"Authorization": f"Bearer {key}"})
                if resp.status_code == 200:
                    return key, str(resp.json()["token"])
                time.sleep(0.25)  # gently: refused keys count towards the penalty box
        raise AssertionError("the key never reached the gateway")


@contextmanager
def stack(
    tmp_path: Path,
    word_delay: float = 0.01,
    *,
    env: dict[str, str] | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
    upstream_userinfo: str = "",
    **server: Any,
) -> Iterator[Stack]:
    """``server`` fields (``drain_seconds=...``) and whole ``sections`` override the
    embedded default configuration; ``upstream_userinfo`` (``user:password@``) goes
    into the upstream URL."""
    backend_port, public_port, admin_port = free_port(), free_port(), free_port()
    sections = dict(sections or {})
    config = write_config(
        tmp_path,
        server={"port": public_port, **server},
        admin={"enabled": True, "port": admin_port, **sections.pop("admin", {})},
        upstream={"url": f"http://{upstream_userinfo}127.0.0.1:{backend_port}"},
        **sections,
    )
    backend = [
        str(BIN / "chat-backend"),
        "--port",
        str(backend_port),
        "--word-delay",
        str(word_delay),
    ]
    admin = f"http://127.0.0.1:{admin_port}"
    with (
        running(backend, f"http://127.0.0.1:{backend_port}/healthz") as backend_proc,
        running(
            [str(BIN / "gateway"), "serve", "--config", str(config)],
            admin + "/healthz",
            env={**SIGNING_ENV, **(env or {})},
        ) as proc,
    ):
        yield Stack(proc, backend_proc, config, f"http://127.0.0.1:{public_port}", admin)
