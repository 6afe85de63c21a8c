"""What a loaded policy set means for the operator: refused, or in force with warnings.

Start, reload, ``gateway policies check`` and ``gateway doctor`` all ask
:func:`assess`, so they can never disagree about a set. The rule itself is the pure
:func:`gateway.core.protection.protection_gaps`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.protection import covers_route, protection_gaps
from gateway.policies.loader import LoadedPolicies

ALLOW_FIELD = "policies.allow_unprotected"


@dataclass(frozen=True, slots=True)
class Notice:
    """One thing to tell the operator: ``event`` names it in logs and in doctor's output."""

    event: str
    message: str
    fix: str


@dataclass(frozen=True, slots=True)
class Assessment:
    errors: tuple[Notice, ...] = ()
    warnings: tuple[Notice, ...] = ()

    @property
    def refused(self) -> bool:
        return bool(self.errors)

    def refusal(self) -> str:
        """The errors as one message, for a refused start."""
        return "\n".join(f"{n.message}\n  fix: {n.fix}" for n in self.errors)


def where(loaded: LoadedPolicies) -> str:
    """The policy files, or the path that held none."""
    if loaded.files:
        return ", ".join(str(f) for f in loaded.files)
    return "(no policy file)"


def assess(loaded: LoadedPolicies, *, allow_unprotected: bool, source: str = "") -> Assessment:
    """Refuse an unprotected set unless ``allow_unprotected``; warn about risky choices.

    ``source`` names the policy path when the set has no file at all (an empty
    directory), so the message says where the gateway looked."""
    errors: list[Notice] = []
    warnings: list[Notice] = []
    gaps = protection_gaps(loaded.policies)
    if gaps:
        files = where(loaded) if loaded.files or not source else f"{source}: no policy file"
        missing = "; ".join(g.missing for g in gaps)
        fixes = "; ".join(g.fix for g in gaps)
        if allow_unprotected:
            warnings.append(
                Notice(
                    "policies_unprotected",
                    f"{files}: running unprotected because {ALLOW_FIELD} is true: {missing}",
                    f"{fixes}; then remove {ALLOW_FIELD}",
                )
            )
        else:
            errors.append(
                Notice(
                    "policies_unprotected",
                    f"{files}: refusing a policy set that leaves the gateway unprotected: "
                    f"{missing}",
                    f"{fixes}; or, to run so on purpose, set {ALLOW_FIELD}: true in the "
                    "configuration (docs/policies.md, 'Protection')",
                )
            )
    if not gaps and not any(covers_route(p, "refresh", "POST") for p in loaded.policies.policies):
        warnings.append(
            Notice(
                "policies_no_refresh_limit",
                f"{where(loaded)}: no enforcing limit on the refresh route: one token can be "
                "renewed without limit, and each renewal signs a token and writes its state "
                "to the store",
                "add a policy with match: {routes: [refresh]}, mode: enforce (see "
                "refresh-per-token and refresh-per-ip in policies/default.yaml); a later "
                "release will refuse a set without one, as for the token and send routes",
            )
        )
    if loaded.policies.on_store_error == "fail_open":
        at = loaded.origins.get("@on_store_error", where(loaded))
        warnings.append(
            Notice(
                "policies_fail_open",
                f"{at}: on_store_error: fail_open: while the store (Redis) cannot answer, "
                "each replica limits on its own (N replicas admit up to N times each limit) "
                "and token revocation, binding and the penalty box are not shared",
                "use fail_closed (503 during a store outage) unless availability matters "
                "more than exact limits; watch gateway_store_circuit_open",
            )
        )
    return Assessment(tuple(errors), tuple(warnings))
