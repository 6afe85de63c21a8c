"""`gateway policies diff OLD NEW` as a real process: the words, the JSON and the exit codes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import BIN, run_cli
from tests.support.stack import ROOT

pytestmark = pytest.mark.slow  # gateway processes

BASE = """\
on_store_error: fail_closed
ip_prefix: {ipv4: 24, ipv6: 64}
binding:
  bind_at: first_use
  components: [ip_prefix, user_agent]
  max_fingerprints: 1
  action: revoke
penalty_box:
  subject: client_ip
  window: 1m
  threshold: 20
  cooldown: 5m
  count: [invalid_key, invalid_token, reuse]
policies:
  - name: token-per-ip
    match: {routes: [token]}
    partition: [client_ip]
    limit: {rate: 30, per: 1m, burst: 10}
  - name: send-per-token
    match: {routes: [send]}
    partition: [token]
    limit: {rate: 10, per: 1m, burst: 5}
  - name: send-per-ip
    match: {routes: [send]}
    partition: [client_ip]
    limit: {rate: 60, per: 1m, burst: 20}
    mode: shadow
    overrides:
      - key_ids: [aaaaaaaaaaaa]
        limit: {rate: 600, per: 1m, burst: 100}
"""

#: the same set, written otherwise: sections and policies reordered, comments,
#: durations in other units (60s, 300s, 3600s/60), lists in another order
EQUIVALENT = """\
# reordered and restated; means the same
policies:
  - name: send-per-ip   # the shadow one
    mode: shadow
    limit: {burst: 20, per: 60s, rate: 60}
    partition: [client_ip]
    match: {routes: [send]}
    overrides:
      - key_ids: [aaaaaaaaaaaa]
        limit: {rate: 600, per: 60, burst: 100}
  - name: send-per-token
    match: {routes: [send]}
    partition: [token]
    limit: {rate: 10, per: 60000ms, burst: 5}
  - name: token-per-ip
    match: {routes: [token]}
    partition: [client_ip]
    limit: {rate: 30, per: 1m, burst: 10}
    mode: enforce
penalty_box:
  count: [reuse, invalid_token, invalid_key]
  cooldown: 300s
  threshold: 20
  window: 60s
  subject: client_ip
binding: {action: revoke, max_fingerprints: 1, components: [ip_prefix, user_agent]}
on_store_error: fail_closed
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def diff(tmp_path: Path, new: str, *extra: str) -> subprocess.CompletedProcess[str]:
    old_file = write(tmp_path / "old" / "policies.yaml", BASE)
    new_file = write(tmp_path / "new" / "policies.yaml", new)
    return run_cli("policies", "diff", str(old_file), str(new_file), *extra)


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


def test_identical_and_equivalent_sets_are_no_change(tmp_path: Path) -> None:
    same = diff(tmp_path / "same", BASE)
    assert (same.returncode, lines(same), same.stderr) == (0, ["no change"], "")
    restated = diff(tmp_path / "restated", EQUIVALENT)
    assert (restated.returncode, lines(restated), restated.stderr) == (0, ["no change"], "")
    as_json = diff(tmp_path / "json", EQUIVALENT, "--json")
    assert (as_json.returncode, json.loads(as_json.stdout)) == (0, [])


def test_the_same_set_split_into_a_directory_is_no_change(tmp_path: Path) -> None:
    policies_at = BASE.index("policies:")
    directory = tmp_path / "split"
    write(directory / "10-settings.yaml", BASE[:policies_at])
    write(directory / "20-limits.yaml", "# the limits\n" + BASE[policies_at:])
    old = write(tmp_path / "one.yaml", BASE)
    result = run_cli("policies", "diff", str(old), str(directory))
    assert (result.returncode, lines(result)) == (0, ["no change"])


def test_the_shipped_policies_against_themselves(tmp_path: Path) -> None:
    result = run_cli(
        "policies", "diff", str(ROOT / "policies"), str(ROOT / "policies" / "default.yaml")
    )
    assert (result.returncode, lines(result)) == (0, ["no change"])


def test_a_halved_rate_tightens_with_exit_3(tmp_path: Path) -> None:
    new = BASE.replace("rate: 10, per: 1m, burst: 5", "rate: 5, per: 1m, burst: 5")
    result = diff(tmp_path, new)
    assert result.returncode == 3, result.stderr
    assert lines(result) == [
        "policy send-per-token: rate halved: 10/1m -> 5/1m  [tightens]",
        "1 change(s), 1 tightening",
    ]


