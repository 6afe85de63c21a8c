"""The replay's penalty box: the subjects each set would have boxed, and for how long,
checked against a schedule worked out by hand (fixed windows from the first failure, a
box at the threshold, requests inside a box refused and not counted)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.support.processes import run_cli
from tests.support.stack import SEND, TOKEN, stack

START_S = 1_800_000_000
POLICY = """
penalty_box:
  subject: %(subject)s
  window: 10s
  threshold: %(threshold)d
  cooldown: 1m
  count: [%(count)s]
policies:
  - name: send-per-token
    match: {routes: [send]}
    partition: [token]
    limit: {rate: 600, per: 1m, burst: 100}
"""


def line(at_s: float, ip: str, prefix: str, code: str | None) -> str:
    """A logged send at ``at_s`` seconds from the start, refused with ``code`` (None:
    admitted)."""
    return json.dumps(
        {
            "log": "decision",
            "v": 1,
            "ts_us": round((START_S + at_s) * 1_000_000),
            "route": "send",
            "method": "POST",
            "model": "demo",
            "key_id": "Key00001",
            "token": None if code else f"tok-{ip}",
            "conversation": None if code else f"conv-{ip}",
            "ip_prefix": prefix,
            "ip": ip,
            "ua": "ua",
            "outcome": "refused" if code else "admitted",
            "code": code,
            "status": 403 if code else 200,
            "reached": code is None,
            "policies": [] if code else [{"name": "send-per-token", "decision": "allowed"}],
        }
    )


#: (seconds, hashed client, prefix, code)
EVENTS = [
    # client A: 3 forged tokens within 2 s, then 5 requests inside the box, then 2 failures
    # after it (a new window, below 3)
    (0.0, "A", "203.0.113.0/24", "token_invalid"),
    (1.0, "A", "203.0.113.0/24", "token_invalid"),
    (2.0, "A", "203.0.113.0/24", "token_invalid"),  # boxed from 2 s to 62 s
    *[(5.0 + i, "A", "203.0.113.0/24", None) for i in range(5)],
    (61.0, "A", "203.0.113.0/24", "token_invalid"),  # still boxed: refused, not counted
    (70.0, "A", "203.0.113.0/24", "token_invalid"),
    (70.5, "A", "203.0.113.0/24", "token_invalid"),
    # client B, same prefix: its window from 0 s ends at 10 s, so 11 s starts a new one
    (0.5, "B", "203.0.113.0/24", "key_not_found"),
    (11.0, "B", "203.0.113.0/24", "key_not_found"),
    (12.0, "B", "203.0.113.0/24", "key_not_found"),
    # client C elsewhere: token reuse, three times within the window
    (20.0, "C", "198.51.100.0/24", "token_reuse_suspected"),
    (21.0, "C", "198.51.100.0/24", "token_reuse_suspected"),
    (22.0, "C", "198.51.100.0/24", "token_reuse_suspected"),  # boxed 22 s to 82 s
    (30.0, "C", "198.51.100.0/24", None),
    # an expired token is no failure
    *[(40.0 + i, "D", "192.0.2.0/24", "token_expired") for i in range(5)],
]


def write(tmp_path: Path, name: str, subject: str, threshold: int, count: str) -> Path:
    path = tmp_path / name
    path.write_text(POLICY % {"subject": subject, "threshold": threshold, "count": count})
    return path


def replay(tmp_path: Path, candidate: Path, baseline: Path) -> dict[str, object]:
    log = tmp_path / "decisions.jsonl"
    log.write_text("".join(line(*event) + "\n" for event in EVENTS))
    done = run_cli(
        "policies", "replay", str(log), "--baseline", str(baseline),
        "--candidate", str(candidate), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def iso(at_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(START_S + at_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_a_stricter_box_boxes_the_clients_the_schedule_says(tmp_path: Path) -> None:
    everything = "invalid_key, invalid_token, reuse"
    baseline = write(tmp_path, "baseline.yaml", "client_ip", 20, everything)
    candidate = write(tmp_path, "candidate.yaml", "client_ip", 3, everything)
    out = replay(tmp_path, candidate, baseline)
    boxes = out["penalty_box"]
    assert isinstance(boxes, dict)
    assert boxes["baseline"]["subjects_boxed"] == 0
    # every failure outside a box under the baseline: 3+1+2 (A) + 3 (B) + 3 (C)
    assert boxes["baseline"]["failures_counted"] == 12
    cand = boxes["candidate"]
    assert cand["rule"] == {
        "subject": "client_ip",
        "threshold": 3,
        "window_seconds": 10,
        "cooldown_seconds": 60,
        "count": ["invalid_key", "invalid_token", "reuse"],
    }
    # A: 3 before its box, 2 after (61 s fell in the box); B: 3; C: 3
    assert cand["failures_counted"] == 11
    assert cand["subjects_boxed"] == 2
    assert cand["subjects"] == [
        {
            "subject": "A",
            "kind": "client",
            "boxes": 1,
            "boxed_seconds": 60,
            "first_boxed": iso(2),
            "boxed_until": iso(62),
            "requests_refused": 6,  # the 5 admitted sends and the failure at 61 s
        },
        {
            "subject": "C",
            "kind": "client",
            "boxes": 1,
            "boxed_seconds": 60,
            "first_boxed": iso(22),
            "boxed_until": iso(82),
            "requests_refused": 1,
        },
    ]
    # the text output says the same
    text = run_cli(
        "policies", "replay", str(tmp_path / "decisions.jsonl"), "--baseline", str(baseline),
        "--candidate", str(candidate),
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert "candidate: 3 x (invalid_key, invalid_token, reuse) per 10s by client_ip" in text.stdout
    assert f"client A: boxed 1x for 60s from {iso(2)} to {iso(62)}, 6 logged" in text.stdout


def test_a_box_by_prefix_counts_the_clients_of_a_prefix_together(tmp_path: Path) -> None:
    baseline = write(tmp_path, "baseline.yaml", "client_ip", 3, "invalid_token")
    candidate = write(tmp_path, "candidate.yaml", "ip_prefix", 3, "invalid_key, invalid_token")
    out = replay(tmp_path, candidate, baseline)
    boxes = out["penalty_box"]
    assert isinstance(boxes, dict)
    # the baseline counts forged tokens only: A is boxed at 2 s; B's keys and C's reuse
    # are not counted
    base = boxes["baseline"]
    assert [(s["subject"], s["first_boxed"]) for s in base["subjects"]] == [("A", iso(2))]
    # by prefix, A and B count together: A at 0 and 1 s, B at 0.5 s makes 3 -> boxed at
    # 1 s until 61 s; A's failure at 2 s, its 5 sends and B's 11 and 12 s fall in the box
    cand = boxes["candidate"]
    subjects = {s["subject"]: s for s in cand["subjects"]}
    assert set(subjects) == {"203.0.113.0/24"}
    prefix = subjects["203.0.113.0/24"]
    assert prefix["kind"] == "ip_prefix"
    assert prefix["first_boxed"] == iso(1)
    # the box has ended at 61 s: A's failure then opens a window, 70 s is within it and
    # 70.5 s brings it to 3: a second box, until 130.5 s
    assert prefix["boxes"] == 2
    assert prefix["boxed_seconds"] == 120
    assert prefix["boxed_until"] == iso(130.5)
    # in the first box: A at 2 s and its 5 sends, B at 11 and 12 s
    assert prefix["requests_refused"] == 8


BOXING = """
penalty_box:
  subject: client_ip
  window: 1m
  threshold: 3
  cooldown: 10m
  count: [invalid_key, invalid_token, reuse]
