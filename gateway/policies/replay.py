"""``gateway policies replay``: what a candidate policy set would have done to real traffic.

Decision logs (:mod:`gateway.observability.decision_log`) are read line by line, merged
by time across files (one per replica), and every request that reached the rate limits
is put through two policy sets, the baseline and the candidate, with the gateway's own
code: :meth:`PolicySet.select` picks the policies, :func:`gateway.core.gcra.evaluate`
decides each limit on a simulated clock (the logged time), all or nothing as the stores
do. No store, no network.

A partition is rebuilt from what the line holds: the client's address and the token,
conversation and User-Agent as keyed hashes, the address's prefix, the key id and the
model. Equal values hash equally, so the partitions, hence the decisions, are the ones
the gateway made; only their names are opaque. The prefix is the one logged (the policies'
``ipv4_prefix``/``ipv6_prefix`` at the time): a candidate with other prefix lengths is
replayed with the logged ones, and the report says so.

Memory stays bounded: the files are streamed (a heap merge of line iterators, each
through a small reorder window since lines are written when a request ends, not when it
is decided), the limit state of idle partitions is swept, and groups are capped.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import orjson

from gateway.core.gcra import EPOCH_US, LimitSpec, evaluate
from gateway.core.policy import PolicySet, Selection
from gateway.core.redis_keys import limit_name
from gateway.observability.decision_log import VERSION
from gateway.policies.replay_box import BoxReplay, rule_json
from gateway.policies.report import penalty_text

#: lines held to put one file back in time order (lines are written as requests end)
REORDER_WINDOW_US = 600 * 1_000_000
REORDER_MAX = 200_000
#: idle limit state is dropped every so many requests
SWEEP_EVERY = 50_000
#: distinct partitions whose changes are counted at most (then "(other)")
MAX_GROUPS = 100_000
TOP = 20
#: malformed lines kept for the report (all are counted)
MAX_MALFORMED = 100


class Recorded(NamedTuple):
    """One request of a decision log, as a replay needs it."""

    ts_us: int
    route: str
    method: str
    model: str | None
    key_id: str | None
    token: str | None
    conversation: str | None
    ip_prefix: str | None
    client: str | None
    #: the limits were evaluated (False: refused or boxed before them)
    reached: bool
    #: policy name -> allowed, limited or shadow_limited, as logged
    decisions: tuple[tuple[str, str], ...]
    source: str
    line: int
    #: the problem code the request was answered with (None when answered)
    code: str | None = None


class Malformed(NamedTuple):
    source: str
    line: int
    error: str


def parse_line(text: str, source: str, number: int) -> Recorded | None:
    """The request of one line; None for a line that is not a decision (a log shared
    with other lines); ValueError for a malformed one."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("log") != "decision":
        return None
    if data.get("v") != VERSION:
        raise ValueError(f"unknown version {data.get('v')!r}")
    ts, route, method = data.get("ts_us"), data.get("route"), data.get("method")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise ValueError("ts_us is not an integer")
    if not isinstance(route, str) or not isinstance(method, str):
        raise ValueError("route or method missing")
    applied = data.get("policies", [])
    if not isinstance(applied, list):
        raise ValueError("policies is not a list")
    decisions = []
    for item in applied:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError("a policy without a name")
        decisions.append((item["name"], str(item.get("decision"))))
    get = data.get
    texts = (get("model"), get("key_id"), get("token"), get("conversation"), get("ip_prefix"))
    client = get("client") or get("ip")
    code = get("code")
    for value in (*texts, client, code):
        if value is not None and not isinstance(value, str):
            raise ValueError("a field that should be a string is not")
    return Recorded(
        ts,
        route,
        method,
        *texts,
        client,
        get("reached") is True,
        tuple(decisions),
        source,
        number,
        code,
    )


@dataclass
class Problems:
    """Malformed lines: all counted, the first :data:`MAX_MALFORMED` kept."""

    count: int = 0
    kept: list[Malformed] = field(default_factory=list)

    def add(self, problem: Malformed) -> None:
        self.count += 1
        if len(self.kept) < MAX_MALFORMED:
            self.kept.append(problem)


