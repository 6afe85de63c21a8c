"""The policy language: loading, errors with file/line/field, matching, linting."""

from pathlib import Path

import pytest

from gateway.config.yaml_source import SourceError
from gateway.core.gcra import LimitState
from gateway.core.policy import RequestFacts
from gateway.policies.lint import lint, sharding_changes
from gateway.policies.loader import load_policies

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((Path(__file__).parents[1] / "fixtures" / "bad_policies").glob("*.yaml"))
KEY_A, KEY_B = "AAAAAAAAAAAA", "BBBBBBBBBBBB"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_each_bad_policy_file_names_file_line_and_field(path: Path) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(SourceError) as info:
        load_policies(path)
    assert expected in str(info.value), str(info.value)


def test_the_shipped_defaults_load_and_lint_clean() -> None:
    loaded = load_policies(ROOT / "policies")
    names = [p.name for p in loaded.policies.policies]
    assert {
        "token-per-ip",
        "token-per-key",
        "send-per-token",
        "send-per-conversation",
        "send-per-ip",
        "reads-per-token",
    } <= set(names)
    assert loaded.policies.penalty is not None
    assert loaded.policies.on_store_error == "fail_closed"
    assert lint(loaded, {"demo"}) == []


def test_errors_across_files_are_all_reported(tmp_path: Path) -> None:
    one = "policies:\n  - {name: p, match: {routes: [send]}, partition: [token], limit: {rate: 1, per: 1s, burst: 1}}\nbinding: {action: deny}\n"
    write(tmp_path, "a.yaml", one)
    write(tmp_path, "b.yaml", one)
    write(tmp_path, "c.yaml", "policies: [{name: q}]\n")
    with pytest.raises(SourceError) as info:
        load_policies(tmp_path)
    message = str(info.value)
    assert "b.yaml:2: policies[0].name: duplicate policy name 'p' (first defined at" in message
    assert "b.yaml:3: binding: defined twice (first at" in message
    assert "c.yaml:1: policies[0].match: Field required" in message


def test_matching_overrides_and_partitions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        f"""
ip_prefix: {{ipv4: 16}}
policies:
  - name: per-prefix
    match: {{routes: [send], models: [demo], methods: [POST]}}
    partition: [ip_prefix]
    limit: {{rate: 60, per: 1m, burst: 10}}
    overrides:
      - key_ids: [{KEY_A}]
        limit: {{rate: 600, per: 1m, burst: 100}}
      - key_ids: [{KEY_B}]
        mode: shadow
  - name: per-key-model
    match: {{routes: [token, send]}}
    partition: [api_key, model]
    limit: {{rate: 2, per: 1s, burst: 2}}
""",
    )
    policies = load_policies(path).policies
    facts = RequestFacts("send", "POST", "203.0.113.7", key_id=KEY_A, model="demo", token="j")
    applied = policies.applicable(facts)
    assert [a.policy for a in applied] == ["per-prefix", "per-key-model"]
    assert applied[0].spec.key == "per-prefix:203.0.0.0/16"
    assert applied[0].limit.rate == 600 and not applied[0].spec.shadow
    assert applied[1].spec.key == f"per-key-model:{KEY_A}|demo"
    assert applied[1].spec.interval_us == 500_000 and applied[1].spec.burst == 2
    shadowed = policies.applicable(RequestFacts("send", "POST", "1.2.3.4", KEY_B, "demo"))
    assert shadowed[0].spec.shadow and shadowed[0].limit.rate == 60
    assert [
        a.policy
        for a in policies.applicable(RequestFacts("send", "POST", "1.2.3.4", KEY_B, "other"))
    ] == ["per-key-model"]
    assert [
        a.policy
        for a in policies.applicable(RequestFacts("token", "GET", "1.2.3.4", KEY_B, "demo"))
    ] == ["per-key-model"]
    assert policies.applicable(RequestFacts("messages", "GET", "1.2.3.4", KEY_B, "demo")) == ()


def test_long_partition_values_are_hashed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
policies:
  - name: per-conversation
    match: {routes: [send]}
    partition: [conversation, client_ip]
    limit: {rate: 1, per: 1s, burst: 1}
