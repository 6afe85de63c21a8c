"""`gateway widget snippet` as a process: the tag to paste, and its refusals."""

import base64
import hashlib
import json
import re
from pathlib import Path

import pytest

from tests.support.processes import run_cli
from tests.support.stack import write_config

pytestmark = pytest.mark.slow  # gateway processes

WIDGET = Path(__file__).resolve().parents[2] / "gateway" / "static" / "widget.js"


def create_key(config: Path, *args: str) -> dict[str, str]:
    created = run_cli("keys", "create", "--json", "--config", str(config), *args)
    assert created.returncode == 0, created.stderr
    out: dict[str, str] = json.loads(created.stdout)
    return out


def test_the_snippet_names_the_versioned_script_and_its_sha384(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    made = create_key(config, "--model", "demo", "--origin", "https://shop.example")
    printed = run_cli(
        "widget", "snippet", "--key-id", made["key_id"], "--key", made["key"],
        "--gateway-url", "https://chat.example/", "--model", "demo", "--config", str(config),
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    body = WIDGET.read_bytes()
    version = hashlib.sha256(body).hexdigest()[:16]
    sri = "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode()
    assert printed.stdout == (
        f'<script src="https://chat.example/widget.{version}.js" integrity="{sri}" '
        f'crossorigin="anonymous" data-key="{made["key"]}" data-model="demo" defer></script>\n'
    )
    assert "https://shop.example" in printed.stderr

    # without the key (only its hash is stored): a placeholder, and why
    printed = run_cli(
        "widget", "snippet", "--key-id", made["key_id"], "--gateway-url", "https://chat.example",
        "--locale", "fr", "--config", str(config),
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert re.search(
        r'data-key="PASTE-THE-KEY-HERE" data-model="demo" data-locale="fr"', printed.stdout
    )
    assert "only its hash is stored" in printed.stderr


def test_the_snippet_is_refused_for_what_cannot_work(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    made = create_key(config, "--model", "demo")
    other = create_key(config, "--model", "demo")
    assert run_cli("keys", "revoke", other["key_id"], "--config", str(config)).returncode == 0
    base = ("widget", "snippet", "--config", str(config), "--gateway-url", "https://chat.example")
    cases = {
        ("--key-id", "AAAAAAAAAAAA"): "no key with id 'AAAAAAAAAAAA'",
        ("--key-id", other["key_id"]): f"key {other['key_id']} is revoked",
        ("--key-id", made["key_id"], "--model", "gpt"): "does not serve model 'gpt'",
        ("--key-id", made["key_id"], "--key", other["key"]): "--key is not the key with id",
        ("--key-id", made["key_id"], "--gateway-url", "ftp://x"): "--gateway-url: expected",
    }
    for args, message in cases.items():
        refused = run_cli(*base, *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert message in refused.stderr, (args, refused.stderr)
        assert refused.stdout == ""
    # a key without origins works only from servers: the snippet says so
    printed = run_cli(*base, "--key-id", made["key_id"])
    assert "lists no origin" in printed.stderr
