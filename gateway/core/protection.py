"""Whether a policy set protects the gateway at all: the minimum below which it must not run.

A set that loads and validates may still switch every defence off: an empty or
comment-only file, a directory whose file was renamed away, limits left in ``shadow``
mode, or a set without a penalty box. The gateway refuses such a set at start and on
reload unless the operator says ``policies.allow_unprotected: true``.

The minimum: an enforcing limit on each of the routes that cost something to every client
(``token``: issuing tokens; ``send``: the upstream's work), applying to every request of
the route (no ``models`` or ``key_ids`` filter, every method of the route), and the
penalty box on. Pure: used alike by start, reload, ``gateway policies check`` and
``gateway doctor``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.policy import Policy, PolicySet

#: the routes that must carry an enforcing limit, with the method their requests use
GUARDED_ROUTES: dict[str, str] = {"token": "GET", "send": "POST"}


@dataclass(frozen=True, slots=True)
class Gap:
    """One missing defence: a stable ``code``, what is missing and how to add it."""

    code: str
    missing: str
    fix: str


def covers_route(policy: Policy, route: str, method: str) -> bool:
    """Whether ``policy`` enforces a limit on every request of ``route``."""
    return (
        route in policy.routes
        and policy.mode == "enforce"
        and policy.models is None
        and policy.key_ids is None
        and (policy.methods is None or method in policy.methods)
    )


def _route_gap(policies: PolicySet, route: str, method: str) -> Gap | None:
    if any(covers_route(p, route, method) for p in policies.policies):
        return None
    on_route = [p for p in policies.policies if route in p.routes]
    if not on_route:
        detail = "no policy matches it"
    elif all(p.mode == "shadow" for p in on_route):
        detail = "its policies are all in shadow mode: counted, never refused"
    else:
        detail = "its policies only apply to some models, keys or methods"
    return Gap(
        code=f"no_{route}_limit",
        missing=f"no enforcing limit on the {route} route ({detail})",
        fix=(
            f"add a policy with match: {{routes: [{route}]}}, mode: enforce and no "
            f"models/key_ids filter (see {route}-per-* in policies/default.yaml)"
        ),
    )


def protection_gaps(policies: PolicySet) -> tuple[Gap, ...]:
    """What ``policies`` lacks to protect the gateway; empty when nothing is missing."""
    gaps = [
        gap
        for route, method in GUARDED_ROUTES.items()
        if (gap := _route_gap(policies, route, method)) is not None
    ]
    if policies.penalty is None:
        gaps.append(
            Gap(
                code="penalty_box_off",
                missing="the penalty box is off (clients that keep failing are never refused)",
                fix="add a penalty_box section, or remove its 'enabled: false'",
            )
        )
    return tuple(gaps)
