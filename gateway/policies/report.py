"""Human-readable views of a policy set for ``gateway policies check|explain``."""

from __future__ import annotations

from gateway.core.gcra import LimitState
from gateway.core.policy import AppliedLimit, Binding, Limit, Penalty, Policy, PolicySet


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms"


def describe_limit(limit: Limit) -> str:
    return f"{limit.rate}/{_duration(limit.per_seconds)} burst {limit.burst}"


def _match(policy: Policy) -> str:
    parts = [",".join(sorted(policy.routes))]
    for label, values in (
        ("models", policy.models),
        ("keys", policy.key_ids),
        ("methods", policy.methods),
    ):
        if values is not None:
            parts.append(f"{label}={','.join(sorted(values))}")
    return " ".join(parts)


def effective_table(policies: PolicySet) -> list[str]:
    rows = [("POLICY", "MODE", "MATCH", "PARTITION", "LIMIT")]
    for p in policies.policies:
        rows.append((p.name, p.mode, _match(p), "+".join(p.partition), describe_limit(p.limit)))
        for o in p.overrides:
            limit = describe_limit(o.limit) if o.limit else "(same limit)"
            rows.append(
                (
                    "  override",
                    o.mode or p.mode,
                    f"keys={','.join(sorted(o.key_ids))}",
                    "",
                    limit,
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    lines.append("")
    lines.append(binding_text(policies.binding))
    lines.append(f"penalty box: {penalty_text(policies.penalty)}")
    lines.append(f"on store error: {policies.on_store_error}")
    return lines


def penalty_text(box: Penalty | None) -> str:
    """A penalty box rule in one line (``off`` without one)."""
    if box is None:
        return "off"
    return (
        f"{box.threshold} x ({', '.join(sorted(box.count))}) per "
        f"{_duration(box.window_ms / 1000)} by {box.subject} -> refused for "
        f"{_duration(box.cooldown_ms / 1000)}"
    )


def binding_text(b: Binding) -> str:
    """The binding mode and the fingerprint rule, in one line."""
    components = "+".join(b.rule.components) or "off"
    modes = f"mode {b.mode}"
    if b.browser_mode is not None and b.browser_mode != b.mode:
        modes += f" ({b.browser_mode} for keys with origins)"
    other = "; another key's proof: refused only" if b.other_key == "refuse" else ""
    return (
        f"binding: {modes}; fingerprint {components} at {b.bind_at}, up to "
        f"{b.max_fingerprints} fingerprint(s), then {b.action}{other}"
    )


def explain_lines(
    applied: tuple[AppliedLimit, ...], states: tuple[LimitState, ...] | None
) -> list[str]:
    if not applied:
        return ["no policy applies"]
    lines = []
    for index, item in enumerate(applied):
        mode = "shadow" if item.spec.shadow else "enforce"
        line = f"{item.policy} [{mode}] {describe_limit(item.limit)} key={item.spec.key}"
        if states is not None:
            state = states[index]
            verdict = "would admit" if state.allowed else f"would refuse for {state.retry_ms} ms"
            line += f" -> remaining {state.remaining}, {verdict}"
        lines.append(line)
    return lines
