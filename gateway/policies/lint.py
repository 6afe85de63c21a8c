"""Warnings about valid but suspicious policy sets: overlaps and rules that never apply."""

from __future__ import annotations

from collections.abc import Collection

from gateway.core.policy import Policy
from gateway.policies.loader import LoadedPolicies


def _scope(policy: Policy) -> tuple[object, ...]:
    return (
        policy.routes,
        policy.models,
        policy.key_ids,
        policy.methods,
        frozenset(policy.partition),
    )


def lint(loaded: LoadedPolicies, known_models: Collection[str] | None = None) -> list[str]:
    """One line per finding, each naming where the policy is defined."""
    findings: list[str] = []
    policies = loaded.policies.policies
    where = loaded.origins
    seen: dict[tuple[object, ...], Policy] = {}
    for policy in policies:
        at = where.get(policy.name, "?")
        scope = _scope(policy)
        first = seen.get(scope)
        if first is not None and first.mode == policy.mode == "enforce":
            tighter = first if first.limit.interval_us >= policy.limit.interval_us else policy
            findings.append(
                f"{at}: policy {policy.name!r} limits the same requests by the same partition "
                f"as {first.name!r} ({where.get(first.name, '?')}); only the tighter "
                f"{tighter.name!r} ever decides"
            )
        else:
            seen.setdefault(scope, policy)
        if known_models is not None and policy.models is not None:
            unknown = sorted(policy.models - set(known_models))
            if unknown and len(unknown) == len(policy.models):
                findings.append(
                    f"{at}: policy {policy.name!r} never applies: no configured model "
                    f"{', '.join(unknown)}"
                )
        claimed: set[str] = set()
        for index, override in enumerate(policy.overrides):
            if policy.key_ids is not None and not override.key_ids & policy.key_ids:
                findings.append(
                    f"{at}: policy {policy.name!r} overrides[{index}] never applies: its keys "
                    "are outside the policy's match.key_ids"
                )
            shadowed = override.key_ids & claimed
            if shadowed and shadowed == override.key_ids:
                findings.append(
                    f"{at}: policy {policy.name!r} overrides[{index}] never applies: an "
                    "earlier override names the same keys"
                )
            claimed |= override.key_ids
    return findings