def test_a_rate_restated_in_another_window_compares_by_pace(tmp_path: Path) -> None:
    # 10/1m -> 20/2m: the same pace (the RateLimit-Policy header shows another window)
    same_pace = diff(tmp_path / "a", BASE.replace("rate: 10, per: 1m", "rate: 20, per: 2m"))
    assert same_pace.returncode == 0
    assert lines(same_pace)[0] == (
        "policy send-per-token: rate restated at the same pace: 10/1m -> 20/2m"
    )
    # 10/1m -> 1/3s is 20/1m: doubled, a loosening, exit 0
    faster = diff(tmp_path / "b", BASE.replace("rate: 10, per: 1m", "rate: 1, per: 3s"))
    assert faster.returncode == 0
    assert lines(faster)[0] == "policy send-per-token: rate doubled: 10/1m -> 1/3s  [loosens]"


def test_burst_raised_loosens_and_lowered_tightens(tmp_path: Path) -> None:
    raised = diff(
        tmp_path / "up",
        BASE.replace("rate: 30, per: 1m, burst: 10", "rate: 30, per: 1m, burst: 40"),
    )
    assert raised.returncode == 0
    assert lines(raised)[0] == "policy token-per-ip: burst raised x4: 10 -> 40  [loosens]"
    lowered = diff(tmp_path / "down", BASE.replace("burst: 10}", "burst: 5}"))
    assert lowered.returncode == 3
    assert lines(lowered)[0] == "policy token-per-ip: burst halved: 10 -> 5  [tightens]"


def test_shadow_to_enforce_is_the_change_that_starts_refusing(tmp_path: Path) -> None:
    enforce = diff(tmp_path / "enforce", BASE.replace("    mode: shadow\n", ""))
    assert enforce.returncode == 3
    assert lines(enforce)[0] == (
        "policy send-per-ip: mode shadow -> enforce: starts refusing requests  [tightens]"
    )
    # a shadow policy refuses nothing: lowering its limit tightens nothing
    shadow = BASE.replace("rate: 60, per: 1m, burst: 20", "rate: 6, per: 1m, burst: 2")
    quieter = diff(tmp_path / "shadow", shadow)
    assert quieter.returncode == 0
    assert lines(quieter)[:2] == [
        "policy send-per-ip: rate lowered x0.1: 60/1m -> 6/1m",
        "policy send-per-ip: burst lowered x0.1: 20 -> 2",
    ]
    to_shadow = BASE.replace(
        "    limit: {rate: 30, per: 1m, burst: 10}\n",
        "    limit: {rate: 30, per: 1m, burst: 10}\n    mode: shadow\n",
    )
    relaxed = diff(tmp_path / "relaxed", to_shadow)
    assert relaxed.returncode == 0
    assert lines(relaxed)[0] == (
        "policy token-per-ip: mode enforce -> shadow: stops refusing requests "
        "(counts them as shadow_limited)  [loosens]"
    )


def test_policy_added_and_removed_in_words(tmp_path: Path) -> None:
    added = BASE + (
        "  - name: scraper-guard\n"
        "    match: {routes: [send], models: [demo]}\n"
        "    partition: [ip_prefix]\n"
        "    limit: {rate: 100, per: 1h, burst: 30}\n"
    )
    result = diff(tmp_path / "added", added)
    assert result.returncode == 3
    assert lines(result)[0] == (
        "policy scraper-guard added: enforce, on routes send, models demo, per [ip_prefix], "
        "100/1h burst 30: starts refusing requests  [tightens]"
    )
    in_shadow = diff(tmp_path / "shadow", added + "    mode: shadow\n")
    assert in_shadow.returncode == 0
    assert lines(in_shadow)[0].endswith("100/1h burst 30: refuses nothing")

    start = BASE.index("  - name: send-per-token")
    end = BASE.index("  - name: send-per-ip")
    removed = diff(tmp_path / "removed", BASE[:start] + BASE[end:])
    assert removed.returncode == 0
    assert lines(removed)[0] == (
        "policy send-per-token removed: enforce, on routes send, per [token], "
        "10/1m burst 5  [loosens]"
    )


