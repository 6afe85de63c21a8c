"""The decision log's writer: lines as documented, keyed hashes, a bounded queue."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from gateway.core.gcra import LimitState
from gateway.core.policy import Limit, Policy, PolicySet, RequestFacts
from gateway.observability.decision_log import (
    Decision,
    DecisionLog,
    Keyed,
    load_secret,
)

SECRET = b"decision-log-secret-0123456789"
JTI, CONVERSATION = "jti-4b1c9d0e", "conv-77aa01"
IP, UA = "203.0.113.7", "Mozilla/5.0 (X11; Linux) secret-agent"
SEND = "/v1/chat/conversation/public/message"
POLICIES = PolicySet(
    (
        Policy("per-conv", frozenset({"send"}), ("conversation",), Limit(5, 60, 5)),
        Policy("per-ip", frozenset({"send"}), ("client_ip",), Limit(5, 60, 5), mode="shadow"),
    )
)


def decided(ip: str = IP) -> Decision:
    d = Decision()
    d.facts = RequestFacts("send", "POST", ip, "KeyId0001", "demo", JTI, CONVERSATION)
    d.policies = POLICIES.select("send", "POST", "demo", "KeyId0001").policies
    d.states = (LimitState(False, 0, 1, 1, 0), LimitState(False, 0, 1, 1, 0))
    d.reached, d.ts_us = True, 1_765_000_000_123_456
    return d


def write(path: Path, *decisions: Decision, secret: bytes = SECRET) -> list[dict[str, object]]:
    log = DecisionLog(str(path), secret, lambda: POLICIES, lambda: None)
    log.start()
    for d in decisions:
        log.submit(d, SEND, "POST", 429, "rate_limited", IP, UA, "KeyId0001")
    log.submit(decided(), "/metrics", "GET", 200, None, IP, UA, None)  # not public: no line
    log.stop()
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_line_holds_the_decision_and_only_keyed_hashes(tmp_path: Path) -> None:
    (line,) = write(tmp_path / "d.jsonl", decided())
    keyed = Keyed(SECRET)
    assert line == {
        "log": "decision",
        "v": 1,
        "ts_us": 1_765_000_000_123_456,
        "route": "send",
        "method": "POST",
        "model": "demo",
        "key_id": "KeyId0001",
        "token": keyed(JTI),
        "conversation": keyed(CONVERSATION),
        "ip_prefix": "203.0.113.0/24",
        "ip": keyed(IP),
        "ua": keyed(UA),
        "outcome": "limited",
        "code": "rate_limited",
        "status": 429,
        "reached": True,
        "policies": [
            {"name": "per-conv", "decision": "limited"},
            {"name": "per-ip", "decision": "shadow_limited"},
        ],
        "limited_by": ["per-conv"],
    }


def test_replicas_sharing_the_secret_hash_alike_and_another_secret_does_not(
    tmp_path: Path,
) -> None:
    a = write(tmp_path / "a.jsonl", decided())[0]
    b = write(tmp_path / "b.jsonl", decided())[0]
    c = write(tmp_path / "c.jsonl", decided(), secret=b"another-secret-0123456789abc")[0]
    for field in ("token", "conversation", "ip", "ua"):
        assert a[field] == b[field] != c[field]


def test_an_ipv6_client_is_counted_by_its_prefix(tmp_path: Path) -> None:
    d = decided("2001:db8:1:2:3:4:5:6")
    log = DecisionLog(str(tmp_path / "v6.jsonl"), SECRET, lambda: POLICIES, lambda: None)
    log.start()
    log.submit(d, SEND, "POST", 200, None, "2001:db8:1:2:3:4:5:6", UA, None)
    log.stop()
    (line,) = [json.loads(x) for x in (tmp_path / "v6.jsonl").read_text().splitlines()]
    assert line["ip_prefix"] == "2001:db8:1:2::/64"
    assert line["client"] == Keyed(SECRET)("2001:db8:1:2::/64") != line["ip"]


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path: Path) -> None:
    drops: list[int] = []
    log = DecisionLog(
        str(tmp_path / "slow.jsonl"),
        SECRET,
        lambda: POLICIES,
        lambda: drops.append(1),
        max_queue=3,
    )
    # the writer is not running: a sink that never keeps up
    for _ in range(10):
        log.submit(decided(), SEND, "POST", 200, None, IP, UA, None)
    assert log.dropped == 7 and len(drops) == 7
    log.start()
    log.stop()
    assert len((tmp_path / "slow.jsonl").read_text().splitlines()) == 3


def test_a_blocked_sink_never_blocks_the_submitter(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    import os

    os.mkfifo(fifo)  # nobody reads it: the writer blocks opening it
    log = DecisionLog(str(fifo), SECRET, lambda: POLICIES, lambda: None, max_queue=100)
    log.start()
    done = threading.Event()

    def submit() -> None:
        for _ in range(1000):
            log.submit(decided(), SEND, "POST", 200, None, IP, UA, None)
        done.set()

    threading.Thread(target=submit, daemon=True).start()
    assert done.wait(5)
    assert log.dropped >= 900
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # let the writer finish
    try:
        log.stop(timeout=5)
    finally:
        os.close(reader)


def test_the_secret_is_required_and_long_enough() -> None:
    with pytest.raises(ValueError, match="GATEWAY_DECISION_LOG_SECRET"):
        load_secret({})
    with pytest.raises(ValueError, match="16 bytes"):
        load_secret({"GATEWAY_DECISION_LOG_SECRET": "short"})
    assert load_secret({"GATEWAY_DECISION_LOG_SECRET": "x" * 16}) == b"x" * 16


def test_the_secret_may_come_from_a_file(tmp_path: Path) -> None:
    """As a Compose secret: GATEWAY_DECISION_LOG_SECRET_FILE names the file."""
    path = tmp_path / "decision_log_secret"
    path.write_text("y" * 24 + "\n")
    assert load_secret({"GATEWAY_DECISION_LOG_SECRET_FILE": str(path)}) == b"y" * 24
    # the variable itself wins over the file
    both = {"GATEWAY_DECISION_LOG_SECRET": "x" * 16, "GATEWAY_DECISION_LOG_SECRET_FILE": str(path)}
    assert load_secret(both) == b"x" * 16
    path.write_text("short\n")
    with pytest.raises(ValueError, match=r"16 bytes.*holds 5"):
        load_secret({"GATEWAY_DECISION_LOG_SECRET_FILE": str(path)})
    missing = tmp_path / "absent"
    with pytest.raises(ValueError, match=rf"{re.escape(str(missing))}.*cannot read"):
        load_secret({"GATEWAY_DECISION_LOG_SECRET_FILE": str(missing)})


def test_outcomes_of_requests_that_never_reached_the_limits(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path / "o.jsonl"), SECRET, lambda: POLICIES, lambda: None)
    log.start()
    log.submit(Decision(), SEND, "POST", 403, "token_invalid", IP, UA, None)
    log.submit(Decision(), SEND, "OPTIONS", 204, None, IP, UA, None)
    boxed = Decision()
    boxed.penalized = True
    log.submit(boxed, SEND, "POST", 429, "rate_limited", IP, UA, None)
    log.stop()
    lines = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [(x["outcome"], x["code"], x["reached"], x["policies"]) for x in lines] == [
        ("refused", "token_invalid", False, []),
        ("unlimited", None, False, []),
        ("penalized", "rate_limited", False, []),
    ]
    assert all(x["token"] is None and x["ip"] == Keyed(SECRET)(IP) for x in lines)
