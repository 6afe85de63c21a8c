"""The protection rule: which policy sets leave the gateway without its defences."""

from pathlib import Path

import pytest

from gateway.core.protection import protection_gaps
from gateway.policies.loader import load_policies

ROOT = Path(__file__).resolve().parents[2]
BOX = "penalty_box: {threshold: 20, window: 1m, cooldown: 5m}\n"
LIMIT = "partition: [client_ip], limit: {rate: 1, per: 1s, burst: 1}"


def rule(name: str, match: str, extra: str = "") -> str:
    return f"  - {{name: {name}, match: {{{match}}}, {LIMIT}{extra}}}\n"


TOKEN = rule("t", "routes: [token]")
SEND = rule("s", "routes: [send]")
ALL_GAPS = ["no_token_limit", "no_send_limit", "penalty_box_off"]


def gaps(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return [gap.code for gap in protection_gaps(load_policies(path).policies)]


def test_the_shipped_policies_protect() -> None:
    assert protection_gaps(load_policies(ROOT / "policies").policies) == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ALL_GAPS),
        ("# nothing yet\n", ALL_GAPS),
        (BOX + "policies:\n" + TOKEN + SEND, []),
        ("policies:\n" + TOKEN + SEND, ["penalty_box_off"]),
        ("penalty_box: {enabled: false}\npolicies:\n" + TOKEN + SEND, ["penalty_box_off"]),
        (BOX + "policies:\n" + TOKEN, ["no_send_limit"]),
        (BOX + "policies:\n" + SEND, ["no_token_limit"]),
        # counted, never refused
        (
            BOX + "policies:\n" + TOKEN + rule("s", "routes: [send]", ", mode: shadow"),
            ["no_send_limit"],
        ),
        # only some models, some keys or another method: the other requests are unlimited
        (
            BOX + "policies:\n" + rule("t", "routes: [token], models: [demo]") + SEND,
            ["no_token_limit"],
        ),
        (
            BOX + "policies:\n" + TOKEN + rule("s", "routes: [send], key_ids: [Ab3dE5gH7jK9]"),
            ["no_send_limit"],
        ),
        (
            BOX + "policies:\n" + TOKEN + rule("s", "routes: [send], methods: [PUT]"),
            ["no_send_limit"],
        ),
        (BOX + "policies:\n" + TOKEN + rule("s", "routes: [send], methods: [POST]"), []),
        # one route-wide limit is enough, whatever else is filtered
        (BOX + "policies:\n" + TOKEN + SEND + rule("s2", "routes: [send], models: [demo]"), []),
        (BOX + "policies:\n" + rule("both", "routes: [token, send]"), []),
    ],
)
def test_gaps(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert gaps(tmp_path, text) == expected


def test_each_gap_says_what_is_missing_and_how_to_fix_it(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(BOX + "policies:\n" + rule("t", "routes: [token]", ", mode: shadow"))
    found = protection_gaps(load_policies(path).policies)
    assert [g.missing for g in found] == [
        "no enforcing limit on the token route (its policies are all in shadow mode: "
        "counted, never refused)",
        "no enforcing limit on the send route (no policy matches it)",
    ]
    assert all("match: {routes: [" in g.fix for g in found)
