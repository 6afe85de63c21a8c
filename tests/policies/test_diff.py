"""The pure comparison behind `gateway policies diff`: each kind of change and its effect."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policies.diff import diff, render_text, tightens
from gateway.policies.loader import load_policies

POLICY = """\
policies:
  - name: p
    match: {routes: [send]}
    partition: [PARTITION]
    limit: {rate: 10, per: 1m, burst: 5}
"""


def changes(tmp_path: Path, old: str, new: str) -> list[tuple[str, str, str]]:
    (tmp_path / "old.yaml").write_text(old)
    (tmp_path / "new.yaml").write_text(new)
    found = diff(
        load_policies(tmp_path / "old.yaml").policies,
        load_policies(tmp_path / "new.yaml").policies,
    )
    return [(c.field, c.effect, c.text) for c in found]


@pytest.mark.parametrize(
    ("old", "new", "effect"),
    [
        ("client_ip", "ip_prefix", "tightens"),  # a /24 shares one counter
        ("ip_prefix", "client_ip", "loosens"),
        ("token, conversation", "token", "tightens"),  # fewer parts: coarser
        ("token", "token, conversation", "loosens"),
        ("token", "global", "tightens"),
        ("token", "conversation", "tightens"),  # neither finer nor coarser: may refuse more
    ],
)
def test_partition_effects(tmp_path: Path, old: str, new: str, effect: str) -> None:
    found = changes(tmp_path, POLICY.replace("PARTITION", old), POLICY.replace("PARTITION", new))
    assert [(f, e) for f, e, _ in found] == [("partition", effect)]


def test_a_reordered_partition_is_neutral(tmp_path: Path) -> None:
    found = changes(
        tmp_path,
        POLICY.replace("PARTITION", "token, conversation"),
        POLICY.replace("PARTITION", "conversation, token"),
    )
    assert found == [
        (
            "partition",
            "neutral",
            "policy p: partition reordered (same counters, new keys) "
            "[token+conversation] -> [conversation+token]",
        )
    ]


BOX = "penalty_box: {subject: client_ip, window: 1m, threshold: 20, cooldown: 5m}\n"


@pytest.mark.parametrize(
    ("old", "new", "field", "effect"),
    [
        ("subject: client_ip", "subject: ip_prefix", "subject", "tightens"),
        ("window: 1m", "window: 2m", "window_seconds", "tightens"),
        ("threshold: 20", "threshold: 40", "threshold", "loosens"),
        ("cooldown: 5m", "cooldown: 10m", "cooldown_seconds", "tightens"),
        ("cooldown: 5m", "cooldown: 5m, count: [reuse]", "count", "loosens"),
    ],
)
def test_penalty_box_fields(tmp_path: Path, old: str, new: str, field: str, effect: str) -> None:
    found = changes(tmp_path, BOX, BOX.replace(old, new))
    assert [(f, e) for f, e, _ in found] == [(field, effect)]


def test_penalty_box_turned_on(tmp_path: Path) -> None:
    found = changes(tmp_path, "", BOX)
    assert found == [
        (
            "enabled",
            "tightens",
            "penalty box turned on: 20 x (invalid_key, invalid_token, reuse) per 1m by "
            "client_ip -> refused for 5m",
        )
    ]


@pytest.mark.parametrize(
    ("old", "new", "field", "effect"),
    [
        ("components: [ip_prefix]", "components: []", "components", "loosens"),
        ("components: []", "components: [client_ip]", "components", "tightens"),
        (
            "components: [ip_prefix]",
            "components: [ip_prefix, user_agent]",
            "components",
            "tightens",
        ),
        ("components: [client_ip]", "components: [ip_prefix]", "components", "loosens"),
        ("ipv4_prefix: 24", "ipv4_prefix: 32", "ipv4_prefix", "tightens"),
        ("max_fingerprints: 1", "max_fingerprints: 2", "max_fingerprints", "loosens"),
        ("action: flag", "action: deny", "action", "tightens"),
        ("action: revoke", "action: deny", "action", "loosens"),
        ("bind_at: first_use", "bind_at: issue", "bind_at", "tightens"),
        ("mode: proof_or_fingerprint", "mode: proof", "mode", "tightens"),
        ("mode: proof_or_fingerprint", "mode: fingerprint", "mode", "loosens"),
        ("browser_mode: proof", "browser_mode: proof_or_fingerprint", "browser_mode", "loosens"),
        ("mode: fingerprint", "mode: fingerprint, browser_mode: proof", "browser_mode", "tightens"),
    ],
)
def test_binding_fields(tmp_path: Path, old: str, new: str, field: str, effect: str) -> None:
    found = changes(tmp_path, f"binding: {{{old}}}\n", f"binding: {{{new}}}\n")
    assert [(f, e) for f, e, _ in found] == [(field, effect)]


def test_on_store_error_fail_open_to_fail_closed_tightens(tmp_path: Path) -> None:
    found = changes(tmp_path, "on_store_error: fail_open\n", "on_store_error: fail_closed\n")
    assert found == [
        (
            "on_store_error",
            "tightens",
            "on_store_error fail_open -> fail_closed: 503 while the store cannot answer",
        )
    ]


def test_methods_and_the_summary_line(tmp_path: Path) -> None:
    old = POLICY.replace("PARTITION", "token")
    new = old.replace("routes: [send]}", "routes: [send], methods: [POST]}")
    (tmp_path / "a.yaml").write_text(old)
    (tmp_path / "b.yaml").write_text(new)
    found = diff(
        load_policies(tmp_path / "a.yaml").policies, load_policies(tmp_path / "b.yaml").policies
    )
    assert not tightens(found)
    assert render_text(found) == [
        "policy p: match methods narrower: [any] -> [POST]  [loosens]",
        "1 change(s), 0 tightening",
    ]
    assert render_text([]) == ["no change"]


def test_ip_prefix_lengths_count_where_a_partition_uses_them(tmp_path: Path) -> None:
    by_prefix = POLICY.replace("PARTITION", "ip_prefix")
    narrower = "ip_prefix: {ipv4: 16}\n"
    assert changes(tmp_path, by_prefix, narrower + by_prefix) == [
        ("ipv4", "tightens", "ip_prefix ipv4 /24 -> /16")
    ]
    by_token = POLICY.replace("PARTITION", "token")
    assert changes(tmp_path, by_token, narrower + by_token) == [
        ("ipv4", "neutral", "ip_prefix ipv4 /24 -> /16 (nothing is counted by it)")
    ]
    # IPv6 clients are counted by their /64 under client_ip too
    by_ip = POLICY.replace("PARTITION", "client_ip")
    assert changes(tmp_path, by_ip, "ip_prefix: {ipv6: 48}\n" + by_ip) == [
        ("ipv6", "tightens", "ip_prefix ipv6 /64 -> /48")
    ]


def test_the_fields_of_a_binding_that_is_off_mean_nothing(tmp_path: Path) -> None:
    off = "binding: {components: [], action: flag, max_fingerprints: 1}\n"
    other = "binding: {components: [], action: revoke, max_fingerprints: 4, bind_at: issue}\n"
    assert changes(tmp_path, off, other) == []


RENAMABLE = """\
policies:
  - name: NAME
    match: {routes: [send], methods: [METHODS]}
    partition: [token, conversation]
    limit: {rate: RATE, burst: 5}
    mode: MODE
