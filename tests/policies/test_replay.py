"""The replay's core: the same decisions as the memory store on the same requests, lines
merged in time order, bad lines reported and skipped."""

from __future__ import annotations

import json
import random
from pathlib import Path

from gateway.core.policy import Limit, Policy, PolicySet, RequestFacts
from gateway.observability.decision_log import Keyed
from gateway.policies.replay import Problems, Recorded, Simulator, merged, replay
from gateway.store.base import AdmitRequest
from gateway.store.memory import MemoryStore

SET = PolicySet(
    (
        Policy("per-ip", frozenset({"send"}), ("client_ip",), Limit(20, 60, 6)),
        Policy("per-prefix", frozenset({"send"}), ("ip_prefix", "model"), Limit(30, 60, 8)),
        Policy("per-token", frozenset({"send"}), ("token",), Limit(10, 60, 3)),
        Policy("per-conv-ip", frozenset({"send"}), ("conversation", "client_ip"), Limit(6, 60, 2)),
        Policy("per-key", frozenset({"send", "token"}), ("api_key",), Limit(50, 60, 15)),
        Policy("all", frozenset({"send"}), ("global",), Limit(5, 1, 12), mode="shadow"),
    )
)
HASH = Keyed(b"test-secret-0123456789")


def requests(count: int, seed: int) -> list[tuple[float, RequestFacts]]:
    rng = random.Random(seed)
    now, out = 1_800_000_000.0, []
    ips = [f"198.51.{rng.randrange(3)}.{rng.randrange(6)}" for _ in range(8)]
    for _ in range(count):
        now += rng.expovariate(8)  # about 8 requests a second
        n = rng.randrange(10)
        route = "token" if rng.random() < 0.1 else "send"
        facts = RequestFacts(
            route,
            "POST",
            ips[n % 8],
            key_id=f"key{n % 3}",
            model="demo" if n % 2 else "other",
            token=None if route == "token" else f"jti{n}",
            conversation=None if route == "token" else f"conv{n}",
        )
        out.append((now, facts))
    return out


def recorded(ts: float, facts: RequestFacts) -> Recorded:
    """The line the decision log would write for ``facts``, parsed."""
    prefix = ".".join(facts.client_ip.split(".")[:3]) + ".0/24"
    return Recorded(
        round(ts * 1_000_000),
        facts.route,
        facts.method,
        facts.model,
        facts.key_id,
        HASH(facts.token),
        HASH(facts.conversation),
        prefix,
        HASH(facts.client_ip),
        True,
        (),
        "x",
        1,
    )


async def test_the_simulator_decides_as_the_memory_store() -> None:
    clock = [0.0]
    store = MemoryStore(clock_ms=lambda: clock[0] * 1000)
    simulator = Simulator(SET)
    limited = 0
    for ts, facts in requests(3000, seed=1):
        clock[0] = ts
        selection = SET.select(facts.route, facts.method, facts.model, facts.key_id)
        admission = await store.admit(AdmitRequest(limits=selection.specs(facts)))
        expected = tuple(
            (p.name, "allowed" if s.allowed else "shadow_limited" if p.shadow else "limited")
            for p, s in zip(selection.policies, admission.limits, strict=True)
        )
        decided = simulator.decide(recorded(ts, facts))
        assert tuple((n, d) for n, d, _ in decided.policies) == expected
        limited += decided.limited
    assert 300 < limited < 2700  # the run exercises both answers


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def line(ts_us: int, conversation: str) -> str:
    return json.dumps(
        {
            "log": "decision",
            "v": 1,
            "ts_us": ts_us,
            "route": "send",
            "method": "POST",
            "conversation": conversation,
            "reached": True,
            "policies": [],
        }
    )


def test_files_merge_by_time_and_late_lines_are_put_back_in_order(tmp_path: Path) -> None:
    a = write(tmp_path / "a", [line(10, "a1"), line(30, "a2"), line(20, "a3"), line(50, "a4")])
    b = write(tmp_path / "b", [line(5, "b1"), line(40, "b2")])
    problems = Problems()
    order = [(r.ts_us, r.conversation) for r in merged([a, b], problems)]
    assert order == [(5, "b1"), (10, "a1"), (20, "a3"), (30, "a2"), (40, "b2"), (50, "a4")]
    assert problems.count == 0


def test_bad_lines_are_reported_with_file_and_line_and_skipped(tmp_path: Path) -> None:
    bad = [
        line(1, "ok1"),
        "{not json",
        json.dumps({"log": "decision", "v": 1, "route": "send"}),
        json.dumps({"log": "decision", "v": 9, "ts_us": 2, "route": "send", "method": "GET"}),
        json.dumps({"event": "request", "status": 200}),  # another log's line: ignored
        "INVALID-UTF8",
        line(3, "ok2"),
    ]
    path = tmp_path / "bad.jsonl"
    text = ("\n".join(bad) + "\n").encode().replace(b"INVALID-UTF8", b"\xff\xfe")
    path.write_bytes(text + b'{"log"')  # the last line cut short
    report = replay([path], SET, SET)
    assert report.requests == 2
    assert [(m.line, m.error) for m in report.problems.kept] == [
        (2, "not JSON (unexpected character, expected a string key)"),
        (3, "ts_us is not an integer"),
        (4, "unknown version 9"),
        (6, "not UTF-8"),
        (8, "truncated line"),
    ]
    assert all(m.source == str(path) for m in report.problems.kept)


def test_a_line_later_than_the_window_is_reported_not_replayed_out_of_order(
    tmp_path: Path,
) -> None:
    minutes = 60 * 1_000_000
    path = write(
        tmp_path / "late",
        [
            line(0, "c1"),
            line(20 * minutes, "c2"),
            line(1 * minutes, "late"),
            line(21 * minutes, "c3"),
        ],
    )
    problems = Problems()
    assert [r.conversation for r in merged([path], problems)] == ["c1", "c2", "c3"]
    assert [(m.line, m.error) for m in problems.kept] == [(3, "out of order beyond the window")]
