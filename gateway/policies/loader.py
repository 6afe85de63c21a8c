"""Reading a policy set from a file or a directory of ``*.yaml`` files.

Every error names the file, the line and the field; all errors of all files are reported
together. The result is compiled into an immutable :class:`gateway.core.policy.PolicySet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.yaml_source import SourceError, read_yaml, validate_model
from gateway.core.fingerprint import FingerprintRule
from gateway.core.policy import Binding, Limit, Override, Penalty, Policy, PolicySet
from gateway.policies.schema import LimitModel, PolicyFile, PolicyModel

SET_WIDE = ("binding", "penalty_box", "ip_prefix", "on_store_error")


@dataclass
class LoadedPolicies:
    policies: PolicySet
    #: where each policy and set-wide section was defined ("file:line")
    origins: dict[str, str] = field(default_factory=dict)
    files: tuple[Path, ...] = ()


def policy_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if path.is_file():
        return [path]
    raise SourceError(f"{path}: no such policy file or directory")


def _limit(model: LimitModel) -> Limit:
    return Limit(rate=model.rate, per_seconds=model.per, burst=model.burst)


def _policy(model: PolicyModel) -> Policy:
    match = model.match

    def opt(values: Sequence[str] | None) -> frozenset[str] | None:
        return frozenset(values) if values is not None else None

    return Policy(
        name=model.name,
        routes=frozenset(match.routes),
        partition=tuple(model.partition),
        limit=_limit(model.limit),
        mode=model.mode,
        models=opt(match.models),
        key_ids=opt(match.key_ids),
        methods=opt(match.methods),
        overrides=tuple(
            Override(frozenset(o.key_ids), _limit(o.limit) if o.limit else None, o.mode)
            for o in model.overrides
        ),
    )


def load_policies(path: Path) -> LoadedPolicies:
    """Load and compile; raises :class:`SourceError` listing every problem."""
    files = policy_files(path)
    errors: list[str] = []
    origins: dict[str, str] = {}
    policies: list[Policy] = []
    sections: dict[str, object] = {}
    for file in files:
        try:
            doc = read_yaml(file)
            if doc.data is None:
                continue
            if not isinstance(doc.data, dict):
                raise SourceError(f"{doc.where(())}: a policy file must be a mapping")
            parsed = validate_model(PolicyFile, doc)
        except SourceError as exc:
            errors.append(str(exc))
            continue
        for index, model in enumerate(parsed.policies):
            where = doc.where(("policies", index, "name"))
            if model.name in origins:
                errors.append(
                    f"{where}: policies[{index}].name: duplicate policy name {model.name!r} "
                    f"(first defined at {origins[model.name]})"
                )
                continue
            origins[model.name] = where
            policies.append(_policy(model))
        for section in SET_WIDE:
            value = getattr(parsed, section)
            if value is None:
                continue
            where = doc.where((section,))
            if section in sections:
                errors.append(
                    f"{where}: {section}: defined twice (first at {origins['@' + section]})"
                )
                continue
            sections[section] = value
            origins["@" + section] = where
    if errors:
        raise SourceError("\n".join(errors))
    return LoadedPolicies(_compile(policies, sections, files), origins, tuple(files))


def _compile(policies: list[Policy], sections: dict[str, object], files: list[Path]) -> PolicySet:
    parsed = PolicyFile.model_validate(sections)
    binding = parsed.binding
    compiled_binding = Binding()
    if binding is not None:
        compiled_binding = Binding(
            rule=FingerprintRule(
                components=tuple(binding.components),
                ipv4_prefix=binding.ipv4_prefix,
                ipv6_prefix=binding.ipv6_prefix,
            ),
            mode=binding.mode,
            browser_mode=binding.browser_mode,
            bind_at=binding.bind_at,
            max_fingerprints=binding.max_fingerprints,
            action=binding.action,
            other_key=binding.other_key,
        )
    penalty = None
    box = parsed.penalty_box
    if box is not None and box.enabled:
        penalty = Penalty(
            subject=box.subject,
            window_ms=int(box.window * 1000),
            threshold=box.threshold,
            cooldown_ms=int(box.cooldown * 1000),
            count=frozenset(box.count),
        )
    prefix = parsed.ip_prefix
    return PolicySet(
        policies=tuple(policies),
        binding=compiled_binding,
        penalty=penalty,
        ipv4_prefix=prefix.ipv4 if prefix else 24,
        ipv6_prefix=prefix.ipv6 if prefix else 64,
        on_store_error=parsed.on_store_error or "fail_closed",
        sources=tuple(str(f) for f in files),
    )
