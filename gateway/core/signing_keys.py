"""The token signing key set: ``kid:secret`` entries, the first one signs, all verify.

Rotation without rejecting live tokens, across a rolling deployment:

1. append the new key at the end everywhere (it verifies, nothing signs with it yet);
2. move it to the front (it signs; tokens signed by the old key still verify);
3. after one token TTL, remove the old key.

Parsing only: :mod:`gateway.config.signing_keys` reads the keys from the environment or a
file.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

KID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_SECRET_BYTES = 32


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
    #: where the keys were read (a file, or the environment variable): for messages
    source: str = "generated"

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
    return KeySet(tuple(keys), source=source)


def generated_keyset() -> KeySet:
    """A random key for a single-process gateway; tokens die with the process."""
    return KeySet((SigningKey("generated", secrets.token_urlsafe(48).encode()),), generated=True)