policies:
  - name: token-per-ip
    match: {routes: [token]}
    partition: [client_ip]
    limit: {rate: 60, per: 1m, burst: 20}
  - name: send-per-token
    match: {routes: [send]}
    partition: [token]
    limit: {rate: 60, per: 1m, burst: 20}
"""


def test_the_baseline_boxes_whom_the_real_gateway_boxed(tmp_path: Path) -> None:
    """Recorded from ``gateway serve``: a client forging tokens is boxed at its third;
    the replay's baseline boxes the same client at the same request, and the requests
    it counts in the box are the ones the gateway refused with 429."""
    policies = tmp_path / "policies.yaml"
    policies.write_text(BOXING)
    log = tmp_path / "decisions.jsonl"
    forger, other = "198.51.100.7", "203.0.113.9"
    with stack(
        tmp_path,
        env={"GATEWAY_DECISION_LOG_SECRET": "replay-box-secret-0123456789abcdef"},
        sections={
            "observability": {"decision_log": str(log)},
            "policies": {"path": str(policies), "watch": False},
        },
        trusted_proxies=["127.0.0.1/32"],
    ) as gw:
        key, _ = gw.create_key()
        with httpx.Client(base_url=gw.public, timeout=10) as http:
            for _ in range(40):  # a new key reaches the gateway within seconds
                first = http.get(
                    TOKEN, headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": other}
                )
                if first.status_code == 200:
                    break
                time.sleep(0.25)
            assert first.status_code == 200, first.text
            statuses = []
            for n in range(6):
                forged = http.post(
                    SEND,
                    json={"client_token": f"x.y{n}.z", "message": "hi"},
                    headers={"X-Forwarded-For": forger},
                )
                statuses.append(forged.status_code)
            asked = http.get(
                TOKEN, headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": forger}
            )
            statuses.append(asked.status_code)
            # another client is not boxed
            again = http.get(
                TOKEN, headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": other}
            )
    assert statuses == [403, 403, 403, 429, 429, 429, 429]
    assert again.status_code == 200
    lines = [json.loads(text) for text in log.read_text().splitlines()]
    forger_lines = [line for line in lines if line["ip_prefix"] == "198.51.100.0/24"]
    assert [line["status"] for line in forger_lines] == statuses
    done = run_cli(
        "policies", "replay", str(log), "--baseline", str(policies),
        "--candidate", str(policies), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    box = json.loads(done.stdout)["penalty_box"]["baseline"]
    assert box["failures_counted"] == 3
    (boxed,) = box["subjects"]
    assert boxed["subject"] == forger_lines[0]["ip"]
    assert boxed["first_boxed"] == iso_us(forger_lines[2]["ts_us"])
    assert boxed["requests_refused"] == statuses.count(429)
    assert boxed["boxed_seconds"] == 600


def iso_us(ts_us: int) -> str:
    """A logged time as the report writes times (milliseconds, UTC)."""
    from datetime import UTC, datetime

    stamp = datetime.fromtimestamp(ts_us / 1_000_000, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
