"""The results as markdown: the throughput table, the probes and the targets."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench import overload, proof_mode, renewal
from bench.load import LoadResult
from bench.probes import ColdKeys, RedisCalls, TokenMemory, Ttfb

BARE, ENVOY = "bare", "envoy"


@dataclass
class Row:
    scenario: str
    target: str
    kind: str  # direct, bare, gateway, envoy
    result: LoadResult | None = None
    note: str = ""


@dataclass
class Results:
    machine: dict[str, str]
    setup: list[str]
    rows: list[Row] = field(default_factory=list)
    ttfb: list[Ttfb] = field(default_factory=list)
    cold: ColdKeys | None = None
    calls: RedisCalls | None = None
    evalsha_per_post: float | None = None
    memory: TokenMemory | None = None
    overload: overload.Overload | None = None
    renewal: renewal.RenewalRun | None = None
    proof: proof_mode.ProofRun | None = None
    skipped: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def rps(self, scenario: str, target: str) -> float | None:
        for row in self.rows:
            if row.scenario == scenario and row.target == target and row.result:
                return row.result.rps
        return None

    def kind_rps(self, scenario: str, kind: str) -> float | None:
        for row in self.rows:
            if row.scenario == scenario and row.kind == kind and row.result:
                return row.result.rps
        return None


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.0%}" if base else "n/a"


def throughput_table(results: Results, titles: dict[str, str]) -> list[str]:
    lines = [
        "| scenario | target | requests/s | p50 ms | p99 ms | vs bare proxy | vs Envoy |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results.rows:
        title = titles[row.scenario]
        if row.result is None:
            lines.append(f"| {title} | {row.target} | {row.note or 'n/a'} | | | | |")
            continue
        r = row.result
        bare = results.kind_rps(row.scenario, BARE)
        envoy = results.kind_rps(row.scenario, ENVOY)
        flag = f" ({r.non_2xx + r.errors} failed)" if r.non_2xx or r.errors else ""
        lines.append(
            f"| {title} | {row.target} | {r.rps:,.0f}{flag} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {_ratio(r.rps, bare)} | {_ratio(r.rps, envoy)} |"
        )
    return lines


def targets(results: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, holds) for each target of the performance budget."""
    out: list[tuple[str, str, bool | None]] = []
    bare = results.kind_rps("send", BARE)
    redis = results.rps("send", "gateway, Redis")
    if bare and redis:
        out.append(
            ("POST, full checks on Redis >= 60% of the bare proxy",
             f"{redis:,.0f} / {bare:,.0f} req/s = {redis / bare:.0%}", redis / bare >= 0.60)
        )  # fmt: skip
    if results.calls is not None:
        c = results.calls
        extra = (
            f"; EVALSHA per admitted POST under load: {results.evalsha_per_post:.3f}"
            if results.evalsha_per_post is not None
            else ""
        )
        sent = ", ".join(f"{k} x{v}" for k, v in sorted(c.by_command.items()))
        out.append(
            ("exactly one Redis round trip per admitted POST",
             f"{c.round_trips:.2f} commands sent per POST ({sent} for {c.requests} POSTs){extra}",
             abs(c.round_trips - 1.0) < 1e-9)
        )  # fmt: skip
    direct = next((t for t in results.ttfb if t.kind == "direct"), None)
    gw = next((t for t in results.ttfb if t.name == "gateway, Redis"), None)
    if direct and gw:
        added = gw.p50_ms - direct.p50_ms
        out.append(
            ("streaming time to first byte adds <= 1 ms (median)",
             f"{gw.p50_ms:.2f} - {direct.p50_ms:.2f} ms = {added:.2f} ms (gateway, Redis)",
             added <= 1.0)
        )  # fmt: skip
    bare_t = results.kind_rps("token", BARE)
    token = results.rps("token", "gateway, Redis")
    if bare_t and token:
        out.append(
            ("token creation, warm key cache >= 50% of the bare proxy",
             f"{token:,.0f} / {bare_t:,.0f} req/s = {token / bare_t:.0%}", token / bare_t >= 0.5)
        )  # fmt: skip
    if results.memory is not None:
        m = results.memory
        out.append(
            ("Redis memory per live token <= 300 bytes",
             f"{m.used_memory_per_token:.0f} bytes (used_memory delta, {m.tokens:,} tokens)",
             m.used_memory_per_token <= 300)
        )  # fmt: skip
    if results.renewal is not None:
        out += renewal.targets(results.renewal)
    if results.proof is not None:
        out += proof_mode.targets(results.proof)
    if results.overload is not None:
        out += overload.targets(results.overload)
    return out