""",
    )
    policies = load_policies(path).policies
    facts = RequestFacts("send", "POST", "2001:db8::1", conversation="c" * 36)
    key = policies.applicable(facts)[0].spec.key
    assert key.startswith("per-conversation:h") and len(key) < 45
    other = policies.applicable(
        RequestFacts("send", "POST", "2001:db8:0:1::2", conversation="c" * 36)
    )
    assert other[0].spec.key != key


def test_lint_finds_overlaps_and_unreachable_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        f"""
policies:
  - name: a
    match: {{routes: [send]}}
    partition: [token]
    limit: {{rate: 10, per: 1m, burst: 5}}
  - name: b
    match: {{routes: [send]}}
    partition: [token]
    limit: {{rate: 5, per: 1m, burst: 5}}
  - name: c
    match: {{routes: [send], models: [gpt-9]}}
    partition: [token]
    limit: {{rate: 5, per: 1m, burst: 5}}
  - name: d
    match: {{routes: [send], key_ids: [{KEY_A}]}}
    partition: [token]
    limit: {{rate: 5, per: 1m, burst: 5}}
    overrides:
      - {{key_ids: [{KEY_B}], mode: shadow}}
      - {{key_ids: [{KEY_A}], mode: shadow}}
      - {{key_ids: [{KEY_A}], limit: {{rate: 1, per: 1s, burst: 1}}}}
""",
    )
    findings = lint(load_policies(path), {"demo"})
    text = "\n".join(findings)
    assert "policy 'b' limits the same requests by the same partition as 'a'" in text
    assert "only the tighter 'b' ever decides" in text
    assert "policy 'c' never applies: no configured model gpt-9" in text
    assert "policy 'd' overrides[0] never applies: its keys are outside" in text
    assert "policy 'd' overrides[2] never applies: an earlier override" in text
    assert all(":" in f.split(" ")[0] for f in findings)  # each names file:line


def test_ratelimit_headers_follow_the_ietf_draft(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
policies:
  - {name: per-token, match: {routes: [send]}, partition: [token], limit: {rate: 10, per: 1m, burst: 5}}
  - {name: trial, match: {routes: [send]}, partition: [token], limit: {rate: 1, per: 1h, burst: 1}, mode: shadow}
""",
    )
    selection = load_policies(path).policies.select("send", "POST", None, None)
    states = (LimitState(True, 3, 12_300, 0, 0.0), LimitState(False, 0, 1, 5, 0.0))
    headers = selection.headers(states)
    assert headers == {
        "RateLimit-Policy": '"per-token";q=10;w=60',
        "RateLimit": '"per-token";r=3;t=13',
    }


def test_a_remembered_selection_answers_as_the_policies_do(tmp_path: Path) -> None:
    """Selections are remembered per (route, method, model, key): the overrides of one key,
    the models and the methods still decide, request after request, and the remembered
    selection writes the headers a freshly computed one writes."""
    path = write(
        tmp_path,
        "p.yaml",
        f"""
policies:
  - name: per-ip
    match: {{routes: [send], methods: [POST]}}
    partition: [client_ip]
    limit: {{rate: 60, per: 1m, burst: 10}}
    overrides:
      - {{key_ids: [{KEY_A}], limit: {{rate: 600, per: 1m, burst: 100}}}}
      - {{key_ids: [{KEY_B}], mode: shadow}}
  - {{name: per-token.v2, match: {{routes: [send], models: [demo]}}, partition: [token], limit: {{rate: 2, per: 1s, burst: 2}}}}
""",
    )
    policies = load_policies(path).policies
    states = (LimitState(True, 3, 12_300, 0, 0), LimitState(False, -1, 0, 5, 0))
    for _ in range(2):  # computed, then remembered
        for key_id, model, method in [
            (KEY_A, "demo", "POST"),
            (KEY_B, "demo", "POST"),
            (None, "other", "POST"),
            (KEY_A, "demo", "GET"),
        ]:
            facts = RequestFacts("send", method, "203.0.113.7", key_id, model, token="J")
            applied = policies.applicable(facts)
            selection = policies.select("send", method, model, key_id)
            assert tuple(a.spec for a in applied) == selection.specs(facts)
            fresh = load_policies(path).policies.select("send", method, model, key_id)
            assert selection.headers(states[: len(applied)]) == fresh.headers(
                states[: len(applied)]
            )
        rates = [
            [(a.policy, a.limit.rate, a.spec.shadow) for a in policies.applicable(f)]
            for f in (
                RequestFacts("send", "POST", "1.2.3.4", KEY_A, "demo", token="J"),
                RequestFacts("send", "POST", "1.2.3.4", KEY_B, "demo", token="J"),
                RequestFacts("send", "GET", "1.2.3.4", KEY_B, "other", token="J"),
            )
        ]
        assert rates == [
            [("per-ip", 600, False), ("per-token.v2", 2, False)],
            [("per-ip", 60, True), ("per-token.v2", 2, False)],
            [],
        ]


