"""The checks in order: what ``gateway doctor`` runs, and the static part ``serve`` runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gateway.config import Config
from gateway.doctor import configuration, dependencies, keys, policies, signing
from gateway.doctor.findings import Finding


async def static(config: Config, environ: Mapping[str, str]) -> list[Finding]:
    """Checks that need nothing but files and the environment: the configuration's
    risky settings, the policies, the signing keys and a file key store (a Redis key
    store needs Redis, a dependency: it is read when the gateway starts)."""
    findings = configuration.check(config)
    findings += policies.check(config)[1]
    findings += signing.check(config, environ)
    if config.keys.type == "file":
        findings += await keys.check(config)
    return findings


async def diagnose(path: Path, environ: Mapping[str, str]) -> list[Finding]:
    """Everything: the configuration as serve loads it, then the static checks, the key
    store wherever it lives, and each dependency once."""
    config, findings = configuration.load(path, environ)
    if config is None:
        return findings
    findings += configuration.workers(config)
    findings += await static(config, environ)
    if config.keys.type != "file":
        findings += await keys.check(config)
    findings += await dependencies.check(config)
    return findings