def read_log(path: Path, problems: Problems) -> Iterator[Recorded]:
    """The decisions of one file in the order written; malformed lines reported."""
    source = str(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                problems.add(Malformed(source, number, "not UTF-8"))
                continue
            if not text.strip():
                continue
            if not text.endswith("\n"):  # the writer ends every line: a cut one
                problems.add(Malformed(source, number, "truncated line"))
                continue
            try:
                found = parse_line(text, source, number)
            except ValueError as exc:
                problems.add(Malformed(source, number, str(exc)))
                continue
            if found is not None:
                yield found


def reordered(
    lines: Iterable[Recorded], problems: Problems, window_us: int = REORDER_WINDOW_US
) -> Iterator[Recorded]:
    """``lines`` in time order, given that none is later than ``window_us`` (lines are
    written when their request ends); at most :data:`REORDER_MAX` lines held. A line
    later still is reported and skipped (replayed out of order it would be wrong)."""
    held: list[tuple[int, int, Recorded]] = []
    newest = 0
    for seq, line in enumerate(lines):
        if held and line.ts_us < newest - window_us:
            problems.add(Malformed(line.source, line.line, "out of order beyond the window"))
            continue
        heapq.heappush(held, (line.ts_us, seq, line))
        newest = max(newest, line.ts_us)
        while held and (held[0][0] < newest - window_us or len(held) > REORDER_MAX):
            yield heapq.heappop(held)[2]
    while held:
        yield heapq.heappop(held)[2]


def merged(paths: Iterable[Path], problems: Problems) -> Iterator[Recorded]:
    """The decisions of every file, merged by time (streamed: one heap entry per file)."""
    streams = [reordered(read_log(path, problems), problems) for path in paths]
    return heapq.merge(*streams, key=lambda r: r.ts_us)


#: where each partition component's value is in a :class:`Recorded` (None: constant)
_COMPONENT_FIELD: dict[str, int | None] = {
    "global": None,
    "client_ip": Recorded._fields.index("client"),
    "ip_prefix": Recorded._fields.index("ip_prefix"),
    "api_key": Recorded._fields.index("key_id"),
    "model": Recorded._fields.index("model"),
    "token": Recorded._fields.index("token"),
    "conversation": Recorded._fields.index("conversation"),
}


class _Planned(NamedTuple):
    """One selected policy, with where its partition's values are in a line."""

    name: str
    fields: tuple[int | None, ...]
    by_token: bool
    token_only: bool
    interval_us: int
    burst: int
    shadow: bool


def _plan(selection: Selection) -> tuple[_Planned, ...]:
    return tuple(
        _Planned(
            p.name,
            tuple(_COMPONENT_FIELD[part] for part in p.partition),
            p.by_token,
            p.token_only,
            p.interval_us,
            p.limit.burst,
            p.shadow,
        )
        for p in selection.policies
    )


class Decided(NamedTuple):
    #: (policy, decision, partition) for each policy that applied
    policies: tuple[tuple[str, str, str], ...]
    limited: bool
    #: (policy, decision) for each policy that applied, as a line logs them
    pairs: tuple[tuple[str, str], ...]


class Simulator:
    """One policy set's limits on a simulated clock: the TATs the store would hold."""

    def __init__(self, policies: PolicySet) -> None:
        self.policies = policies
        self._tats: dict[tuple[str | None, str], int] = {}
        self._seen = 0
        #: per selection (by identity; the set keeps its selections): the planned policies
        self._plans: dict[int, tuple[Selection, tuple[_Planned, ...]]] = {}

    def _specs(self, request: Recorded) -> list[tuple[LimitSpec, str, str]]:
        """As :meth:`Selection.specs`, from the logged values: (spec, partition, policy)."""
        selection = self.policies.select(
            request.route, request.method, request.model, request.key_id
        )
        plan = self._plans.get(id(selection))
        if plan is None or plan[0] is not selection:
            plan = (selection, _plan(selection))
            if len(self._plans) >= 8192:
                self._plans.clear()
            self._plans[id(selection)] = plan
        out = []
        for p in plan[1]:
            fields = p.fields
            if len(fields) == 1:  # the common case, without a join
                i = fields[0]
                partition = "*" if i is None else cast(str, request[i] or "-")
            else:
                partition = "|".join(
                    "*" if i is None else cast(str, request[i] or "-") for i in fields
                )
            scope = request.token if p.by_token else None
            key = p.name if scope is not None and p.token_only else limit_name(p.name, partition)
            out.append((LimitSpec(key, p.interval_us, p.burst, p.shadow, scope), partition, p.name))
        return out

    def decide(self, request: Recorded) -> Decided:
        now = request.ts_us - EPOCH_US
        specs = self._specs(request)
        tats = self._tats
        states = [evaluate(spec, tats.get((spec.scope, spec.key)), now) for spec, _, _ in specs]
        limited = False
        names, pairs = [], []
        for (spec, partition, name), state in zip(specs, states, strict=True):
            if state.allowed:
                decision = "allowed"
            elif spec.shadow:
                decision = "shadow_limited"
            else:
                decision, limited = "limited", True
            names.append((name, decision, partition))
            pairs.append((name, decision))
        if not limited:  # all or nothing, as the stores
            for (spec, _, _), state in zip(specs, states, strict=True):
                if state.allowed:
                    tats[(spec.scope, spec.key)] = state.new_tat
        self._seen += 1
        if self._seen % SWEEP_EVERY == 0:
            self._sweep(now)
        return Decided(tuple(names), limited, tuple(pairs))

    def _sweep(self, now: int) -> None:
        """Drop idle state: a TAT not after now decides as no state at all."""
        self._tats = {k: tat for k, tat in self._tats.items() if tat > now}

    @property
    def partitions(self) -> int:
        return len(self._tats)


@dataclass
class Group:
    count: int
    first_us: int
    last_us: int


@dataclass
class Report:
    files: list[str]
    requests: int = 0
    #: requests that reached the limits (the ones replayed)
    replayed: int = 0
    #: replayed requests whose baseline decisions equal the logged ones
    reproduced: int = 0
    first_us: int = 0
    last_us: int = 0
    #: (set, policy, decision) -> requests
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    newly_limited: int = 0
    newly_admitted: int = 0
    #: (change, policy, partition) -> group
    groups: dict[tuple[str, str, str], Group] = field(default_factory=dict)
    other_groups: int = 0
    #: conversations with at least one 429 under each set, with the IP prefix of their
    #: first such request
    limited_baseline: dict[str, str | None] = field(default_factory=dict)
    limited_candidate: dict[str, str | None] = field(default_factory=dict)
    problems: Problems = field(default_factory=Problems)
    notes: list[str] = field(default_factory=list)
    #: each set's penalty box over the log
    boxes: dict[str, BoxReplay] = field(default_factory=dict)

    @property
    def visitors_newly_limited(self) -> set[str]:
        return self.limited_candidate.keys() - self.limited_baseline.keys()

    @property
    def visitors_no_longer_limited(self) -> set[str]:
        return self.limited_baseline.keys() - self.limited_candidate.keys()

    def visitors_by_prefix(self, change: str) -> dict[str, int]:
        """The conversations of ``change`` (``newly_limited``, ``no_longer_limited``)
        per IP prefix, the top :data:`TOP`, most first."""
        if change == "newly_limited":
            found, prefixes = self.visitors_newly_limited, self.limited_candidate
        else:
            found, prefixes = self.visitors_no_longer_limited, self.limited_baseline
        counts = Counter(prefixes[c] or "-" for c in found)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP])

    def _count(self, which: str, decided: Decided) -> None:
        counts = self.counts
        for pair in decided.pairs:
            key = (which, *pair)
            counts[key] = counts.get(key, 0) + 1

    @property
    def per_policy(self) -> dict[str, dict[str, Counter[str]]]:
        """policy -> set (``baseline``/``candidate``) -> decision -> requests"""
        out: dict[str, dict[str, Counter[str]]] = {}
        for (which, name, decision), n in self.counts.items():
            sets = out.setdefault(name, {"baseline": Counter(), "candidate": Counter()})
            sets[which][decision] += n
        return out

    def _group(self, change: str, decided: Decided, ts: int) -> None:
        for name, decision, partition in decided.policies:
            if decision != "limited":
                continue
            key = (change, name, partition)
            group = self.groups.get(key)
            if group is None:
                if len(self.groups) >= MAX_GROUPS:
                    self.other_groups += 1
                    continue
                self.groups[key] = Group(1, ts, ts)
            else:
                group.count += 1
                group.last_us = ts

    def top_groups(self, change: str) -> list[tuple[str, str, Group]]:
        found = [(n, p, g) for (c, n, p), g in self.groups.items() if c == change]
        found.sort(key=lambda item: (-item[2].count, item[2].first_us))
        return found[:TOP]


