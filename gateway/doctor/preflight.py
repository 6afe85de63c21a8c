"""``gateway serve`` runs doctor's static checks before it starts: an error refuses the
start (every way of starting runs through here), a warning is logged.

Some warnings are logged by the part of the running gateway that owns them, at start and
whenever it reloads, and are not repeated here: the policy store (unprotected on
purpose, ``fail_open``), the token codec (a generated signing key) and the key store
(empty). Dependencies (Redis, the upstream, the JWKS) are not start conditions: a
gateway started before them reports them through ``/readyz`` until they answer.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from gateway.config import Config
from gateway.doctor.findings import Finding
from gateway.doctor.run import static

log = structlog.get_logger("gateway")

#: warnings that the running gateway logs itself (see the module's documentation)
SELF_REPORTED = frozenset(
    {"policies.protection", "policies.fail_open", "signing.generated", "keystore.empty"}
)


async def preflight(config: Config, environ: Mapping[str, str]) -> list[Finding]:
    """The errors that must stop the start; warnings are logged on the way."""
    findings = await static(config, environ)
    for finding in findings:
        if finding.severity == "warning" and finding.check not in SELF_REPORTED:
            log.warning(finding.event, detail=finding.message, fix=finding.fix)
    return [f for f in findings if f.severity == "error"]


def refusal(errors: list[Finding]) -> str:
    return "refusing to start:\n" + "\n".join(f"{f.message}\n  fix: {f.fix}" for f in errors)
