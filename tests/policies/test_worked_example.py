"""The worked example of docs/policies.md: ``gateway policies replay`` (a real process) on
the shipped, recorded log says what the doc says, and prints what the doc shows."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any

from tests.support.processes import run_cli
from tests.support.stack import ROOT

EXAMPLE = ROOT / "docs" / "examples" / "school-and-scraper"
LOG = EXAMPLE / "decisions.jsonl"
SCHOOL, SCRAPER = "203.0.113.0/24", "198.51.100.0/24"


def replay(candidate: str, *extra: str) -> tuple[int, str]:
    done = run_cli(
        "policies", "replay", str(LOG), "--baseline", str(EXAMPLE / "baseline.yaml"),
        "--candidate", str(EXAMPLE / candidate), *extra,
    )  # fmt: skip
    assert done.stderr == "", done.stderr
    return done.returncode, done.stdout


def as_json(candidate: str) -> dict[str, Any]:
    code, out = replay(candidate, "--json")
    assert code == 0
    return dict(json.loads(out))


def lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in LOG.read_text().splitlines()]


def by_prefix(field: str) -> dict[str, set[str]]:
    """The values of ``field`` in the sends of each prefix."""
    found: dict[str, set[str]] = defaultdict(set)
    for line in lines():
        if line["route"] == "send" and line[field] is not None:
            found[line["ip_prefix"]].add(line[field])
    return found


def test_the_log_is_the_recorded_school_and_scraper() -> None:
    recorded = lines()
    assert {line["ip_prefix"] for line in recorded} == {SCHOOL, SCRAPER}
    conversations = by_prefix("conversation")
    assert len(conversations[SCHOOL]) == 24 and len(conversations[SCRAPER]) == 2
    assert len({line["ua"] for line in recorded if line["ip_prefix"] == SCHOOL}) == 24
    # nothing was limited when it was recorded: the baseline let the scraper through
    assert {line["outcome"] for line in recorded} == {"admitted", "refused"}
    refused = [line for line in recorded if line["outcome"] == "refused"]
    assert {(r["ip_prefix"], r["code"]) for r in refused} == {(SCRAPER, "token_invalid")}
    # a person's pace: no pupil's token sends twice within the candidate's interval (8/1m),
    # while the scraper's send every second
    sends: dict[str, list[int]] = defaultdict(list)
    for line in recorded:
        if line["route"] == "send" and line["token"]:
            sends[line["token"]].append(line["ts_us"])
    tokens = by_prefix("token")
    for token in tokens[SCHOOL]:
        gaps = [b - a for a, b in zip(sends[token], sends[token][1:], strict=False)]
        assert min(gaps) > 7_500_000, token
    for token in tokens[SCRAPER]:
        assert len(sends[token]) == 30


def test_the_candidate_limits_the_scraper_and_no_pupil() -> None:
    out = as_json("candidate.yaml")
    assert out["replayed"] == out["reproduced"]  # the baseline is what was recorded
    visitors = out["visitors"]
    # the scraper's two conversations are newly limited, no school conversation is
    assert visitors["newly_limited"] == len(by_prefix("conversation")[SCRAPER]) == 2
    assert visitors["newly_limited_by_prefix"] == {SCRAPER: 2}
    assert visitors["no_longer_limited"] == 0
    groups = out["changes"]["newly_limited"]
    assert {g["policy"] for g in groups} == {"send-per-token"}
    assert {g["partition"] for g in groups} == by_prefix("token")[SCRAPER]
    # the penalty box: the scraper's address (its forged tokens) and nobody else's
    scraper_ips = {line["ip"] for line in lines() if line["ip_prefix"] == SCRAPER}
    boxes = out["penalty_box"]
    assert boxes["baseline"]["subjects_boxed"] == 0
    boxed = boxes["candidate"]["subjects"]
    assert [b["subject"] for b in boxed] == list(scraper_ips)
    # every request of the scraper after its fifth forged token falls in the box
    after = [line for line in lines() if line["ip_prefix"] == SCRAPER][5:]
    assert boxed[0]["requests_refused"] == len(after)


def test_a_tighter_limit_per_address_would_hurt_the_school() -> None:
    out = as_json("per-ip.yaml")
    by = out["visitors"]["newly_limited_by_prefix"]
    assert by[SCRAPER] == 2
    assert by[SCHOOL] > 12, "most of the school's conversations"


def test_the_doc_shows_what_the_replay_prints() -> None:
    doc = (ROOT / "docs" / "policies.md").read_text()
    for candidate in ("candidate.yaml", "per-ip.yaml"):
        command = (
            "gateway policies replay docs/examples/school-and-scraper/decisions.jsonl \\\n"
            "    --baseline docs/examples/school-and-scraper/baseline.yaml \\\n"
            f"    --candidate docs/examples/school-and-scraper/{candidate}\n"
        )
        found = re.search(re.escape(f"$ {command}") + r"(.*?)```", doc, re.DOTALL)
        assert found, f"docs/policies.md shows no replay of {candidate}"
        code, printed = replay(candidate)
        assert code == 0
        assert found[1] == printed
