"""A decision log recorded from a real ``gateway serve`` under a scripted burst, replayed
with ``gateway policies replay`` (real processes, the memory store)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.support.processes import run_cli
from tests.support.stack import SEND, stack

SECRET = "replay-test-secret-0123456789abcdef"
USER_AGENT = "burst-client/1.0"

BASELINE = """
ip_prefix: {ipv4: 24, ipv6: 64}
policies:
  - name: token-per-ip
    match: {routes: [token]}
    partition: [client_ip]
    limit: {rate: 30, per: 1m, burst: 10}
  - name: send-per-conversation
    match: {routes: [send]}
    partition: [conversation]
    limit: {rate: %(rate)d, per: 1m, burst: %(burst)d}
  - name: send-per-prefix-shadow
    match: {routes: [send]}
    partition: [ip_prefix]
    mode: shadow
    limit: {rate: 6, per: 1m, burst: 8}
"""
#: sends per conversation in the burst
SENDS = (3, 6, 8)
BURST, HALF = 6, 3


def policies(tmp_path: Path, name: str, burst: int) -> Path:
    path = tmp_path / name
    path.write_text(BASELINE % {"rate": burst, "burst": burst})
    return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """The log of the burst on the memory store, and what the clients saw."""
    return record(tmp_path_factory.mktemp("recorded"))


def record(
    tmp_path: Path, store: dict[str, object] | None = None
) -> tuple[Path, dict[str, object]]:
    """The log of the burst, and what the clients saw (statuses, secrets used)."""
    baseline = policies(tmp_path, "baseline.yaml", BURST)
    log = tmp_path / "decisions.jsonl"
    seen: dict[str, object] = {"statuses": [], "tokens": [], "keys": []}
    with stack(
        tmp_path,
        env={"GATEWAY_DECISION_LOG_SECRET": SECRET},
        sections={
            "observability": {"decision_log": str(log)},
            "policies": {"path": str(baseline), "allow_unprotected": True, "watch": False},
            **({"store": store} if store else {}),
        },
    ) as gw:
        key, _ = gw.create_key()
        seen["keys"] = [key]
        headers = {"User-Agent": USER_AGENT}
        started = time.monotonic()
        with httpx.Client(base_url=gw.public, timeout=10, headers=headers) as http:
            tokens = []
            for _ in SENDS:
                deadline = time.monotonic() + 10
                while True:
                    resp = http.get(
                        "/v1/chat/conversation/public/message/token/demo",
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    if resp.status_code == 200 or time.monotonic() > deadline:
                        break
                    time.sleep(0.25)  # a new key reaches the gateway within seconds
                assert resp.status_code == 200, resp.text
                tokens.append(resp.json()["token"])
            started = time.monotonic()
            statuses: list[list[int]] = []
            for token, count in zip(tokens, SENDS, strict=True):
                statuses.append(
                    [
                        http.post(SEND, json={"client_token": token, "message": "hi"}).status_code
                        for _ in range(count)
                    ]
                )
            # a forged token: refused before the limits, logged as refused
            forged = http.post(SEND, json={"client_token": "x.y.z", "message": "hi"})
        seen["elapsed"] = time.monotonic() - started
        seen["statuses"] = statuses
        seen["tokens"] = tokens
        seen["forged"] = forged.status_code
    # the gateway has stopped: its writer flushed the log
    return log, seen


def replay(*argv: str) -> tuple[int, dict[str, object], str]:
    done = run_cli("policies", "replay", *argv, "--json")
    assert done.returncode in (0, 3), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def test_the_log_holds_every_public_request_and_nothing_secret(
    recorded: tuple[Path, dict[str, object]],
) -> None:
    log, seen = recorded
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    sends = [line for line in lines if line["route"] == "send"]
    assert len(sends) == sum(SENDS) + 1
    assert len([line for line in lines if line["route"] == "token"]) >= len(SENDS)
    # the burst is decided as the policies say: the first BURST of each conversation pass
    assert seen["statuses"] == [[200] * min(n, BURST) + [429] * max(n - BURST, 0) for n in SENDS]
    limited = [line for line in sends if line["outcome"] == "limited"]
    assert len(limited) == sum(max(n - BURST, 0) for n in SENDS)
    assert all(line["limited_by"] == ["send-per-conversation"] for line in limited)
    assert any(
        {"name": "send-per-prefix-shadow", "decision": "shadow_limited"} in line["policies"]
        for line in sends
    )
    refused = [line for line in sends if line["outcome"] == "refused"]
    assert [(r["code"], r["status"], r["reached"]) for r in refused] == [
        ("token_invalid", seen["forged"], False)
    ]
    for secret in [*seen["tokens"], *seen["keys"], "127.0.0.1", USER_AGENT, SECRET]:  # type: ignore[misc]
        assert secret not in text
    assert all(line["ip_prefix"] == "127.0.0.0/24" for line in lines)


def test_replay_against_the_same_policies_reproduces_every_decision(
    recorded: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    log, _ = recorded
    baseline = policies(tmp_path, "baseline.yaml", BURST)
    code, out, _ = replay(str(log), "--baseline", str(baseline), "--candidate", str(baseline))
    assert code == 0
    assert out["replayed"] == out["reproduced"]
    assert out["replayed"] == sum(SENDS) + len(SENDS)  # the forged token never reached them
    assert out["requests_newly_limited"] == 0
    per = out["policies"]["send-per-conversation"]  # type: ignore[index]
    assert per["baseline"]["limited"] == sum(max(n - BURST, 0) for n in SENDS)
    # the policies have no penalty box: nothing counted, nothing boxed
    off = {"rule": None, "failures_counted": 0, "subjects_boxed": 0, "subjects": []}
    assert out["penalty_box"] == {"baseline": off, "candidate": off}
    text = run_cli("policies", "replay", str(log), "--candidate", str(baseline), "--baseline",
                   str(baseline))  # fmt: skip
    assert text.stdout.endswith("penalty box:\n  baseline: off\n  candidate: off\n")
    # without --baseline: the policies of the configuration the log was recorded with
    config = log.parent / "config.yaml"
    _, configured, _ = replay(str(log), "--config", str(config), "--candidate", str(baseline))
    assert configured == out


def test_a_candidate_halving_the_limit_limits_the_expected_requests(
    recorded: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    log, seen = recorded
    # the burst took well under one interval (10 s at the baseline rate, 20 s halved), so
    # each conversation gets exactly its burst: the expectation needs no GCRA
    assert float(seen["elapsed"]) < 5  # type: ignore[arg-type]
    baseline = policies(tmp_path, "baseline.yaml", BURST)
    candidate = policies(tmp_path, "candidate.yaml", HALF)
    newly = sum(min(n, BURST) - min(n, HALF) for n in SENDS)
    visitors = sum(1 for n in SENDS if HALF < n <= BURST)  # limited only when halved
    code, out, _ = replay(str(log), "--baseline", str(baseline), "--candidate", str(candidate))
    assert code == 0
    assert out["requests_newly_limited"] == newly
    assert out["requests_no_longer_limited"] == 0
    assert out["visitors"] == {
        "newly_limited": visitors,
        "no_longer_limited": 0,
        "newly_limited_by_prefix": {"127.0.0.0/24": visitors},
        "no_longer_limited_by_prefix": {},
    }
    per = out["policies"]["send-per-conversation"]  # type: ignore[index]
    assert per["candidate"]["limited"] == sum(max(n - HALF, 0) for n in SENDS)
    assert per["limited_difference"] == newly
    groups = out["changes"]["newly_limited"]  # type: ignore[index]
    assert sorted(g["requests"] for g in groups) == sorted(
        min(n, BURST) - min(n, HALF) for n in SENDS if min(n, BURST) > HALF
    )
    # the reverse replay: the same requests are no longer limited
    _, back, _ = replay(str(log), "--baseline", str(candidate), "--candidate", str(baseline))
    assert back["requests_no_longer_limited"] == newly
    assert back["visitors"] == {
        "newly_limited": 0,
        "no_longer_limited": visitors,
        "newly_limited_by_prefix": {},
        "no_longer_limited_by_prefix": {"127.0.0.0/24": visitors},
    }
    # gated in CI: more newly limited conversations than allowed exits 3
    gated, _, _ = replay(
        str(log),
        "--baseline",
        str(baseline),
        "--candidate",
        str(candidate),
        "--max-new-limited",
        str(visitors - 1),
    )
    assert gated == 3
    allowed, _, _ = replay(
        str(log),
        "--baseline",
        str(baseline),
        "--candidate",
        str(candidate),
        "--max-new-limited",
        str(visitors),
    )
    assert allowed == 0


def test_logs_of_two_replicas_merge_and_bad_lines_are_reported_and_skipped(
    recorded: tuple[Path, dict[str, object]], tmp_path: Path
) -> None:
    log, _ = recorded
    lines = log.read_text().splitlines(keepends=True)
    # two replicas behind one balancer: each wrote every other request
    first, second = tmp_path / "replica-a.jsonl", tmp_path / "replica-b.jsonl"
    first.write_text("".join(lines[0::2]) + "{not json\n")
    second.write_text("".join(lines[1::2]) + lines[-1][: len(lines[-1]) // 2])
    baseline = policies(tmp_path, "baseline.yaml", BURST)
    candidate = policies(tmp_path, "candidate.yaml", HALF)
    whole = replay(str(log), "--baseline", str(baseline), "--candidate", str(candidate))[1]
    code, split, stderr = replay(
        str(second), str(first), "--baseline", str(baseline), "--candidate", str(candidate)
    )
    assert code == 0
    assert f"{first}:{len(lines[0::2]) + 1}: not JSON" in stderr
    assert f"{second}:{len(lines[1::2]) + 1}: truncated line" in stderr
    assert split["malformed"]["count"] == 2  # type: ignore[index]
    for field in ("requests", "replayed", "reproduced", "policies", "visitors"):
        assert split[field] == whole[field], field
    assert split["replayed"] == split["reproduced"]


def test_a_log_recorded_on_redis_replays_exactly(redis_url: str, tmp_path: Path) -> None:
    """Redis decides on its own clock (TIME); the log holds the gateway's: on one host
    they agree, and a burst far from any limit's edge is reproduced exactly."""
    log, seen = record(tmp_path, {"type": "redis", "url": redis_url})
    assert seen["statuses"] == [[200] * min(n, BURST) + [429] * max(n - BURST, 0) for n in SENDS]
    baseline = policies(tmp_path, "baseline.yaml", BURST)
    candidate = policies(tmp_path, "candidate.yaml", HALF)
    code, out, _ = replay(str(log), "--baseline", str(baseline), "--candidate", str(candidate))
    assert code == 0
    assert out["replayed"] == out["reproduced"] == sum(SENDS) + len(SENDS)
    assert out["requests_newly_limited"] == sum(min(n, BURST) - min(n, HALF) for n in SENDS)
