"""The signing check names where the keys in force were read, by the loader's own order."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import Config
from gateway.config.signing_keys import ENV_KEYS, ENV_KEYS_FILE
from gateway.doctor import signing
from gateway.doctor.findings import Finding

SECRET = "s" * 48


def config(signing_keys_file: Path | None) -> Config:
    return Config.model_validate(
        {
            "models": {"demo": {}},
            "store": {"type": "redis", "url": "redis://127.0.0.1:1"},
            "tokens": {"signing_keys_file": signing_keys_file},
        }
    )


@pytest.fixture
def configured(tmp_path: Path) -> Path:
    path = tmp_path / "configured_keys"
    path.write_text(f"c1:{SECRET}\n")
    return path


@pytest.fixture
def named_by_env(tmp_path: Path) -> Path:
    path = tmp_path / "env_keys"
    path.write_text(f"f1:{SECRET}\nf2:{SECRET}\n")
    return path


def summary(found: list[Finding]) -> str:
    (first, *_) = found
    assert first.severity == "ok", found
    return first.message


def test_the_configured_file_is_named(configured: Path) -> None:
    assert summary(signing.check(config(configured), {})).startswith(f"{configured}: 1 key(s)")


def test_the_file_variable_wins_over_the_configured_file(
    configured: Path, named_by_env: Path
) -> None:
    environ = {ENV_KEYS_FILE: str(named_by_env)}
    assert summary(signing.check(config(configured), environ)).startswith(
        f"{named_by_env}: 2 key(s)"
    )


def test_the_keys_variable_wins_over_both(configured: Path, named_by_env: Path) -> None:
    environ = {ENV_KEYS: f"e1:{SECRET}", ENV_KEYS_FILE: str(named_by_env)}
    found = signing.check(config(configured), environ)
    assert summary(found).startswith(f"environment {ENV_KEYS}: 1 key(s)")
    assert [f.check for f in found[1:]] == ["signing.shadowed"]
