"""`gateway serve` as a process in front of a given upstream, with real client tokens, its
metrics and its memory (VmRSS from /proc) at hand."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import SIGNING_ENV, TOKEN_URL, config_data, deep_merge
from tests.support.processes import BIN, free_port, run_cli, running

USER_AGENT = "conformance/1.0"


@dataclass(frozen=True)
class Token:
    token: str
    conversation_id: str


def conversation_of(token: str) -> str:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["cid"])


@dataclass
class ServedGateway:
    client: str
    public: str
    admin: str
    pid: int
    log_path: Path
    tokens: list[Token] = field(default_factory=list)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the admin listener's /metrics (0 when absent)."""
        text = httpx.get(self.admin + "/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def issue_tokens(public: str, config: Path, count: int) -> list[Token]:
    created = run_cli("keys", "create", "--model", "demo", "--json", "--config", str(config))
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    tokens: list[Token] = []
    deadline = time.monotonic() + 15
    with httpx.Client(base_url=public, timeout=5, headers={"User-Agent": USER_AGENT}) as http:
        while len(tokens) < count:
            assert time.monotonic() < deadline, "the key never reached the gateway"
            resp = http.get(
                TOKEN_URL.format(model="demo"), headers={"Authorization": f"Bearer {key}"}
            )
            if resp.status_code != 200:
                time.sleep(0.25)  # a new key reaches the gateway within seconds
                continue
            token = str(resp.json()["token"])
            tokens.append(Token(token, conversation_of(token)))
    return tokens


@contextmanager
def served_gateway(
    tmp_path: Path, upstream_url: str, client: str, *, tokens: int = 0, **sections: Any
) -> Iterator[ServedGateway]:
    """``gateway serve`` with the test policies (no limits), its admin listener on, the
    upstream client ``client``, and ``tokens`` client tokens issued through its token route."""
    port, admin_port = free_port(), free_port()
    data = config_data(tmp_path, upstream_url)
    data = deep_merge(
        data,
        {
            "server": {"port": port},
            "admin": {"enabled": True, "host": "127.0.0.1", "port": admin_port},
            "upstream": {"client": client},
            "logging": {"level": "warning"},
        },
    )
    data = deep_merge(data, sections)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    admin = f"http://127.0.0.1:{admin_port}"
    argv = [str(BIN / "gateway"), "serve", "--config", str(config)]
    with running(argv, admin + "/healthz", env=SIGNING_ENV) as proc:
        public = f"http://127.0.0.1:{port}"
        served = ServedGateway(client, public, admin, proc.pid, Path(proc.log_path))  # type: ignore[attr-defined]
        if tokens:
            served.tokens = issue_tokens(public, config, tokens)
        yield served


class RssWatch:
    """The highest VmRSS of a process while the block runs, sampled every few ms."""

    def __init__(self, gateway: ServedGateway, every: float = 0.01) -> None:
        self._gateway = gateway
        self._every = every
        self._stop = threading.Event()
        self.start = self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._gateway.rss_bytes())
            self._stop.wait(self._every)

    def __enter__(self) -> RssWatch:
        self.start = self.peak = self._gateway.rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self._gateway.rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start
