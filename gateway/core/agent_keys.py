"""Public agent keys: ``pak_<key id>_<secret><checksum>``.

* ``pak_``: a recognisable prefix, so secret scanners and humans know what leaked;
* key id: 12 base62 characters (71 bits), public, for an O(1) lookup;
* secret: 43 base62 characters from 32 random bytes (256 bits);
* checksum: 6 base62 characters of CRC32 over everything before it, so a mistyped or
  forged key is refused before any lookup or hashing.

Only an argon2id hash of the whole key is stored (see :mod:`gateway.core.key_hash`).
"""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass

PREFIX = "pak_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_ID_LEN = 12
SECRET_LEN = 43
CHECKSUM_LEN = 6
KEY_ID_PATTERN = re.compile(rf"^[0-9A-Za-z]{{{KEY_ID_LEN}}}$")
_KEY = re.compile(
    rf"^{PREFIX}([0-9A-Za-z]{{{KEY_ID_LEN}}})_([0-9A-Za-z]{{{SECRET_LEN}}})"
    rf"([0-9A-Za-z]{{{CHECKSUM_LEN}}})$"
)
MAX_KEY_LEN = len(PREFIX) + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN


def _base62(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        out.append(ALPHABET[digit])
    if number:
        raise ValueError("number does not fit in width")
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LEN)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key_id: str
    key: str

    def __repr__(self) -> str:  # never show the secret
        return f"ParsedKey(key_id={self.key_id!r})"


def generate() -> ParsedKey:
    """A new key with a fresh key id and 256 bits of secret."""
    key_id = _base62(secrets.randbits(71), KEY_ID_LEN)
    secret = _base62(secrets.randbits(256), SECRET_LEN)
    body = f"{PREFIX}{key_id}_{secret}"
    return ParsedKey(key_id=key_id, key=body + _checksum(body))


def parse(candidate: str) -> ParsedKey | None:
    """The key's parts when ``candidate`` is well formed with a valid checksum, else None."""
    if len(candidate) != MAX_KEY_LEN:
        return None
    match = _KEY.match(candidate)
    if match is None:
        return None
    body = candidate[:-CHECKSUM_LEN]
    if not secrets.compare_digest(_checksum(body), match.group(3)):
        return None
    return ParsedKey(key_id=match.group(1), key=candidate)
