"""The policy set: it loads, it protects (:mod:`gateway.policies.protection`), it lints."""

from __future__ import annotations

from gateway.config import Config
from gateway.config.yaml_source import SourceError
from gateway.doctor.findings import Finding, error, ok, warning
from gateway.policies.lint import lint
from gateway.policies.loader import LoadedPolicies, load_policies
from gateway.policies.protection import assess, where

#: the check name of each assessment event
CHECKS = {
    "policies_unprotected": "policies.protection",
    "policies_no_refresh_limit": "policies.refresh",
    "policies_fail_open": "policies.fail_open",
}


def check(config: Config) -> tuple[LoadedPolicies | None, list[Finding]]:
    path = config.policies.path
    try:
        loaded = load_policies(path)
    except SourceError as exc:
        return None, [
            error(
                "policies",
                str(exc),
                "correct the policy files (docs/policies.md); `gateway policies check` "
                "shows the same",
            )
        ]
    findings = [ok("policies", f"{len(loaded.policies.policies)} policies from {where(loaded)}")]
    verdict = assess(loaded, allow_unprotected=config.policies.allow_unprotected, source=str(path))
    for notice in verdict.errors:
        findings.append(error(CHECKS[notice.event], notice.message, notice.fix))
    for notice in verdict.warnings:
        findings.append(warning(CHECKS[notice.event], notice.message, notice.fix))
    if not verdict.errors and not any(f.check == "policies.protection" for f in findings):
        findings.append(
            ok(
                "policies.protection",
                "enforcing limits on the token and send routes, penalty box on",
            )
        )
    for line in lint(loaded, set(config.models)):
        findings.append(warning("policies.lint", line, "see docs/policies.md, 'Linting'"))
    return loaded, findings
