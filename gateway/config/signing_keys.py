"""Where the token signing keys come from: the environment, a mounted file, or (one process
on the memory store only) a key generated at start. Parsing is
:func:`gateway.core.signing_keys.parse_keyset`'s."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gateway.core.signing_keys import KeySet, SigningKeyError, generated_keyset, parse_keyset

ENV_KEYS = "GATEWAY_SIGNING_KEYS"
ENV_KEYS_FILE = "GATEWAY_SIGNING_KEYS_FILE"


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
