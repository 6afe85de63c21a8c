"""`gateway keys create --origin` accepts exactly the origins the gateway can serve: what it
refuses it names, and what it accepts a browser on that origin is answered for."""

import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.harness import TOKEN_URL
from tests.support.processes import run_cli
from tests.support.stack import write_config

pytestmark = pytest.mark.slow  # gateway processes


@pytest.mark.parametrize(
    ("origin", "reason"),
    [
        ("https://user@shop.example", "no user info"),
        ("https://shop.example:99999", "port 99999 is out of range"),
        ("https://shop.example/checkout", "no path"),
        ("https://*.shop.example", "wildcards are not supported"),
        ("null", "opaque origin"),
        ("https://shop..example", "empty label"),
        ("https://xn--zz.example", "not valid punycode"),
    ],
)
def test_keys_create_refuses_an_origin_it_cannot_serve(
    tmp_path: Path, origin: str, reason: str
) -> None:
    config = write_config(tmp_path)
    args = ("--origin", "https://fine.example", "--origin", origin)
    result = run_cli("keys", "create", "--model", "demo", *args, "--config", str(config))
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith(f"gateway: origin {origin!r}: ")
    assert reason in result.stderr
    assert result.stdout == ""  # no key printed
    listed = run_cli("keys", "list", "--json", "--config", str(config))
    assert json.loads(listed.stdout) == []  # and none stored


async def test_origins_the_cli_accepts_are_served_to_their_browsers(
    tmp_path: Path, gateway_factory: Any
) -> None:
    config = write_config(tmp_path)
    written = ["https://Bücher.example:443/", "https://shop_x.example", "http://[0:0::1]:8081"]
    args = [part for origin in written for part in ("--origin", origin)]
    result = run_cli("keys", "create", "--model", "demo", "--json", *args, "--config", str(config))
    assert result.returncode == 0, result.stderr
    key = json.loads(result.stdout)["key"]
    sent_by_browsers = [
        "https://xn--bcher-kva.example",
        "https://shop_x.example",
        "http://[::1]:8081",
    ]
    assert f"allowed origins: {' '.join(sent_by_browsers)}" in result.stderr

    gateway = await gateway_factory()  # the same key file as the command
    for origin in sent_by_browsers:
        async with gateway.http.get(
            gateway.url + TOKEN_URL.format(model="demo"),
            headers=gateway.headers({"Authorization": f"Bearer {key}", "Origin": origin}),
        ) as resp:
            body = await resp.json()
            assert resp.status == 200, (origin, body)
            assert resp.headers["Access-Control-Allow-Origin"] == origin


async def test_a_stored_origin_that_never_matches_is_reported(
    tmp_path: Path, gateway_factory: Any
) -> None:
    config = write_config(tmp_path)
    created = run_cli(
        "keys",
        "create",
        *("--model", "demo", "--origin", "https://shop.example", "--json"),
        *("--config", str(config)),
    )
    key_id = json.loads(created.stdout)["key_id"]
    keys_file = tmp_path / "keys.yaml"  # edited by hand, or written by an older version
    keys_file.write_text(
        keys_file.read_text().replace("https://shop.example", "https://u@x.example")
    )

    listed = run_cli("keys", "list", "--config", str(config))
    assert listed.returncode == 0
    assert (
        f"gateway: warning: key {key_id}: origin 'https://u@x.example' never matches: "
        "an origin has no user info"
    ) in listed.stderr

    with capture_logs() as events:
        gateway = await gateway_factory()
    reported = [e for e in events if e["event"] == "keystore_origin_invalid"]
    assert len(reported) == 1, events
    assert reported[0]["log_level"] == "error"
    assert reported[0]["key_id"] == key_id
    assert reported[0]["origin"] == "https://u@x.example"
    assert reported[0]["where"].startswith(f"{keys_file}:")
    assert reported[0]["where"].endswith("keys[0].origins[0]")
    # the key itself keeps working for servers (no Origin header)
    async with gateway.http.get(
        gateway.url + TOKEN_URL.format(model="demo"),
        headers=gateway.headers({"Authorization": f"Bearer {json.loads(created.stdout)['key']}"}),
    ) as resp:
        assert resp.status == 200
