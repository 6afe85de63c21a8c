"""What a check found: a value object per finding, and the report's two renderings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import orjson

Severity = Literal["ok", "warning", "error"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One result. ``check`` names the check family and what it looked at
    (``policies.protection``); it is also the event name when ``serve`` logs it."""

    check: str
    severity: Severity
    message: str
    fix: str = ""

    @property
    def event(self) -> str:
        return self.check.replace(".", "_")


def ok(check: str, message: str) -> Finding:
    return Finding(check, "ok", message)


def warning(check: str, message: str, fix: str) -> Finding:
    return Finding(check, "warning", message, fix)


def error(check: str, message: str, fix: str) -> Finding:
    return Finding(check, "error", message, fix)


def count(findings: Sequence[Finding], severity: Severity) -> int:
    return sum(1 for f in findings if f.severity == severity)


def summary(findings: Sequence[Finding]) -> str:
    errors, warnings = count(findings, "error"), count(findings, "warning")
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"


def render_text(findings: Sequence[Finding], source: str) -> str:
    lines = [f"gateway doctor: {source}"]
    for f in findings:
        first, *rest = f.message.splitlines() or [""]
        lines.append(f"{f.severity:<8} {f.check:<22} {first}")
        lines.extend(f"{'':<31} {line}" for line in rest)
        if f.fix:
            lines.append(f"{'':<31} fix: {f.fix}")
    lines.append(summary(findings))
    return "\n".join(lines)


def render_json(findings: Sequence[Finding], source: str) -> str:
    document = {
        "config": source,
        "ok": count(findings, "error") == 0,
        "errors": count(findings, "error"),
        "warnings": count(findings, "warning"),
        "findings": [asdict(f) for f in findings],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
