"""Where the token signing keys come from: environment, file, or a generated key."""

from pathlib import Path

import pytest

from gateway.config.signing_keys import ENV_KEYS, ENV_KEYS_FILE, load_keyset
from gateway.core.signing_keys import SigningKeyError


def test_keyset_sources(tmp_path: Path) -> None:
    secret_file = tmp_path / "keys"
    secret_file.write_text("filekey:" + "f" * 40 + "\n")
    env_keys = {ENV_KEYS: "envkey:" + "e" * 40}
    assert load_keyset(env_keys, secret_file, allow_generated=False).active.kid == "envkey"
    assert load_keyset({}, secret_file, allow_generated=False).active.kid == "filekey"
    file_env = {ENV_KEYS_FILE: str(secret_file)}
    assert load_keyset(file_env, None, allow_generated=False).active.kid == "filekey"
    assert load_keyset({}, None, allow_generated=True).generated
    with pytest.raises(SigningKeyError, match="no token signing keys"):
        load_keyset({}, None, allow_generated=False)


def test_an_unreadable_key_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(SigningKeyError, match=f"{missing}: cannot read signing keys"):
        load_keyset({}, missing, allow_generated=True)
