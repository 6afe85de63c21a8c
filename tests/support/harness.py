"""Start real gateways and upstreams on real sockets for tests."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from gateway.config import Config
from gateway.keystore.admin import create_key
from gateway.observability.metrics import Metrics
from gateway.web.admin import create_admin_app
from gateway.web.app import create_app
from gateway.web.listener import Listener, ListenerRunner
from gateway.web.state import METRICS, SERVICES, Services

SIGNING_KEY = "k1:" + "s" * 48
SIGNING_ENV = {"GATEWAY_SIGNING_KEYS": SIGNING_KEY}
#: real argon2id, at a cost that keeps the suite fast
FAST_ARGON2 = {"time_cost": 1, "memory_kib": 8192, "parallelism": 1}

TOKEN_URL = "/v1/chat/conversation/public/message/token/{model}"
MESSAGES_URL = "/v1/chat/conversation/public/messages/{token}"
SEND_URL = "/v1/chat/conversation/public/message"
REFRESH_URL = "/v1/chat/conversation/public/token/refresh"


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


#: the policies tests run under unless they bring their own: binding on, no limits
#: (unprotected: gateways built here allow that unless a test says otherwise)
NO_LIMITS = """
binding:
  bind_at: first_use
  components: [ip_prefix, user_agent]
"""

#: the least a gateway runs with unless told otherwise (gateway.core.protection): an
#: enforcing limit on the token and send routes and the penalty box; token-per-ip lets
#: 3 tokens through at once
PROTECTED = """
penalty_box: {threshold: 20, window: 1m, cooldown: 5m}
policies:
  - name: token-per-ip
    match: {routes: [token]}
    partition: [client_ip]
    limit: {rate: 1, per: 1m, burst: 3}
  - name: send-per-token
    match: {routes: [send]}
    partition: [token]
    limit: {rate: 10, per: 1m, burst: 5}
"""


def write_policies(tmp_path: Path, text: str) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    (directory / "test.yaml").write_text(text)
    return directory


def config_data(
    tmp_path: Path,
    upstream_url: str,
    *,
    redis_url: str | None = None,
    policies: str = NO_LIMITS,
    allow_unprotected: bool = True,
    **sections: Any,
) -> dict[str, Any]:
    """A configuration in ``tmp_path``. Most tests bring partial policy sets (or none),
    so ``policies.allow_unprotected`` is on unless ``allow_unprotected=False``."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "store": {"type": "redis" if redis_url else "memory"},
        "keys": {"type": "file", "path": str(tmp_path / "keys.yaml"), "argon2": FAST_ARGON2},
        "models": {"demo": {}, "other": {}},
        "policies": {"path": str(write_policies(tmp_path, policies)), "watch": True},
        "upstream": {
            "url": upstream_url,
            "timeouts": {"connect": 1, "read": 5, "stream_idle": 5},
        },
    }
    if allow_unprotected:
        data["policies"]["allow_unprotected"] = True
    if redis_url:
        data["store"]["url"] = redis_url
        data["store"]["timeout_ms"] = 1000
    return deep_merge(data, sections)


def make_config(
    tmp_path: Path,
    upstream_url: str,
    *,
    redis_url: str | None = None,
    policies: str = NO_LIMITS,
    allow_unprotected: bool = True,
    **sections: Any,
) -> Config:
    return Config.model_validate(
        config_data(
            tmp_path,
            upstream_url,
            redis_url=redis_url,
            policies=policies,
            allow_unprotected=allow_unprotected,
            **sections,
        )
    )


@dataclass
class Gateway:
    """A running gateway with an HTTP client pointed at it."""

    server: TestServer
    config: Config
    http: aiohttp.ClientSession
    user_agent: str = "pytest-browser/1.0"
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def app(self) -> web.Application:
        return self.server.app

    @property
    def services(self) -> Services:
        return self.server.app[SERVICES]

    @property
    def metrics(self) -> Metrics:
        return self.server.app[METRICS]

    def sample(self, name: str, **labels: str) -> float:
        """The current value of one metric sample (0 when it does not exist yet)."""
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def create_key(
        self,
        models: tuple[str, ...] = ("demo",),
        origins: tuple[str, ...] = (),
        *,
        require_proof: bool = False,
    ) -> str:
        key, record = await create_key(self.config, models, origins, require_proof=require_proof)
        await self.services.keys.store.refresh()
        self.keys[record.key_id] = key
        return key

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"User-Agent": self.user_agent, **(extra or {})}

    async def get_token(self, key: str, model: str = "demo", **headers: str) -> str:
        async with self.http.get(
            self.url + TOKEN_URL.format(model=model),
            headers=self.headers({"Authorization": f"Bearer {key}", **headers}),
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return str(body["token"])

    async def new_token(self, model: str = "demo") -> str:
        key = await self.create_key((model,))
        return await self.get_token(key, model)

    def send(
        self, token: str, message: str = "hello", *, stream: bool = False, **headers: str
    ) -> Any:
        return self.http.post(
            self.url + SEND_URL,
            json={"client_token": token, "message": message, "stream": stream},
            headers=self.headers(headers),
        )

    async def stream_then_hang_up(
        self, token: str, message: str = "long", on_first_event: Any = None
    ) -> None:
        """Ask for a streamed answer, read its first event, then close the connection."""
        import httpx
        from httpx_sse import aconnect_sse

        async with (
            httpx.AsyncClient(timeout=10, headers={"User-Agent": self.user_agent}) as client,
            aconnect_sse(
                client,
                "POST",
                self.url + SEND_URL,
                json={"client_token": token, "message": message, "stream": True},
            ) as source,
        ):
            async for _event in source.aiter_sse():
                if on_first_event is not None:
                    on_first_event()
                break

    def refresh(self, token: str, **headers: str) -> Any:
        """``POST .../token/refresh`` for ``token`` (a context manager, as ``send``)."""
        return self.http.post(
            self.url + REFRESH_URL, json={"client_token": token}, headers=self.headers(headers)
        )

    def messages(self, token: str, **headers: str) -> Any:
        return self.http.get(
            self.url + MESSAGES_URL.format(token=token), headers=self.headers(headers)
        )


class ListenerTestServer(TestServer):
    """``TestServer`` serving through the gateway's listener, as ``gateway serve`` does
    (deadlines, connection caps, answers to malformed requests)."""

    def __init__(self, app: web.Application, listener: Listener, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.listener = listener

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return ListenerRunner(self.app, self.listener, access_log=None, **kwargs)


async def start_gateway(
    config: Config,
    environ: Mapping[str, str] | None = None,
    *,
    prepare: Callable[[web.Application], None] | None = None,
    **app_kwargs: Any,
) -> Gateway:
    """A gateway on a socket; ``prepare`` sees its application before it starts (to set
    what a test injects, e.g. ``JWKS_CLOCK``)."""
    app = create_app(config, environ=SIGNING_ENV if environ is None else environ, **app_kwargs)
    if prepare is not None:
        prepare(app)
    listener = Listener.public(config.server, app[METRICS])
    server = ListenerTestServer(app, listener, host="127.0.0.1")
    await server.start_server()
    http = aiohttp.ClientSession()
    return Gateway(server=server, config=config, http=http)


async def stop_gateway(gateway: Gateway) -> None:
    await gateway.http.close()
    await gateway.server.close()


async def start_admin(gateway: Gateway) -> TestServer:
    """The admin listener of ``gateway`` on its own socket (the caller closes it)."""
    listener = Listener.admin(gateway.config.server)
    server = ListenerTestServer(create_admin_app(gateway.app), listener, host="127.0.0.1")
    await server.start_server()
    return server