def test_a_renamed_policy_is_one_neutral_rename(tmp_path: Path) -> None:
    renamed = BASE.replace("name: send-per-token", "name: messages-per-token")
    result = diff(tmp_path / "renamed", renamed)
    assert result.returncode == 0, result.stderr  # nothing tightens
    assert lines(result) == [
        "policy send-per-token renamed to messages-per-token: the same limit; its counters "
        "start afresh under the new name (each partition's burst is full once), and its "
        "metrics and RateLimit-Policy carry the new name",
        "1 change(s), 0 tightening",
    ]
    as_json = json.loads(diff(tmp_path / "json", renamed, "--json").stdout)
    assert [(c["field"], c["old"], c["new"], c["effect"]) for c in as_json] == [
        ("renamed", "send-per-token", "messages-per-token", "neutral")
    ]


def test_partition_and_match_changes(tmp_path: Path) -> None:
    coarser = diff(
        tmp_path / "coarser",
        BASE.replace(
            "partition: [client_ip]\n    limit: {rate: 30",
            "partition: [ip_prefix]\n    limit: {rate: 30",
        ),
    )
    assert coarser.returncode == 3
    assert lines(coarser)[0] == (
        "policy token-per-ip: partition [client_ip] -> [ip_prefix] "
        "(coarser: more requests share a counter)  [tightens]"
    )
    narrower = BASE.replace(
        "match: {routes: [send]}\n    partition: [token]",
        "match: {routes: [send], models: [demo], key_ids: [bbbbbbbbbbbb]}\n    partition: [token]",
    )
    result = diff(tmp_path / "narrower", narrower)
    assert result.returncode == 0
    assert lines(result)[:2] == [
        "policy send-per-token: match models narrower: [any] -> [demo]  [loosens]",
        "policy send-per-token: match key_ids narrower: [any] -> [bbbbbbbbbbbb]  [loosens]",
    ]
    wider = diff(
        tmp_path / "wider",
        BASE.replace(
            "routes: [send]}\n    partition: [token]",
            "routes: [send, messages]}\n    partition: [token]",
        ),
    )
    assert wider.returncode == 3
    assert lines(wider)[0] == (
        "policy send-per-token: match routes wider: [send] -> [messages,send]  [tightens]"
    )


def test_override_changes_compare_each_keys_effective_limit(tmp_path: Path) -> None:
    own = "        limit: {rate: 600, per: 1m, burst: 100}\n"
    enforced = diff(tmp_path / "enforced", BASE.replace(own, own + "        mode: enforce\n"))
    assert enforced.returncode == 3, enforced.stderr
    assert lines(enforced)[0] == (
        "policy send-per-ip: override for keys aaaaaaaaaaaa changed: 600/1m burst 100, "
        "the policy mode -> 600/1m burst 100, enforce  [tightens]"
    )
    # the policy and its override are in shadow: a lower override limit refuses nothing
    lowered = diff(tmp_path / "lowered", BASE.replace("rate: 600", "rate: 300"))
    assert lowered.returncode == 0
    assert lines(lowered)[0] == (
        "policy send-per-ip: override for keys aaaaaaaaaaaa changed: 600/1m burst 100, "
        "the policy mode -> 300/1m burst 100, the policy mode"
    )
    removed = diff(
        tmp_path / "removed",
        BASE.replace("    overrides:\n      - key_ids: [aaaaaaaaaaaa]\n" + own, ""),
    )
    assert lines(removed)[0] == (
        "policy send-per-ip: override for keys aaaaaaaaaaaa removed: 600/1m burst 100, "
        "the policy mode -> none"
    )


def test_set_wide_sections(tmp_path: Path) -> None:
    new = (
        BASE.replace("threshold: 20", "threshold: 10")
        .replace("cooldown: 5m", "cooldown: 1m")
        .replace("action: revoke", "action: flag\n  other_key: refuse")
        .replace("on_store_error: fail_closed", "on_store_error: fail_open")
        .replace("ipv4: 24", "ipv4: 16")
    )
    result = diff(tmp_path, new)
    assert result.returncode == 3
    assert lines(result) == [
        "penalty box threshold 20 -> 10  [tightens]",
        "penalty box cooldown 5m -> 1m  [loosens]",
        "binding other_key revoke -> refuse  [loosens]",
        "binding action revoke -> flag  [loosens]",
        "ip_prefix ipv4 /24 -> /16 (nothing is counted by it)",
        "on_store_error fail_closed -> fail_open: local per-replica limits while the store "
        "cannot answer  [loosens]",
        "6 change(s), 1 tightening",
    ]
    off = diff(tmp_path / "off", BASE.replace("penalty_box:\n", "penalty_box:\n  enabled: false\n"))
    assert off.returncode == 0
    assert lines(off)[0] == (
        "penalty box turned off (was 20 x (invalid_key, invalid_token, reuse) per 1m by "
        "client_ip -> refused for 5m)  [loosens]"
    )