def test_limits_of_one_token_live_with_the_token(tmp_path: Path) -> None:
    """Partitioned by the token or its conversation: the state is the token's, named by the
    policy (plus the partition value when a part of it varies between the token's requests);
    anything else keeps a key of its own."""
    path = write(
        tmp_path,
        "p.yaml",
        """
policies:
  - {name: per-token, match: {routes: [send]}, partition: [token], limit: {rate: 1, per: 1s, burst: 1}}
  - {name: per-conv-model, match: {routes: [send]}, partition: [conversation, model], limit: {rate: 1, per: 1s, burst: 1}}
  - {name: per-token-ip, match: {routes: [send]}, partition: [token, client_ip], limit: {rate: 1, per: 1s, burst: 1}}
  - {name: per-ip, match: {routes: [send]}, partition: [client_ip], limit: {rate: 1, per: 1s, burst: 1}}
""",
    )
    policies = load_policies(path).policies
    facts = RequestFacts("send", "POST", "203.0.113.7", KEY_A, "demo", token="J", conversation="C")
    specs = [a.spec for a in policies.applicable(facts)]
    assert [(s.key, s.scope) for s in specs] == [
        ("per-token", "J"),
        ("per-conv-model", "J"),
        ("per-token-ip:J|203.0.113.7", "J"),
        ("per-ip:203.0.113.7", None),
    ]


def test_ipv6_clients_are_counted_by_their_prefix(tmp_path: Path) -> None:
    """A host holds a whole /64: rotating addresses inside it must not reset its limits."""
    path = write(
        tmp_path,
        "p.yaml",
        """
penalty_box: {subject: client_ip}
policies:
  - {name: per-ip, match: {routes: [send]}, partition: [client_ip], limit: {rate: 1, per: 1s, burst: 1}}
""",
    )
    policies = load_policies(path).policies

    def key(ip: str) -> str:
        return policies.applicable(RequestFacts("send", "POST", ip))[0].spec.key

    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "per-ip:2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("203.0.113.7") == "per-ip:203.0.113.7"  # IPv4 addresses stay whole
    assert policies.penalty_subject("2001:db8:1:2::1") == policies.penalty_subject(
        "2001:db8:1:2::2"
    )
    assert policies.penalty_subject("203.0.113.7") != policies.penalty_subject("203.0.113.8")


PROTECTED_SET = """
penalty_box: {threshold: 20}
policies:
  - {name: t, match: {routes: [token]}, partition: [client_ip], limit: {rate: 1, per: 1s, burst: 1}}
  - {name: s, match: {routes: [send]}, partition: [token], limit: {rate: 1, per: 1s, burst: 1}}
"""


def test_the_live_policies_refuses_an_unprotected_set_at_start_and_on_signal(
    tmp_path: Path,
) -> None:
    from gateway.config.yaml_source import SourceError
    from gateway.policies.live import LivePolicies

    path = write(tmp_path, "p.yaml", "# empty for now\n")
    with pytest.raises(SourceError, match="refusing a policy set that leaves the gateway"):
        LivePolicies(path).load()

    path.write_text(PROTECTED_SET)
    results: list[str] = []
    store = LivePolicies(path, on_reload=results.append)
    store.load()
    before = store.current
    path.write_text("# empty for now\n")
    assert store.reload("sighup") is False
    assert store.current is before and results == ["failure"]

    allowed = LivePolicies(path, on_reload=results.append, allow_unprotected=True)
    allowed.load()  # runs, with a warning
    assert allowed.current.policies == ()


SHARDED_CHANGES = """
penalty_box: {subject: client_ip, threshold: 5}
policies:
  - name: per-ip
    match: {routes: [send]}
    partition: [client_ip]
    limit: {rate: 10, per: 1m, burst: 5}
  - name: per-key
    match: {routes: [send]}
    partition: [api_key, model]
    limit: {rate: 600, per: 1m, burst: 60}
  - name: per-conversation
    match: {routes: [send]}
    partition: [conversation]
    limit: {rate: 5, per: 1m, burst: 5}
  - name: private-global
    match: {routes: [private]}
    partition: [global]
    limit: {rate: 5, per: 1m, burst: 5}
"""


def test_policies_check_says_what_sharding_changes(tmp_path: Path) -> None:
    """Under ``store.sharding: key``: the per-address limit becomes per key and address,
    a hot key's own limit is split, the penalty box is read from each replica's cache;
    limits within a key or on routes without a key keep their meaning."""
    path = write(tmp_path, "p.yaml", SHARDED_CHANGES)
    findings = sharding_changes(load_policies(path), {KEY_A: 4})
    text = "\n".join(findings)
    assert f"{path}:" in text
    assert "policy 'per-ip' (partition client_ip) is counted per agent key on routes send" in text
    assert f"policy 'per-key' is split over hot key {KEY_A}'s 4 sub-buckets" in text
    assert "at most 3 requests over its limit" in text
    assert "penalty_box under store.sharding: key" in text
    assert "per-conversation" not in text and "private-global" not in text
    assert len(findings) == 3
    # the same set without hot keys: the per-key limit keeps its meaning
    assert len(sharding_changes(load_policies(path), {})) == 2
