"""Redaction: the processor that runs just before rendering, so no secret reaches a log.

What is removed, wherever it appears (event text, any field, nested lists and dicts,
rendered tracebacks):

* public agent keys (``pak_...``), JWT-shaped strings (``eyJ...``), the credential after
  ``Bearer``/``Basic``, and the password of ``scheme://user:password@host`` URLs;
* every registered secret value (token signing keys, see :func:`register_secret`);
* the whole value of any field named like a credential (``authorization``, ``token``,
  ``client_token``, ``key``, ``api_key``, ``secret``, ``password``, ``cookie``, ...);
  numbers and booleans under such names are kept. ``key_id``, ``token_hash`` and
  plurals such as ``keys`` (a count or a store kind) are not credentials and stay.

The function is pure apart from the registered secrets; tests call it directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from datetime import date, datetime
from typing import Any

REDACTED = "[REDACTED]"
SENSITIVE_FIELD = re.compile(
    r"(?:^|_)(?:authorization|auth|token|key|secret|secrets|password|passwd|"
    r"cookie|cookies|credential|credentials|signature)$",
    re.IGNORECASE,
)
PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"pak_[0-9A-Za-z_]+"), "pak_" + REDACTED),
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    (re.compile(r"\b(Bearer|Basic)(\s+)[^\s\"',;]+", re.IGNORECASE), r"\1\2" + REDACTED),
    (
        re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s:@]*:[^/\s@]+@", re.IGNORECASE),
        r"\1" + REDACTED + "@",
    ),
)
#: a text in which none of these occurs holds nothing that PATTERNS would change, so it
#: skips them; case-insensitive, so it errs on the safe side. Registered secrets join it.
MAY_HOLD_SECRET = (r"pak_", r"eyJ", r"bearer", r"basic", r"://")
#: shorter registered secrets are ignored (they would match ordinary words)
MIN_SECRET_CHARS = 8
_PLAIN = (int, float, bool, type(None), datetime, date)
#: field names seen so far -> whether they name a credential (bounded: names are code)
_FIELD_CACHE_SIZE = 4096


class Redactor:
    """A structlog processor holding the set of secret values to remove."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._secret_re: re.Pattern[str] | None = None
        self._scan = re.compile("|".join(MAY_HOLD_SECRET), re.IGNORECASE)
        self._sensitive: dict[str, bool] = {}
        for secret in secrets:
            self.add_secret(secret)

    def add_secret(self, secret: str | bytes) -> None:
        if isinstance(secret, bytes):
            secret = secret.decode("utf-8", "replace")
        if len(secret) < MIN_SECRET_CHARS or secret in self._secrets:
            return
        self._secrets.add(secret)
        ordered = sorted(self._secrets, key=len, reverse=True)
        escaped = [re.escape(s) for s in ordered]
        self._secret_re = re.compile("|".join(escaped))
        self._scan = re.compile("|".join([*MAY_HOLD_SECRET, *escaped]), re.IGNORECASE)

    def text(self, value: str) -> str:
        if self._scan.search(value) is None:  # one scan: nothing to redact in most texts
            return value
        if self._secret_re is not None:
            value = self._secret_re.sub(REDACTED, value)
        for pattern, replacement in PATTERNS:
            value = pattern.sub(replacement, value)
        return value

    def sensitive(self, name: str) -> bool:
        """Whether a field called ``name`` holds a credential (remembered per name)."""
        known = self._sensitive.get(name)
        if known is None:
            known = SENSITIVE_FIELD.search(name.replace("-", "_")) is not None
            if len(self._sensitive) < _FIELD_CACHE_SIZE:
                self._sensitive[name] = known
        return known

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, bytes | bytearray):
            return self.text(bytes(value).decode("utf-8", "replace"))
        if isinstance(value, MutableMapping | dict):
            return self.mapping(value)
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(item) for item in value]
        return self.text(str(value))

    def mapping(self, data: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in data.items():
            key = str(name)
            if isinstance(value, _PLAIN):  # numbers, booleans, None, dates: never redacted
                out[key] = value
            elif self.sensitive(key):
                out[key] = REDACTED
            else:
                out[key] = self.value(value)
        return out

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        return self.mapping(event_dict)


#: the process-wide redactor installed by :func:`gateway.observability.logging.configure`
REDACTOR = Redactor()


def register_secret(secret: str | bytes) -> None:
    """Never log this value (token signing keys, store passwords, ...)."""
    REDACTOR.add_secret(secret)


def redact(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """The processor form of :data:`REDACTOR`."""
    return REDACTOR(logger, method_name, event_dict)
