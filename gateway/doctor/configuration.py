"""The configuration file itself, and settings that are valid yet weaken a defence."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path

from gateway.config import Config, load_config
from gateway.config.yaml_source import SourceError
from gateway.doctor.findings import Finding, error, ok, warning
from gateway.supervisor import memory_store_refusal, worker_count

#: a trusted proxy network larger than this is a warning: any host in it may name the
#: client address that limits, binding and the penalty box count
MAX_TRUSTED_V4 = 16
MAX_TRUSTED_V6 = 48
#: a public (globally routed) network is trusted only when this narrow
MAX_PUBLIC_V4 = 24
MAX_PUBLIC_V6 = 64


def load(path: Path, environ: Mapping[str, str]) -> tuple[Config | None, list[Finding]]:
    """The configuration as ``serve`` loads it (file, then ``GATEWAY__...`` overrides)."""
    try:
        config = load_config(path, environ)
    except SourceError as exc:
        return None, [
            error(
                "config",
                str(exc),
                "correct the field named (docs/configuration.md lists every field)",
            )
        ]
    summary = (
        f"{path}: store {config.store.type}, keys {config.keys.type}, "
        f"{len(config.models)} model(s), upstream {config.upstream.url}"
    )
    return config, [ok("config", summary)]


def _too_broad(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str | None:
    v4 = network.version == 4
    if network.prefixlen < (MAX_TRUSTED_V4 if v4 else MAX_TRUSTED_V6):
        return f"{network.num_addresses} addresses"
    if network.is_global and network.prefixlen < (MAX_PUBLIC_V4 if v4 else MAX_PUBLIC_V6):
        return "a public network"
    return None


def trusted_proxies(config: Config) -> list[Finding]:
    findings = []
    for index, network in enumerate(config.server.trusted_proxies):
        why = _too_broad(network)
        if why is not None:
            findings.append(
                warning(
                    "config.trusted_proxies",
                    f"server.trusted_proxies[{index}]: {network} is {why}: any host in it "
                    "can set X-Forwarded-For and so choose the client address that rate "
                    "limits, token binding and the penalty box count",
                    "list only your load balancers' or ingress pods' addresses",
                )
            )
    return findings


#: a listener on one of these takes the port on every address
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104


def listeners(config: Config) -> list[Finding]:
    admin, server = config.admin, config.server
    hosts = {admin.host, server.host}
    clash = admin.port == server.port and (len(hosts) == 1 or bool(hosts & WILDCARD_HOSTS))
    if admin.enabled and server.port != 0 and clash:
        return [
            error(
                "config.admin",
                f"the admin listener ({admin.host}:{admin.port}) and the public one "
                f"({server.host}:{server.port}) take the same port",
                "give admin.port its own port (9090 by default)",
            )
        ]
    return []


def workers(config: Config) -> list[Finding]:
    """Several workers on the memory store: refused by ``serve`` unless accepted, and then
    every limit is counted per worker. Not among ``serve``'s static checks: its
    ``--workers`` overrides the file, and it refuses the memory store itself."""
    count = worker_count(config.server.workers)
    refused = memory_store_refusal(config, count)
    if refused is not None:
        return [error("config.workers", refused, "use store: redis for several workers")]
    if count > 1 and config.store.type == "memory":
        return [
            warning(
                "config.workers",
                f"server.workers is {count} on the memory store: each worker counts rate "
                f"limits, the penalty box and token state on its own, so a client gets up "
                f"to {count} times each limit and a token revoked by one worker still "
                "passes on the others",
                "use store: redis, shared by the workers",
            )
        ]
    return []


def check(config: Config) -> list[Finding]:
    return trusted_proxies(config) + listeners(config)