def test_json_lists_structured_changes(tmp_path: Path) -> None:
    new = BASE.replace("rate: 10, per: 1m, burst: 5", "rate: 5, per: 1m, burst: 5").replace(
        "    mode: shadow\n", ""
    )
    result = diff(tmp_path, new, "--json")
    assert result.returncode == 3
    changes = json.loads(result.stdout)
    assert changes == [
        {
            "subject": "policy",
            "policy": "send-per-ip",
            "field": "mode",
            "old": "shadow",
            "new": "enforce",
            "effect": "tightens",
            "text": "policy send-per-ip: mode shadow -> enforce: starts refusing requests",
        },
        {
            "subject": "policy",
            "policy": "send-per-token",
            "field": "rate",
            "old": "10/1m",
            "new": "5/1m",
            "effect": "tightens",
            "text": "policy send-per-token: rate halved: 10/1m -> 5/1m",
        },
    ]
    added = diff(
        tmp_path / "added",
        BASE
        + (
            "  - name: g\n    match: {routes: [private]}\n    partition: [global]\n"
            "    limit: {rate: 1, per: 1s, burst: 1}\n"
        ),
        "--json",
    )
    (change,) = json.loads(added.stdout)
    assert (change["field"], change["old"], change["effect"]) == ("added", None, "tightens")
    assert change["new"] == {
        "mode": "enforce",
        "routes": ["private"],
        "models": None,
        "key_ids": None,
        "methods": None,
        "partition": ["global"],
        "limit": {"rate": 1, "per_seconds": 1.0, "burst": 1},
    }


def test_a_broken_file_is_named_with_its_line_and_field(tmp_path: Path) -> None:
    broken = BASE.replace("rate: 10, per: 1m, burst: 5", "rate: 10, per: soon, burst: 5")
    result = diff(tmp_path, broken)
    path = tmp_path / "new" / "policies.yaml"
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("gateway: invalid policies:\n")
    line = BASE.splitlines().index("    limit: {rate: 10, per: 1m, burst: 5}") + 1
    assert line == 22
    assert (
        f"{path}:{line}: policies[1].limit.per: Value error, expected a duration" in result.stderr
    )
    # OLD is checked as well: a duplicate name in it, both places named
    twice = write(tmp_path / "twice.yaml", BASE + BASE[BASE.index("  - name: send-per-ip") :])
    dup = run_cli("policies", "diff", str(twice), str(tmp_path / "old" / "policies.yaml"))
    assert dup.returncode == 1
    assert (
        f"{twice}:31: policies[3].name: duplicate policy name 'send-per-ip' "
        f"(first defined at {twice}:23)" in dup.stderr
    )
    missing = run_cli("policies", "diff", str(tmp_path / "nowhere.yaml"), str(path))
    assert missing.returncode == 1
    assert f"{tmp_path / 'nowhere.yaml'}: no such policy file or directory" in missing.stderr


def test_the_documented_example_output_is_what_the_command_prints(tmp_path: Path) -> None:
    """docs/policies.md shows a diff of the shipped policies against a candidate; the
    candidate is made here as the text describes it, and the output must match."""
    text = (ROOT / "docs" / "policies.md").read_text()
    command = "$ gateway policies diff policies/ candidate/\n"
    start = text.index(command) + len(command)
    documented = text[start : text.index("```", start)].splitlines()
    shipped = (ROOT / "policies" / "default.yaml").read_text()
    write(tmp_path / "policies" / "default.yaml", shipped)
    per_ip = "    partition: [client_ip]\n    limit: {rate: 60, per: 1m, burst: 20}"
    assert shipped.count(per_ip) == 1
    candidate = shipped.replace(per_ip, per_ip.replace("rate: 60", "rate: 30")).replace(
        "threshold: 20", "threshold: 10"
    ) + (
        "  - name: send-per-prefix\n    match: {routes: [send]}\n    partition: [ip_prefix]\n"
        "    limit: {rate: 300, per: 1m, burst: 100}\n    mode: shadow\n"
    )
    write(tmp_path / "candidate" / "default.yaml", candidate)
    result = subprocess.run(
        [str(BIN / "gateway"), "policies", "diff", "policies/", "candidate/"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # the paths as documented; the package under test from its root
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
        timeout=60,
        check=False,
    )
    assert (result.returncode, lines(result)) == (3, documented), result.stderr
