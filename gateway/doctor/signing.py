"""The token signing keys: present where required, long enough for the algorithm, few."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config import Config
from gateway.config.signing_keys import ENV_KEYS, ENV_KEYS_FILE, load_keyset
from gateway.core.signing_keys import KeySet, SigningKeyError
from gateway.core.token_codec import TokenCodec
from gateway.doctor.findings import Finding, error, ok, warning

#: more keys than this verify tokens: old ones are probably left over from rotations
MAX_KEYS = 3
FIX_MISSING = (
    f"set {ENV_KEYS}='kid:secret' (a secret of 64 random characters: python3 -c "
    "'import secrets; print(secrets.token_urlsafe(48))'), or mount a file and set "
    f"{ENV_KEYS_FILE} or tokens.signing_keys_file; every replica needs the same keys"
)


def _codec_check(config: Config, keyset: KeySet) -> str | None:
    """The token codec's own refusal of these keys (length per algorithm), if any."""
    tokens = config.tokens
    try:
        TokenCodec(
            keyset,
            issuer=tokens.issuer,
            audience=tokens.audience,
            ttl_seconds=tokens.ttl_seconds,
            algorithm=tokens.algorithm,
            leeway_seconds=tokens.leeway_seconds,
        )
    except SigningKeyError as exc:
        return str(exc)
    return None


def check(config: Config, environ: Mapping[str, str]) -> list[Finding]:
    memory = config.store.type == "memory"
    try:
        keyset = load_keyset(environ, config.tokens.signing_keys_file, allow_generated=memory)
    except SigningKeyError as exc:
        return [error("signing", str(exc), FIX_MISSING)]
    if keyset.generated:
        return [
            warning(
                "signing.generated",
                "no token signing keys: a random key is generated at start, so tokens do "
                "not survive a restart (fine for one process on the memory store)",
                FIX_MISSING,
            )
        ]
    source = keyset.source
    refusal = _codec_check(config, keyset)
    if refusal is not None:
        return [
            error(
                "signing",
                f"{source}: {refusal}",
                f"use secrets of at least that length for {config.tokens.algorithm}",
            )
        ]
    findings = [
        ok(
            "signing",
            f"{source}: {len(keyset.keys)} key(s) for {config.tokens.algorithm}, "
            f"{keyset.active.kid!r} signs",
        )
    ]
    if environ.get(ENV_KEYS, "").strip() and config.tokens.signing_keys_file is not None:
        findings.append(
            warning(
                "signing.shadowed",
                f"{ENV_KEYS} is set, so tokens.signing_keys_file "
                f"({config.tokens.signing_keys_file}) is not read",
                "keep the keys in one place",
            )
        )
    if len(keyset.keys) > MAX_KEYS:
        findings.append(
            warning(
                "signing.count",
                f"{source}: {len(keyset.keys)} keys verify tokens; a leaked retired key "
                "still forges tokens until it is removed",
                "remove keys retired more than one token lifetime (tokens.ttl_seconds) ago",
            )
        )
    secrets = [key.secret for key in keyset.keys]
    if len(set(secrets)) != len(secrets):
        findings.append(
            warning(
                "signing.reused",
                f"{source}: two kids share one secret",
                "give each kid its own secret",
            )
        )
    return findings