def _prefix_bits(prefix: str | None) -> int | None:
    if prefix is None or "/" not in prefix:
        return None
    try:
        return int(prefix.rsplit("/", 1)[1])
    except ValueError:
        return None


def replay(paths: list[Path], baseline: PolicySet, candidate: PolicySet) -> Report:
    """Put every logged request that reached the limits through both sets."""
    report = Report([str(p) for p in paths])
    base, cand = Simulator(baseline), Simulator(candidate)
    report.boxes = {
        "baseline": BoxReplay(baseline.penalty),
        "candidate": BoxReplay(candidate.penalty),
    }
    box_sets = [b for b in report.boxes.values() if b.penalty is not None]
    prefix_checked = candidate.ipv4_prefix == baseline.ipv4_prefix and (
        candidate.ipv6_prefix == baseline.ipv6_prefix
    )
    logged_bits: set[int] = set()
    for request in merged(paths, report.problems):
        report.requests += 1
        if not report.first_us:
            report.first_us = request.ts_us
        report.last_us = request.ts_us
        for box in box_sets:
            box.see(request)
        if not request.reached:
            continue
        if request.ip_prefix is not None and len(logged_bits) < 4:
            bits = _prefix_bits(request.ip_prefix)
            if bits is not None:
                logged_bits.add(bits)
        report.replayed += 1
        b, c = base.decide(request), cand.decide(request)
        if b.pairs == request.decisions:
            report.reproduced += 1
        report._count("baseline", b)
        report._count("candidate", c)
        conversation = request.conversation
        if b.limited and conversation is not None:
            report.limited_baseline.setdefault(conversation, request.ip_prefix)
        if c.limited and conversation is not None:
            report.limited_candidate.setdefault(conversation, request.ip_prefix)
        if c.limited and not b.limited:
            report.newly_limited += 1
            report._group("newly_limited", c, request.ts_us)
        elif b.limited and not c.limited:
            report.newly_admitted += 1
            report._group("no_longer_limited", b, request.ts_us)
    if not prefix_checked or any(
        bits not in (candidate.ipv4_prefix, candidate.ipv6_prefix) for bits in logged_bits
    ):
        report.notes.append(
            "the candidate's ipv4_prefix/ipv6_prefix differ from the logged prefixes "
            f"({sorted(logged_bits)}): ip_prefix partitions are replayed with the logged ones"
        )
    return report


