"""Several `gateway serve` processes sharing one store, as replicas behind a Service."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.harness import FAST_ARGON2, SIGNING_ENV
from tests.support.processes import BIN, free_port, run_cli, running

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "/v1/chat/conversation/public/message/token/{model}"
SEND = "/v1/chat/conversation/public/message"


@dataclass
class Replicas:
    urls: list[str]
    config: Path
    logs: list[Path]

    def log_text(self) -> str:
        return "".join(path.read_text() for path in self.logs)

    def create_key(self) -> str:
        created = run_cli(
            "keys",
            "create",
            "--model",
            "demo",
            "--json",
            "--config",
            str(self.config),
            env=SIGNING_ENV,
        )
        assert created.returncode == 0, created.stderr
        key = str(json.loads(created.stdout)["key"])
        # every replica must know the key before the test starts counting
        with httpx.Client(timeout=5) as client:
            for url in self.urls:
                deadline = time.monotonic() + 10
                while True:
                    resp = client.get(
                        url + TOKEN.format(model="demo"), headers={"Authorization": f"Bearer {key}"}
                    )
                    if resp.status_code == 200:
                        break
                    assert time.monotonic() < deadline, resp.text
                    time.sleep(0.2)
        return key

    def token(self, key: str, replica: int = 0) -> str:
        with httpx.Client(timeout=5) as client:
            resp = client.get(
                self.urls[replica] + TOKEN.format(model="demo"),
                headers={"Authorization": f"Bearer {key}"},
            )
            assert resp.status_code == 200, resp.text
            return str(resp.json()["token"])


def write_replica_config(
    tmp_path: Path,
    *,
    store_url: str,
    upstream: str,
    policies: str,
    store: dict[str, Any],
    keys: dict[str, Any] | None = None,
    tokens: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir(exist_ok=True)
    (policy_dir / "test.yaml").write_text(policies)
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        # three replicas, Redis and the load generator share two cores here: the default
        # 50 ms budget measures this machine's scheduling, not the store
        "store": {"type": "redis", "url": store_url, "timeout_ms": 250, **store},
        "keys": {
            "type": "file",
            "path": str(tmp_path / "keys.yaml"),
            "argon2": FAST_ARGON2,
            "sync_seconds": 0.2,
            **(keys or {}),
        },
        "models": {"demo": {}},
        # each test brings only the policies it measures
        "policies": {"path": str(policy_dir), "allow_unprotected": True},
        "upstream": {"url": upstream},
        "logging": {"level": "warning"},
    }
    if tokens:
        data["tokens"] = tokens
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, policy_dir


@contextmanager
def replicas(
    tmp_path: Path,
    count: int,
    *,
    store_url: str,
    upstream: str,
    policies: str,
    store: dict[str, Any] | None = None,
    keys: dict[str, Any] | None = None,
    tokens: dict[str, Any] | None = None,
) -> Iterator[Replicas]:
    """``keys`` updates the key store section (a file store polled every 0.2 s),
    ``tokens`` sets the tokens section."""
    config, _ = write_replica_config(
        tmp_path,
        store_url=store_url,
        upstream=upstream,
        policies=policies,
        store=store or {},
        keys=keys,
        tokens=tokens,
    )
    urls, logs = [], []
    with ExitStack() as stack:
        for _ in range(count):
            port = free_port()
            env = {**SIGNING_ENV, "GATEWAY__SERVER__PORT": str(port)}
            url = f"http://127.0.0.1:{port}"
            proc = stack.enter_context(
                running(
                    [str(BIN / "gateway"), "serve", "--config", str(config)], url + "/", env=env
                )
            )
            urls.append(url)
            logs.append(proc.log_path)  # type: ignore[attr-defined]
        yield Replicas(urls, config, logs)


async def burst(targets: list[tuple[str, str]], *, message: str = "hi") -> list[int]:
    """Send one POST per (replica url, token) at once; the statuses in order."""
    import asyncio

    limits = httpx.Limits(max_connections=len(targets))
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:

        async def one(url: str, token: str) -> int:
            resp = await client.post(url + SEND, json={"client_token": token, "message": message})
            return resp.status_code

        return list(await asyncio.gather(*(one(u, t) for u, t in targets)))
