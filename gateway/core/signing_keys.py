"""The token signing key set: ``kid:secret`` entries, the first one signs, all verify.

Rotation without rejecting live tokens, across a rolling deployment:

1. append the new key at the end everywhere (it verifies, nothing signs with it yet);
2. move it to the front (it signs; tokens signed by the old key still verify);
3. after one token TTL, remove the old key.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

KID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_SECRET_BYTES = 32
ENV_KEYS = "GATEWAY_SIGNING_KEYS"
ENV_KEYS_FILE = "GATEWAY_SIGNING_KEYS_FILE"


class SigningKeyError(ValueError):
    """The signing key material is missing or malformed."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class KeySet:
    keys: tuple[SigningKey, ...]
    generated: bool = False

    def __post_init__(self) -> None:
        if not self.keys:
            raise SigningKeyError("the signing key set is empty")

    @property
    def active(self) -> SigningKey:
        return self.keys[0]

    def by_kid(self) -> dict[str, bytes]:
        return {k.kid: k.secret for k in self.keys}


def parse_keyset(text: str, source: str) -> KeySet:
    """Entries separated by newlines or commas; blank lines and ``#`` comments ignored."""
    keys: list[SigningKey] = []
    seen: set[str] = set()
    entries = [e.strip() for line in text.splitlines() for e in line.split(",")]
    for number, entry in enumerate(entries, start=1):
        if not entry or entry.startswith("#"):
            continue
        kid, sep, secret = entry.partition(":")
        kid, secret = kid.strip(), secret.strip()
        if not sep or not KID_PATTERN.match(kid):
            raise SigningKeyError(
                f"{source}: entry {number}: expected 'kid:secret' with kid of "
                "letters, digits, '.', '_' or '-'"
            )
        if kid in seen:
            raise SigningKeyError(f"{source}: entry {number}: duplicate kid {kid!r}")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise SigningKeyError(
                f"{source}: entry {number} (kid {kid!r}): secret shorter than "
                f"{MIN_SECRET_BYTES} bytes"
            )
        seen.add(kid)
        keys.append(SigningKey(kid=kid, secret=secret.encode()))
    if not keys:
        raise SigningKeyError(f"{source}: no signing key found")
    return KeySet(tuple(keys))


def generated_keyset() -> KeySet:
    """A random key for a single-process gateway; tokens die with the process."""
    return KeySet((SigningKey("generated", secrets.token_urlsafe(48).encode()),), generated=True)


def load_keyset(
    environ: Mapping[str, str], configured_file: Path | None, *, allow_generated: bool
) -> KeySet:
    """From ``GATEWAY_SIGNING_KEYS``, else ``GATEWAY_SIGNING_KEYS_FILE``, else the
    configured file, else (memory store only) a generated key."""
    if environ.get(ENV_KEYS, "").strip():
        return parse_keyset(environ[ENV_KEYS], f"environment {ENV_KEYS}")
    file_name = environ.get(ENV_KEYS_FILE, "").strip()
    path = Path(file_name) if file_name else configured_file
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SigningKeyError(f"{path}: cannot read signing keys: {exc.strerror}") from None
        return parse_keyset(text, str(path))
    if allow_generated:
        return generated_keyset()
    raise SigningKeyError(
        f"no token signing keys: set {ENV_KEYS} ('kid:secret,...'), {ENV_KEYS_FILE} or "
        "tokens.signing_keys_file; replicas sharing a Redis store must share these keys"
    )