def markdown(results: Results, titles: dict[str, str], command: str, date: str) -> str:
    lines = [f"# Benchmark results, {date}", "", f"Reproduce: `{command}`", "", "## Machine", ""]
    lines += [f"- {name}: {value}" for name, value in results.machine.items()]
    lines += ["", "## Setup", ""]
    lines += [f"- {item}" for item in results.setup]
    for skipped in results.skipped:
        lines.append(f"- {skipped}")
    if results.rows:
        lines += ["", "## Throughput", ""]
        lines += throughput_table(results, titles)
    if results.ttfb:
        lines += ["", "## Streamed answer: time to the first event", ""]
        lines += ["| target | p50 ms | p99 ms | added to direct (p50) |", "|---|---:|---:|---:|"]
        direct = next((t for t in results.ttfb if t.kind == "direct"), None)
        for t in results.ttfb:
            added = f"{t.p50_ms - direct.p50_ms:+.2f} ms" if direct and t is not direct else ""
            lines.append(f"| {t.name} | {t.p50_ms:.2f} | {t.p99_ms:.2f} | {added} |")
    if results.cold or results.calls or results.memory or results.evalsha_per_post:
        lines += ["", "## Keys, Redis and memory", ""]
    if results.cold is not None:
        c = results.cold
        lines.append(
            f"- Token creation with a cold key (argon2id verification, default cost "
            f"t=3, 64 MiB, p=4; {c.count} keys, one at a time): p50 {c.cold_p50_ms:.1f} ms, "
            f"max {c.cold_max_ms:.1f} ms; the same key again (cache warm): "
            f"p50 {c.warm_p50_ms:.2f} ms."
        )
    if results.calls is not None:
        calls = results.calls
        sent = ", ".join(f"{k} x{v}" for k, v in sorted(calls.by_command.items()))
        lines.append(
            f"- Redis commands per admitted POST (MONITOR, {calls.requests} POSTs): "
            f"{calls.round_trips:.2f} sent by the gateway ({sent}), "
            f"{calls.in_script:.2f} run inside the Lua script."
        )
    if results.evalsha_per_post is not None:
        lines.append(
            f"- Under load (INFO commandstats over the POST run on Redis): "
            f"{results.evalsha_per_post:.3f} EVALSHA per admitted POST."
        )
    if results.memory is not None:
        m = results.memory
        layout = ", ".join(f"{k}: {v:,}" for k, v in sorted(m.layout.items()))
        lines.append(
            f"- Redis memory per live token ({m.tokens:,} tokens, each used once by a POST "
            f"with the shipped policies): {m.used_memory_per_token:.0f} bytes of "
            f"used_memory; the token-scoped keys ({m.token_keys_per_token:.2f} per token) "
            f"take {m.token_bytes_per_token:.0f} bytes by MEMORY USAGE. Keys: {layout}."
        )
    if results.overload is not None:
        where = results.overload.store
        lines += ["", f"## Overload: offered 0.5x to 4x the capacity (gateway, {where})", ""]
        lines += overload.table(results.overload)
        lines += [""] + [f"- {note}" for note in overload.notes(results.overload)]
    lines += ["", "## Targets", "", "| target | measured | holds |", "|---|---|---|"]
    for name, measured, holds in targets(results):
        word = "n/a" if holds is None else ("yes" if holds else "**no**")
        lines.append(f"| {name} | {measured} | {word} |")
    lines += ["", f"Whole run: {results.elapsed_s:.0f} s.", ""]
    return "\n".join(lines)