# -- output -------------------------------------------------------------------------------
def _iso(us: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def as_json(report: Report) -> dict[str, Any]:
    policies = {}
    per_policy = report.per_policy
    for name in sorted(per_policy):
        sets = per_policy[name]
        b, c = sets["baseline"], sets["candidate"]
        policies[name] = {
            "baseline": {k: b[k] for k in ("allowed", "limited", "shadow_limited")},
            "candidate": {k: c[k] for k in ("allowed", "limited", "shadow_limited")},
            "limited_difference": c["limited"] - b["limited"],
        }

    def groups(change: str) -> list[dict[str, Any]]:
        return [
            {
                "policy": name,
                "partition": partition,
                "requests": g.count,
                "first": _iso(g.first_us),
                "last": _iso(g.last_us),
            }
            for name, partition, g in report.top_groups(change)
        ]

    return {
        "files": report.files,
        "requests": report.requests,
        "replayed": report.replayed,
        "reproduced": report.reproduced,
        "first": _iso(report.first_us) if report.first_us else None,
        "last": _iso(report.last_us) if report.last_us else None,
        "policies": policies,
        "requests_newly_limited": report.newly_limited,
        "requests_no_longer_limited": report.newly_admitted,
        "changes": {
            "newly_limited": groups("newly_limited"),
            "no_longer_limited": groups("no_longer_limited"),
        },
        "visitors": {
            "newly_limited": len(report.visitors_newly_limited),
            "no_longer_limited": len(report.visitors_no_longer_limited),
            "newly_limited_by_prefix": report.visitors_by_prefix("newly_limited"),
            "no_longer_limited_by_prefix": report.visitors_by_prefix("no_longer_limited"),
        },
        "malformed": {
            "count": report.problems.count,
            "lines": [
                {"file": m.source, "line": m.line, "error": m.error} for m in report.problems.kept
            ],
        },
        "penalty_box": {which: _box_json(box) for which, box in report.boxes.items()},
        "notes": report.notes,
    }


def _box_json(box: BoxReplay) -> dict[str, Any]:
    return {
        "rule": rule_json(box.penalty),
        "failures_counted": box.failures_counted,
        "subjects_boxed": len(box.subjects) + box.other,
        "subjects": [
            {
                "subject": subject,
                "kind": b.kind,
                "boxes": b.boxes,
                "boxed_seconds": b.boxed_ms / 1000,
                "first_boxed": _iso(round(b.first_ms * 1000)),
                "boxed_until": _iso(round(b.until_ms * 1000)),
                "requests_refused": b.refused,
            }
            for subject, b in box.ranked()[:TOP]
        ],
    }


def render_text(report: Report) -> list[str]:
    data = as_json(report)
    share = f"{100 * report.reproduced / report.replayed:.2f}%" if report.replayed else "-"
    out = [
        f"{report.requests} requests in {len(report.files)} file(s), "
        f"{data['first']} .. {data['last']}",
        f"replayed (reached the limits): {report.replayed}; baseline reproduces the logged "
        f"decisions of {report.reproduced} ({share})",
        "",
        f"{'policy':<28} {'baseline lim':>12} {'candidate lim':>13} {'diff':>7}"
        f" {'base shadow':>11} {'cand shadow':>11}",
    ]
    for name, row in data["policies"].items():
        b, c = row["baseline"], row["candidate"]
        out.append(
            f"{name:<28} {b['limited']:>12} {c['limited']:>13} {row['limited_difference']:>+7}"
            f" {b['shadow_limited']:>11} {c['shadow_limited']:>11}"
        )
    out.append("")
    out.append(
        f"requests newly limited: {report.newly_limited}; "
        f"no longer limited: {report.newly_admitted}"
    )
    for change, title in (("newly_limited", "newly limited"), ("no_longer_limited", "no longer")):
        rows = data["changes"][change]
        if rows:
            out.append(f"top partitions, {title} (policy: partition  requests  first .. last):")
            out.extend(
                f"  {r['policy']}: {r['partition']}  {r['requests']}  {r['first']} .. {r['last']}"
                for r in rows
            )
    out.append(
        f"visitors affected: {data['visitors']['newly_limited']} conversation(s) would see a "
        f"429 under the candidate and not the baseline; "
        f"{data['visitors']['no_longer_limited']} the reverse"
    )
    for change, title in (("newly_limited", "newly limited"), ("no_longer_limited", "no longer")):
        by_prefix = data["visitors"][f"{change}_by_prefix"]
        if by_prefix:
            out.append(
                f"  {title}, by IP prefix: "
                + ", ".join(f"{prefix} {n}" for prefix, n in by_prefix.items())
            )
    out.extend(_box_lines(report, data["penalty_box"]))
    out.extend(f"note: {note}" for note in report.notes)
    return out


def _box_lines(report: Report, boxes: dict[str, Any]) -> list[str]:
    out = ["", "penalty box:"]
    for which, box in report.boxes.items():
        row = boxes[which]
        if box.penalty is None:
            out.append(f"  {which}: off")
            continue
        out.append(
            f"  {which}: {penalty_text(box.penalty)}; {row['failures_counted']} failure(s) "
            f"counted, {row['subjects_boxed']} subject(s) boxed"
        )
        out.extend(
            f"    {s['kind']} {s['subject']}: boxed {s['boxes']}x for {s['boxed_seconds']:g}s"
            f" from {s['first_boxed']} to {s['boxed_until']}, {s['requests_refused']} logged"
            " request(s) refused in the box"
            for s in row["subjects"]
        )
    return out