"""


def renamable(
    name: str, rate: str = "10, per: 1m", methods: str = "POST", mode: str = "enforce"
) -> str:
    return (
        RENAMABLE.replace("NAME", name)
        .replace("RATE", rate)
        .replace("METHODS", methods)
        .replace("MODE", mode)
    )


@pytest.mark.parametrize("mode", ["enforce", "shadow"])
def test_a_renamed_policy_is_a_rename_not_a_removal_and_an_addition(
    tmp_path: Path, mode: str
) -> None:
    found = changes(
        tmp_path, renamable("send-per-visitor", mode=mode), renamable("per-visitor", mode=mode)
    )
    assert found == [
        (
            "renamed",
            "neutral",
            "policy send-per-visitor renamed to per-visitor: the same limit; its counters "
            "start afresh under the new name (each partition's burst is full once), and its "
            "metrics and RateLimit-Policy carry the new name",
        )
    ]


def test_a_rename_restated_at_the_same_pace_is_still_a_rename(tmp_path: Path) -> None:
    old = renamable("a", rate="10, per: 1m", methods="POST, GET")
    new = renamable("b", rate="20, per: 2m", methods="GET, POST, GET")  # methods as a set
    assert [(f, e) for f, e, _ in changes(tmp_path, old, new)] == [
        ("renamed", "neutral"),
        ("rate", "neutral"),
    ]
    assert (
        changes(tmp_path, old, new)[1][2]
        == "policy b: rate restated at the same pace: 10/1m -> 20/2m"
    )


@pytest.mark.parametrize(
    ("new", "why"),
    [
        (renamable("b", rate="5, per: 1m"), "a slower rate"),
        (renamable("b", methods="GET"), "other methods"),
        (renamable("b", mode="shadow"), "another mode"),
        (renamable("b").replace("token, conversation", "token"), "another partition"),
    ],
)
def test_a_new_name_with_another_meaning_is_a_removal_and_an_addition(
    tmp_path: Path, new: str, why: str
) -> None:
    found = [f for f, _, _ in changes(tmp_path, renamable("a"), new)]
    assert sorted(found) == ["added", "removed"], why


def test_a_shadow_policy_renamed_with_another_limit_is_not_a_rename(tmp_path: Path) -> None:
    # any limit change of a shadow-only policy is neutral, yet it is not the same policy
    old = renamable("a", mode="shadow")
    new = renamable("b", rate="1, per: 1m", mode="shadow")
    assert sorted(f for f, _, _ in changes(tmp_path, old, new)) == ["added", "removed"]


def test_method_lists_compare_as_sets(tmp_path: Path) -> None:
    old = renamable("a", methods="POST, GET")
    assert changes(tmp_path, old, renamable("a", methods="GET, POST, POST")) == []
    ((field, effect, text),) = changes(tmp_path, old, renamable("a", methods="GET"))
    assert (field, effect) == ("match.methods", "loosens")
    assert text == "policy a: match methods narrower: [GET,POST] -> [GET]"


def test_two_renames_pair_each_policy_once(tmp_path: Path) -> None:
    old = renamable("a") + renamable("c").split("policies:\n", 1)[1]
    new = renamable("b") + renamable("d").split("policies:\n", 1)[1]
    found = [(f, t.split(":")[0]) for f, _, t in changes(tmp_path, old, new)]
    assert found == [
        ("renamed", "policy a renamed to b"),
        ("renamed", "policy c renamed to d"),
    ]
