"""What changed between two policy sets, in words an operator reads (``gateway policies diff``).

Pure: compares two compiled :class:`gateway.core.policy.PolicySet` by their effective
meaning, never their text. Policies are matched by name; their order, comments, how a
duration is written (``60s`` or ``1m``) and the order of list items do not count. A rate
is compared by its pace (the GCRA interval the store uses), so ``10/1m`` and ``20/2m``
are the same limit.

Every change says its ``effect``: ``tightens`` when the new set may refuse a request the
old one admitted (a rate or burst lowered, shadow turned to enforce, a new enforcing
policy, a coarser partition, a wider match, a stricter penalty box or binding...),
``loosens`` when it may admit what the old refused, ``neutral`` otherwise (a policy that
enforces nowhere, before and after, refuses nothing whatever its limit).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Literal

from gateway.core.policy import Binding, Limit, Mode, Override, Penalty, Policy, PolicySet

Effect = Literal["tightens", "loosens", "neutral"]
TIGHTENS: Effect = "tightens"
LOOSENS: Effect = "loosens"
NEUTRAL: Effect = "neutral"
JsonValue = str | int | float | bool | list[str] | dict[str, object] | None
#: an override as declared: its own limit and mode (either may be absent), or no override
Declared = tuple[Limit | None, Mode | None] | None

#: reuse actions from the mildest to the strictest
_ACTIONS = ("flag", "deny", "revoke")
#: binding modes, loosest first: proofs ignored, proofs honoured, proofs required
_BINDING_MODES = ("fingerprint", "proof_or_fingerprint", "proof")


@dataclass(frozen=True, slots=True)
class Change:
    """One change. ``subject`` is ``policy``, ``binding``, ``penalty_box``, ``ip_prefix`` or
    ``on_store_error``; ``policy`` names the policy (``None`` for set-wide sections);
    ``field`` is what changed (``added``, ``removed``, ``rate``, ``burst``, ``partition``,
    ``match.routes``, ``mode``, ``overrides``, a section's field...)."""

    subject: str
    policy: str | None
    field: str
    old: JsonValue
    new: JsonValue
    effect: Effect
    text: str

    def as_json(self) -> dict[str, object]:
        return {
            "subject": self.subject,
            "policy": self.policy,
            "field": self.field,
            "old": self.old,
            "new": self.new,
            "effect": self.effect,
            "text": self.text,
        }


def duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms"


def _rate(limit: Limit) -> str:
    return f"{limit.rate}/{duration(limit.per_seconds)}"


def _limit_words(limit: Limit) -> str:
    return f"{_rate(limit)} burst {limit.burst}"


def _limit_json(limit: Limit | None) -> dict[str, object] | None:
    if limit is None:
        return None
    return {"rate": limit.rate, "per_seconds": limit.per_seconds, "burst": limit.burst}


def _factor(old: Fraction, new: Fraction) -> str:
    """``halved``, ``doubled``, ``x3``, ``x0.25``: new / old in words."""
    ratio = new / old
    named = {Fraction(1, 2): "halved", Fraction(2): "doubled", Fraction(1, 3): "cut to a third"}
    if ratio in named:
        return named[ratio]
    if ratio > 1:
        return f"raised x{float(ratio):.3g}"
    return f"lowered x{float(ratio):.3g}"


def _pace(limit: Limit) -> Fraction:
    """Requests per second as the store applies them (one per ``interval_us``)."""
    return Fraction(1_000_000, limit.interval_us)


def _words(values: Iterable[str]) -> str:
    return ",".join(sorted(values))


def _match_words(policy: Policy) -> str:
    parts = [f"routes {_words(policy.routes)}"]
    for label, values in (
        ("models", policy.models),
        ("keys", policy.key_ids),
        ("methods", policy.methods),
    ):
        if values is not None:
            parts.append(f"{label} {_words(values)}")
    return ", ".join(parts)


def _enforces(policy: Policy) -> bool:
    """Whether the policy can refuse any request (itself or through an override)."""
    return policy.mode == "enforce" or any(o.mode == "enforce" for o in policy.overrides)


def _policy_words(policy: Policy) -> str:
    text = (
        f"{policy.mode}, on {_match_words(policy)}, per [{'+'.join(policy.partition)}], "
        f"{_limit_words(policy.limit)}"
    )
    if policy.overrides:
        text += f", {len(policy.overrides)} override(s)"
    return text


def _policy_json(policy: Policy) -> dict[str, object]:
    return {
        "mode": policy.mode,
        "routes": sorted(policy.routes),
        "models": sorted(policy.models) if policy.models is not None else None,
        "key_ids": sorted(policy.key_ids) if policy.key_ids is not None else None,
        "methods": sorted(policy.methods) if policy.methods is not None else None,
        "partition": list(policy.partition),
        "limit": _limit_json(policy.limit),
    }


def _limit_effect(old: Limit, new: Limit) -> Effect:
    slower, smaller = _pace(new) < _pace(old), new.burst < old.burst
    if slower or smaller:
        return TIGHTENS
    if _pace(new) > _pace(old) or new.burst > old.burst:
        return LOOSENS
    return NEUTRAL


def _limit_changes(name: str, old: Limit, new: Limit, gated: bool, where: str) -> list[Change]:
    """Rate and burst changes of one limit; ``gated``: the policy enforces somewhere."""
    out: list[Change] = []
    if (old.rate, old.per_seconds) != (new.rate, new.per_seconds):
        before, after = _pace(old), _pace(new)
        if before == after:
            words, effect = "rate restated at the same pace", NEUTRAL
        else:
            words = f"rate {_factor(before, after)}"
            effect = TIGHTENS if after < before else LOOSENS
        out.append(
            Change(
                "policy",
                name,
                f"{where}rate",
                _rate(old),
                _rate(new),
                effect if gated else NEUTRAL,
                f"{words}: {_rate(old)} -> {_rate(new)}",
            )
        )
    if old.burst != new.burst:
        effect = TIGHTENS if new.burst < old.burst else LOOSENS
        out.append(
            Change(
                "policy",
                name,
                f"{where}burst",
                old.burst,
                new.burst,
                effect if gated else NEUTRAL,
                f"burst {_factor(Fraction(old.burst), Fraction(new.burst))}: "
                f"{old.burst} -> {new.burst}",
            )
        )
    return out


def _implied(component: str, parts: frozenset[str]) -> bool:
    """Whether requests that share ``parts`` always share ``component``."""
    return (
        component == "global"
        or component in parts
        or (component == "ip_prefix" and "client_ip" in parts)
    )


def _coarser_or_same(new: tuple[str, ...], old: tuple[str, ...]) -> bool:
    """Whether the partition ``new`` counts together every request ``old`` counted together."""
    return all(_implied(c, frozenset(old)) for c in new)


def _partition_effect(old: tuple[str, ...], new: tuple[str, ...]) -> Effect:
    coarser, finer = _coarser_or_same(new, old), _coarser_or_same(old, new)
    if coarser and finer:
        return NEUTRAL
    if finer:
        return LOOSENS
    return TIGHTENS  # coarser, or neither: some requests now share a counter


def _wider_or_same(old: frozenset[str] | None, new: frozenset[str] | None) -> bool:
    """Whether a match dimension ``new`` takes every request ``old`` took (None: any)."""
    return new is None or (old is not None and old <= new)


def _values(values: frozenset[str] | None) -> str:
    return "any" if values is None else _words(values)


def _match_changes(old: Policy, new: Policy, gated: bool) -> list[Change]:
    out: list[Change] = []
    for label, before, after in (
        ("routes", old.routes, new.routes),
        ("models", old.models, new.models),
        ("key_ids", old.key_ids, new.key_ids),
        ("methods", old.methods, new.methods),
    ):
        if before == after:
            continue
        wider, narrower = _wider_or_same(before, after), _wider_or_same(after, before)
        effect = LOOSENS if narrower and not wider else TIGHTENS
        scope = "wider" if wider else "narrower" if narrower else "changed"
        out.append(
            Change(
                "policy",
                old.name,
                f"match.{label}",
                sorted(before) if before is not None else None,
                sorted(after) if after is not None else None,
                effect if gated else NEUTRAL,
                f"match {label} {scope}: [{_values(before)}] -> [{_values(after)}]",
            )
        )
    return out


def _mode_change(name: str, old: Mode, new: Mode, where: str) -> Change:
    if new == "enforce":
        return Change(
            "policy",
            name,
            f"{where}mode",
            old,
            new,
            TIGHTENS,
            f"{where.replace('.', ' ')}mode shadow -> enforce: starts refusing requests",
        )
    return Change(
        "policy",
        name,
        f"{where}mode",
        old,
        new,
        LOOSENS,
        f"{where.replace('.', ' ')}mode enforce -> shadow: stops refusing requests "
        "(counts them as shadow_limited)",
    )


def _override_table(overrides: tuple[Override, ...]) -> dict[str, Override]:
    """Each key id's override: the first that names it (as :meth:`Policy.effective`)."""
    table: dict[str, Override] = {}
    for override in overrides:
        for key_id in override.key_ids:
            table.setdefault(key_id, override)
    return table


def _declared(override: Override | None) -> Declared:
    return None if override is None else (override.limit, override.mode)


def _override_words(declared: Declared) -> str:
    if declared is None:
        return "none"
    limit, mode = declared
    return (
        f"{_limit_words(limit) if limit is not None else 'the policy limit'}, "
        f"{mode if mode is not None else 'the policy mode'}"
    )


def _override_changes(old: Policy, new: Policy) -> list[Change]:
    """Override changes, one line per group of key ids that changed alike; the effect
    compares each key's effective limit and mode, before and after."""
    before, after = _override_table(old.overrides), _override_table(new.overrides)
    groups: dict[tuple[Declared, Declared], list[str]] = {}
    for key_id in sorted(set(before) | set(after)):
        was, now = _declared(before.get(key_id)), _declared(after.get(key_id))
        if was != now:
            groups.setdefault((was, now), []).append(key_id)
    out: list[Change] = []
    for (was, now), key_ids in groups.items():
        effects: set[Effect] = set()
        for key_id in key_ids:
            old_limit, old_mode = old.effective(key_id)
            new_limit, new_mode = new.effective(key_id)
            if old_mode == "shadow" and new_mode == "shadow":
                continue
            if new_mode == "enforce" and old_mode == "shadow":
                effects.add(TIGHTENS)
            elif new_mode == "shadow" and old_mode == "enforce":
                effects.add(LOOSENS)
            else:
                effects.add(_limit_effect(old_limit, new_limit))
        effect = TIGHTENS if TIGHTENS in effects else LOOSENS if LOOSENS in effects else NEUTRAL
        what = "added" if was is None else "removed" if now is None else "changed"
        out.append(
            Change(
                "policy",
                old.name,
                "overrides",
                {"key_ids": key_ids, **_override_json(was)},
                {"key_ids": key_ids, **_override_json(now)},
                effect,
                f"override for keys {','.join(key_ids)} {what}: "
                f"{_override_words(was)} -> {_override_words(now)}",
            )
        )
    return out


def _override_json(declared: Declared) -> dict[str, object]:
    if declared is None:
        return {"limit": None, "mode": None, "present": False}
    limit, mode = declared
    return {"limit": _limit_json(limit), "mode": mode, "present": True}


def _policy_changes(old: Policy, new: Policy) -> list[Change]:
    gated = _enforces(old) or _enforces(new)
    name = old.name
    out = _match_changes(old, new, gated)
    if old.partition != new.partition:
        effect = _partition_effect(old.partition, new.partition)
        if frozenset(old.partition) == frozenset(new.partition):
            words = "partition reordered (same counters, new keys)"
        else:
            words = "partition"
        out.append(
            Change(
                "policy",
                name,
                "partition",
                list(old.partition),
                list(new.partition),
                effect if gated else NEUTRAL,
                f"{words} [{'+'.join(old.partition)}] -> [{'+'.join(new.partition)}]"
                + (" (coarser: more requests share a counter)" if effect == TIGHTENS else ""),
            )
        )
    out += _limit_changes(name, old.limit, new.limit, gated, "")
    if old.mode != new.mode:
        out.append(_mode_change(name, old.mode, new.mode, ""))
    out += _override_changes(old, new)
    return out


def _renames(before: dict[str, Policy], after: dict[str, Policy]) -> dict[str, str]:
    """Old name -> new name for each policy that only changed its name: one removed and
    one added whose match, partition, limit, mode and overrides mean the same (any change
    between them is neutral). Paired in name order, each at most once."""
    removed = sorted(set(before) - set(after))
    added = sorted(set(after) - set(before))
    pairs: dict[str, str] = {}
    for old_name in removed:
        for new_name in added:
            if new_name in pairs.values():
                continue
            changes = _policy_changes(before[old_name], after[new_name])
            if all(c.effect == NEUTRAL for c in changes) and _same_shape(
                before[old_name], after[new_name]
            ):
                pairs[old_name] = new_name
                break
    return pairs


def _same_shape(old: Policy, new: Policy) -> bool:
    """Whether two policies decide alike: the neutral changes :func:`_policy_changes`
    allows may still differ in a policy that enforces nowhere (any limit is neutral
    there), which is not a rename."""
    return (
        old.routes == new.routes
        and (old.models, old.key_ids, old.methods) == (new.models, new.key_ids, new.methods)
        and frozenset(old.partition) == frozenset(new.partition)
        and _pace(old.limit) == _pace(new.limit)
        and old.limit.burst == new.limit.burst
        and old.mode == new.mode
    )


def _rename(old: Policy, new: Policy) -> list[Change]:
    head = Change(
        "policy",
        new.name,
        "renamed",
        old.name,
        new.name,
        NEUTRAL,
        f"policy {old.name} renamed to {new.name}: the same limit; its counters start "
        "afresh under the new name (each partition's burst is full once), and its metrics "
        "and RateLimit-Policy carry the new name",
    )
    rest = [replace(c, text=f"policy {new.name}: {c.text}") for c in _policy_changes(old, new)]
    return [head, *rest]


def _policies(old: PolicySet, new: PolicySet) -> list[Change]:
    before = {p.name: p for p in old.policies}
    after = {p.name: p for p in new.policies}
    renamed = _renames(before, after)
    out: list[Change] = []
    for old_name, new_name in sorted(renamed.items()):
        out += _rename(before.pop(old_name), after.pop(new_name))
    for name in sorted(set(before) | set(after)):
        was, now = before.get(name), after.get(name)
        if was is None and now is not None:
            enforcing = _enforces(now)
            out.append(
                Change(
                    "policy",
                    name,
                    "added",
                    None,
                    _policy_json(now),
                    TIGHTENS if enforcing else NEUTRAL,
                    f"policy {name} added: {_policy_words(now)}"
                    + (": starts refusing requests" if enforcing else ": refuses nothing"),
                )
            )
        elif now is None and was is not None:
            out.append(
                Change(
                    "policy",
                    name,
                    "removed",
                    _policy_json(was),
                    None,
                    LOOSENS if _enforces(was) else NEUTRAL,
                    f"policy {name} removed: {_policy_words(was)}",
                )
            )
        elif was is not None and now is not None:
            out += [replace(c, text=f"policy {name}: {c.text}") for c in _policy_changes(was, now)]
    return out


def _ordered(old: object, new: object, order: tuple[object, ...], higher: Effect) -> Effect:
    """``higher`` when ``new`` comes later in ``order`` than ``old``, else the opposite."""
    if old == new:
        return NEUTRAL
    flip: Effect = LOOSENS if higher == TIGHTENS else TIGHTENS
    return higher if order.index(new) > order.index(old) else flip


def _more(old: float, new: float, stricter_when_more: bool) -> Effect:
    if old == new:
        return NEUTRAL
    return TIGHTENS if (new > old) == stricter_when_more else LOOSENS


def _penalty(old: Penalty | None, new: Penalty | None) -> list[Change]:
    def words(box: Penalty) -> str:
        return (
            f"{box.threshold} x ({', '.join(sorted(box.count))}) per "
            f"{duration(box.window_ms / 1000)} by {box.subject} -> refused for "
            f"{duration(box.cooldown_ms / 1000)}"
        )

    if old is None:
        if new is None:
            return []
        return [
            Change(
                "penalty_box",
                None,
                "enabled",
                False,
                True,
                TIGHTENS,
                f"penalty box turned on: {words(new)}",
            )
        ]
    if new is None:
        return [
            Change(
                "penalty_box",
                None,
                "enabled",
                True,
                False,
                LOOSENS,
                f"penalty box turned off (was {words(old)})",
            )
        ]
    out: list[Change] = []
    if old.subject != new.subject:
        effect = TIGHTENS if new.subject == "ip_prefix" else LOOSENS
        out.append(
            Change(
                "penalty_box",
                None,
                "subject",
                old.subject,
                new.subject,
                effect,
                f"penalty box subject {old.subject} -> {new.subject}",
            )
        )
    for label, field, before, after, stricter_when_more, show in (
        ("threshold", "threshold", old.threshold, new.threshold, False, str),
        ("window", "window_seconds", old.window_ms, new.window_ms, True, _ms),
        ("cooldown", "cooldown_seconds", old.cooldown_ms, new.cooldown_ms, True, _ms),
    ):
        if before != after:
            out.append(
                Change(
                    "penalty_box",
                    None,
                    field,
                    before / 1000 if field.endswith("seconds") else before,
                    after / 1000 if field.endswith("seconds") else after,
                    _more(before, after, stricter_when_more),
                    f"penalty box {label} {show(before)} -> {show(after)}",
                )
            )
    if old.count != new.count:
        effect = (
            LOOSENS if new.count < old.count else TIGHTENS  # fewer events counted: loosens
        )
        out.append(
            Change(
                "penalty_box",
                None,
                "count",
                sorted(old.count),
                sorted(new.count),
                effect,
                f"penalty box counts [{_words(old.count)}] -> [{_words(new.count)}]",
            )
        )
    return out


def _ms(value: int) -> str:
    return duration(value / 1000)


def _binding(old: Binding, new: Binding) -> list[Change]:
    out: list[Change] = []
    if old.mode != new.mode:
        effect = _ordered(old.mode, new.mode, _BINDING_MODES, TIGHTENS)
        words = f"binding mode {old.mode} -> {new.mode}"
        out.append(Change("binding", None, "mode", old.mode, new.mode, effect, words))
    browser_was, browser_now = old.mode_for(("o",)), new.mode_for(("o",))
    if browser_was != browser_now and (browser_was, browser_now) != (old.mode, new.mode):
        effect = _ordered(browser_was, browser_now, _BINDING_MODES, TIGHTENS)
        words = f"binding mode of keys with origins {browser_was} -> {browser_now}"
        change = Change("binding", None, "browser_mode", browser_was, browser_now, effect, words)
        out.append(change)
    if old.other_key != new.other_key:  # refusing only leaves a copied token's chat open
        effect = LOOSENS if new.other_key == "refuse" else TIGHTENS
        words = f"binding other_key {old.other_key} -> {new.other_key}"
        out.append(
            Change("binding", None, "other_key", old.other_key, new.other_key, effect, words)
        )
    before, after = old.rule.components, new.rule.components
    if frozenset(before) != frozenset(after):
        if not after:
            effect, words = LOOSENS, f"binding turned off (was {'+'.join(before)})"
        elif not before:
            effect, words = TIGHTENS, f"binding turned on: {'+'.join(after)}"
        else:
            # a fingerprint of more (or finer) parts differs more often: more refusals
            effect = _partition_effect(tuple(after), tuple(before))
            words = f"binding components [{'+'.join(before)}] -> [{'+'.join(after)}]"
        out.append(Change("binding", None, "components", list(before), list(after), effect, words))
    if not after:
        return out  # no binding: its other fields mean nothing
    if "ip_prefix" in after:
        for label, was, now in (
            ("ipv4_prefix", old.rule.ipv4_prefix, new.rule.ipv4_prefix),
            ("ipv6_prefix", old.rule.ipv6_prefix, new.rule.ipv6_prefix),
        ):
            if was != now:  # a longer prefix is a finer fingerprint: more refusals
                out.append(
                    Change(
                        "binding",
                        None,
                        label,
                        was,
                        now,
                        _more(was, now, True),
                        f"binding {label} /{was} -> /{now}",
                    )
                )
    if old.max_fingerprints != new.max_fingerprints:
        effect = _more(old.max_fingerprints, new.max_fingerprints, False)
        out.append(
            Change(
                "binding",
                None,
                "max_fingerprints",
                old.max_fingerprints,
                new.max_fingerprints,
                effect,
                f"binding max fingerprints {old.max_fingerprints} -> {new.max_fingerprints}",
            )
        )
    if old.action != new.action:
        effect = _ordered(old.action, new.action, _ACTIONS, TIGHTENS)
        out.append(
            Change(
                "binding",
                None,
                "action",
                old.action,
                new.action,
                effect,
                f"binding action {old.action} -> {new.action}",
            )
        )
    if old.bind_at != new.bind_at:
        effect = TIGHTENS if new.bind_at == "issue" else LOOSENS
        out.append(
            Change(
                "binding",
                None,
                "bind_at",
                old.bind_at,
                new.bind_at,
                effect,
                f"binding bind_at {old.bind_at} -> {new.bind_at}",
            )
        )
    return out


def _uses(old: PolicySet, new: PolicySet, components: frozenset[str]) -> bool:
    """Whether a policy or the penalty box of either set counts by one of ``components``."""
    for policies in (old, new):
        if any(not components.isdisjoint(p.partition) for p in policies.policies):
            return True
        if policies.penalty is not None and policies.penalty.subject in components:
            return True
    return False


def diff(old: PolicySet, new: PolicySet) -> list[Change]:
    """Every effective change from ``old`` to ``new``; empty when they mean the same."""
    out = _policies(old, new)
    out += _penalty(old.penalty, new.penalty)
    out += _binding(old.binding, new.binding)
    # which addresses the set-wide prefixes shape: IPv4 only through the ip_prefix
    # partition and box subject; IPv6 through every address partition and the box
    by_prefix = _uses(old, new, frozenset({"ip_prefix"}))
    by_address = _uses(old, new, frozenset({"ip_prefix", "client_ip"}))
    for label, was, now, used in (
        ("ipv4", old.ipv4_prefix, new.ipv4_prefix, by_prefix),
        ("ipv6", old.ipv6_prefix, new.ipv6_prefix, by_address),
    ):
        if was != now:  # a shorter prefix groups more clients: their counters tighten
            out.append(
                Change(
                    "ip_prefix",
                    None,
                    label,
                    was,
                    now,
                    _more(was, now, False) if used else NEUTRAL,
                    f"ip_prefix {label} /{was} -> /{now}"
                    + ("" if used else " (nothing is counted by it)"),
                )
            )
    if old.on_store_error != new.on_store_error:
        effect = TIGHTENS if new.on_store_error == "fail_closed" else LOOSENS
        consequence = (
            "503 while the store cannot answer"
            if new.on_store_error == "fail_closed"
            else "local per-replica limits while the store cannot answer"
        )
        out.append(
            Change(
                "on_store_error",
                None,
                "on_store_error",
                old.on_store_error,
                new.on_store_error,
                effect,
                f"on_store_error {old.on_store_error} -> {new.on_store_error}: {consequence}",
            )
        )
    return out


def tightens(changes: Iterable[Change]) -> bool:
    return any(c.effect == TIGHTENS for c in changes)


def render_text(changes: list[Change]) -> list[str]:
    """One line per change, its effect in brackets when it has one; then a summary."""
    if not changes:
        return ["no change"]
    marks = {TIGHTENS: "  [tightens]", LOOSENS: "  [loosens]", NEUTRAL: ""}
    lines = [f"{c.text}{marks[c.effect]}" for c in changes]
    tight = sum(c.effect == TIGHTENS for c in changes)
    lines.append(f"{len(changes)} change(s), {tight} tightening")
    return lines
