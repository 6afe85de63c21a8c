"""Warnings about valid but suspicious policy sets: overlaps and rules that never apply."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from gateway.core.policy import TOKEN_FIXED, TOKEN_SCOPED, Policy
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


#: routes whose requests carry an agent key (and so a shard); ``private`` ones do not
KEYED_ROUTES = frozenset({"token", "messages", "send", "refresh"})
#: partition components that name one agent key's traffic, or less
WITHIN_A_KEY = frozenset({"api_key", "token", "conversation"})


def sharding_changes(loaded: LoadedPolicies, hot_keys: Mapping[str, int]) -> list[str]:
    """What ``store.sharding: key`` changes in this set, one line per policy it changes
    (see docs/policies.md, "Sharded mode"): a limit not partitioned within one agent key
    is counted per agent key, the penalty box is read by admissions only from each
    replica's cache, and a hot key's own limits are split over its sub-buckets."""
    findings: list[str] = []
    where = loaded.origins
    policy_set = loaded.policies
    for policy in policy_set.policies:
        at = where.get(policy.name, "?")
        keyed = sorted(policy.routes & KEYED_ROUTES)
        parts = frozenset(policy.partition)
        if keyed and parts.isdisjoint(WITHIN_A_KEY):
            findings.append(
                f"{at}: policy {policy.name!r} (partition {'+'.join(policy.partition)}) is "
                f"counted per agent key on routes {', '.join(keyed)} under store.sharding: "
                "key: a client using several keys gets the limit once per key"
            )
        if keyed and "api_key" in parts and parts <= TOKEN_FIXED - TOKEN_SCOPED:
            hot = {
                k: n for k, n in hot_keys.items() if policy.key_ids is None or k in policy.key_ids
            }
            for key_id, buckets in sorted(hot.items()):
                findings.append(
                    f"{at}: policy {policy.name!r} is split over hot key {key_id}'s {buckets} "
                    f"sub-buckets: rate/{buckets} each, at most {buckets - 1} requests over its "
                    "limit in any window, and one conversation gets rate/"
                    f"{buckets}"
                )
    if policy_set.penalty is not None:
        findings.append(
            f"{policy_set.sources[0] if policy_set.sources else '?'}: penalty_box under "
            "store.sharding: key: failures are still counted for all keys, but requests "
            "with a token or key are refused only by replicas that saw the client boxed"
        )
    return findings
