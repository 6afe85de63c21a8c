"""``make bench``: start everything, run every scenario side by side, write the report."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from bench import cluster_spread, overload, probes, proof_mode, renewal
from bench.gateway_setup import RAISED_LIMIT, mint_tokens, raised_policies, shipped_policies
from bench.load import LoadGenerator, LoadResult, Request
from bench.machine import cpus, describe, ensure_tools
from bench.probes import SEND_PATH
from bench.report import Results, Row, markdown
from bench.scenarios import SCENARIOS
from bench.stack import Cpus, Stack, Target

RESULTS = Path(__file__).with_name("results")
COMMAND = "make bench"


def say(*parts: object) -> None:
    print(*parts, flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=int, default=3, help="each measured load run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measured runs per target and scenario, interleaved across targets; the "
        "median one is reported (direct to the upstream: one)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured run before each")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=1000, help="client tokens cycled through")
    parser.add_argument(
        "--renewal-tokens",
        type=int,
        default=30_000,
        help="new client tokens per run of the renewal scenario (each is renewed once)",
    )
    parser.add_argument("--ttfb-rounds", type=int, default=300)
    parser.add_argument("--cold-keys", type=int, default=8)
    parser.add_argument("--memory-tokens", type=int, default=5000)
    parser.add_argument(
        "--proof-requests",
        type=int,
        default=20000,
        help="requests (each with a proof of its own) per run of the send_dpop scenario",
    )
    parser.add_argument("--load", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--upstream", choices=("nginx", "aiohttp"), default="nginx")
    parser.add_argument(
        "--upstream-client",
        choices=("builtin", "aiohttp"),
        default="builtin",
        help="the gateways' HTTP client to the upstream (upstream.client)",
    )
    parser.add_argument(
        "--overload-store",
        choices=("redis", "cluster"),
        default="redis",
        help="the overload scenario's store: a Redis of its own, or a 3-primary Redis "
        "Cluster of its own (its processes share the CPUs with the load)",
    )
    parser.add_argument("--no-install", action="store_true", help="never apt-get install")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="scenarios: send read token renewal send_dpop overload; cluster-spread (alone: a "
        "Redis Cluster of its own, python -m bench.cluster_spread)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the POST run on Redis, load the gateway again under py-spy and write "
        "a flame graph to the results directory (needs py-spy, the bench extra)",
    )
    parser.add_argument(
        "--profile-format",
        choices=("flamegraph", "raw", "speedscope"),
        default="flamegraph",
        help="py-spy's output: an SVG flame graph, collapsed stacks (text) or speedscope JSON",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.only == [cluster_spread.NAME]:  # a Cluster of its own, nothing else
        return cluster_spread.main([])
    started = time.monotonic()
    ensure_tools(install=not args.no_install, say=say)
    proxy_cpu, load_cpu = cpus()
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # the probes' clients run with the load
    work = Path(tempfile.mkdtemp(prefix="agent-gateway-bench-"))
    try:
        results = run(args, work, Cpus(proxy_cpu, load_cpu))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results.elapsed_s = time.monotonic() - started
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    titles = {s.name: s.title for s in SCENARIOS} | {
        renewal.NAME: renewal.TITLE,
        proof_mode.NAME: proof_mode.TITLE,
    }
    text = markdown(results, titles, COMMAND, date)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    (args.out / f"{stamp}.md").write_text(text)
    (args.out / "latest.md").write_text(text)
    say("\n" + text)
    say(f"written to {args.out / 'latest.md'} and {args.out / (stamp + '.md')}")
    failed = [r for r in results.rows if r.result and (r.result.non_2xx or r.result.errors)]
    return 1 if failed else 0


def run(args: argparse.Namespace, work: Path, pins: Cpus) -> Results:
    with ExitStack() as exits:
        stack = Stack(work, pins, exits, upstream_client=args.upstream_client)
        say("starting the upstream, Redis, the bare proxy, the gateways and Envoy ...")
        upstream = stack.start_upstream(args.upstream == "nginx")
        keys_path, keys = stack.keys(1 + args.cold_keys)
        hot, cold = keys[0], keys[1:]
        policies = raised_policies(work / "policies-raised")
        targets: list[tuple[str, str, Target]] = [("direct", "direct to the upstream", upstream)]
        targets.append(("bare", "bare aiohttp proxy", stack.start_passthrough(upstream.url)))
        memory = stack.start_gateway("gateway-memory", upstream.url, keys_path, policies)
        targets.append(("gateway", "gateway, memory", memory))
        redis_port = stack.start_redis()
        redis_gw = stack.start_gateway(
            "gateway-redis", upstream.url, keys_path, policies, redis_port=redis_port
        )
        targets.append(("gateway", "gateway, Redis", redis_gw))
        skipped = []
        envoy = stack.start_envoy(upstream.port)
        if isinstance(envoy, str):
            say(envoy)
            skipped.append(envoy)
        else:
            targets.append(("envoy", envoy.name, envoy))
        generator = LoadGenerator.choose(args.load == "wrk", pins.load, args.connections)
        if generator.kind != args.load:
            skipped.append("wrk is not installed: load from the Python generator (slower)")
        minted = mint_tokens(stack.signing, hot.key_id, args.tokens + args.ttfb_rounds + 400)
        tokens = [m.token for m in minted[: args.tokens]]
        probes_tokens = [m.token for m in minted[args.tokens :]]
        results = Results(
            describe(
                {
                    "load generator": generator.describe(),
                    "upstream": upstream.name
                    + (" (return 200)" if upstream.name == "nginx" else ""),
                    "Envoy": envoy.name if not isinstance(envoy, str) else "skipped",
                }
            ),
            _setup_lines(args, pins),
            skipped=skipped,
        )

        # -- every target checks what it should ------------------------------------------
        for kind, label, target in targets:
            if kind in ("gateway", "envoy"):
                ok, seen = probes.refuses_forgery(target.port, kind, probes_tokens[-1])
                results.setup.append(f"checked before the run, {label}: {seen}")
                if not ok:
                    raise RuntimeError(f"{label} does not check tokens as expected: {seen}")
            if kind == "gateway":
                probes.warm_key(target.port, hot.key)

        # -- throughput, every target side by side ------------------------------------
        wanted = [s for s in SCENARIOS if args.only is None or s.name in args.only]
        for scenario in wanted:
            runs: dict[str, list[LoadResult]] = {}
            loads: dict[str, list[Request]] = {}
            for kind, label, target in targets:
                requests = scenario.build(kind, tokens, hot.key)
                if requests is None:
                    continue
                loads[label] = requests
                generator.run(target.port, requests, args.warmup, work)
            # rounds interleave the targets, so a slow spell of the machine (this is
            # often a VM) lands on all of them rather than on one
            for round_ in range(max(args.rounds, 1)):
                for kind, label, target in targets:
                    if label not in loads or (kind == "direct" and round_ > 0):
                        continue
                    counting = target is redis_gw and scenario.name == "send" and round_ == 0
                    if counting:
                        time.sleep(0.3)  # the warm-up's last requests are answered
                        before = probes.commandstats(redis_port)
                        admitted = probes.answered(redis_gw.admin_port or 0, SEND_PATH)
                    result = generator.run(target.port, loads[label], args.seconds, work)
                    if counting:
                        time.sleep(0.3)
                        after = probes.commandstats(redis_port)
                        calls = after.get("evalsha", 0) - before.get("evalsha", 0)
                        admitted = probes.answered(redis_gw.admin_port or 0, SEND_PATH) - admitted
                        results.evalsha_per_post = calls / max(admitted, 1)
                    runs.setdefault(label, []).append(result)
                    say(
                        f"  {scenario.name:6s} {label:24s} {result.rps:9,.0f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
                        + (
                            f"  FAILED {result.non_2xx + result.errors}"
                            if result.non_2xx or result.errors
                            else ""
                        )
                    )
            for kind, label, _target in targets:
                if label not in runs:
                    results.rows.append(Row(scenario.name, label, kind, note="n/a"))
                    continue
                ordered = sorted(runs[label], key=lambda r: r.rps)
                failed = [r for r in ordered if r.non_2xx or r.errors]
                median = failed[0] if failed else ordered[len(ordered) // 2]
                results.rows.append(Row(scenario.name, label, kind, median))
            if args.profile and scenario.name == "send":
                redis_label = next(label for _, label, t in targets if t is redis_gw)
                _profile(redis_gw, loads[redis_label], generator, args, work)

        if args.only is None or renewal.NAME in args.only:
            say("renewal: POST .../token/refresh, a new token per renewal ...")
            bare = next(t for kind, _, t in targets if kind == "bare")
            renewed = renewal.measure(
                generator, bare, redis_gw,
                lambda n: [m.token for m in mint_tokens(stack.signing, hot.key_id, n)],
                work, warmup=args.warmup, seconds=args.seconds, rounds=args.rounds,
                per_run=args.renewal_tokens,
            )  # fmt: skip
            results.renewal = renewed
            _bare_and_gateway(results, renewal.NAME, renewed.bare, renewed.gateway)

        if args.only is None or proof_mode.NAME in args.only:
            say("send_dpop: POST with a key-bound token and a fresh DPoP proof ...")
            bare = next(t for kind, _, t in targets if kind == "bare")
            proved = proof_mode.measure(
                generator, bare, redis_gw,
                lambda jkt, n: [
                    m.token for m in mint_tokens(stack.signing, hot.key_id, n, jkt=jkt)
                ],
                work, warmup=args.warmup, seconds=args.seconds, rounds=args.rounds,
                per_run=args.proof_requests,
            )  # fmt: skip
            results.proof = proved
            _bare_and_gateway(results, proof_mode.NAME, proved.bare, proved.gateway)

        wants_overload = args.only is None or overload.NAME in args.only
        wants_renewal = args.only is None or renewal.NAME in args.only
        wants_proof = args.only is None or proof_mode.NAME in args.only
        # the probes (not for the renewal, proof or overload scenarios alone)
        if wanted or not (wants_overload or wants_renewal or wants_proof):
            say("streamed answers: time to first byte ...")
            ttfb_targets = {label: (t.port, kind) for kind, label, t in targets}
            results.ttfb = probes.ttfb_probe(
                ttfb_targets, probes_tokens[: args.ttfb_rounds], args.ttfb_rounds
            )
            say("Redis commands per admitted POST ...")
            results.calls = probes.redis_calls_probe(
                redis_port, redis_gw.port, probes_tokens[-200:]
            )
            say("cold key verifications ...")
            results.cold = probes.cold_key_probe(redis_gw.port, [k.key for k in cold])
            say("Redis memory per live token (shipped policies) ...")
            results.memory = _memory(stack, upstream, keys_path, hot.key_id, args.memory_tokens)
        if wants_overload:
            say("overload: offered load at 0.5x to 4x the capacity (open loop) ...")
            send = next(s for s in SCENARIOS if s.name == "send").build("gateway", tokens, "")
            assert send is not None
            # its own gateway and Redis, as behind a balancer: the load generator is a
            # trusted proxy, so its thousands of connections are not capped per client
            own_port: int | None = None
            own_url: str | None = None
            label = "Redis"
            if args.overload_store == "cluster":
                ports = stack.start_cluster(3)
                own_url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
                label = "Redis Cluster, 3 primaries"
            else:
                own_port = stack.start_redis("redis-overload")
            overloaded = stack.start_gateway(
                "gateway-overload", upstream.url, keys_path, policies,
                redis_port=own_port, redis_url=own_url, trusted_proxies=["127.0.0.1/32"],
            )  # fmt: skip
            results.overload = overload.measure(
                generator, overloaded, send, work, warmup=args.warmup, seconds=args.seconds,
                cpu=pins.load, say=say, store=label,
            )  # fmt: skip
    return results


def _bare_and_gateway(results: Results, name: str, bare: LoadResult, gateway: LoadResult) -> None:
    """A two-target scenario's rows (the bare proxy and the gateway on Redis), said."""
    for label, kind, result in (
        ("bare aiohttp proxy", "bare", bare),
        ("gateway, Redis", "gateway", gateway),
    ):
        results.rows.append(Row(name, label, kind, result))
        say(
            f"  {name} {label:24s} {result.rps:9,.0f} req/s  "
            f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
        )


def _profile(
    target: Target, requests: list[Request], generator: LoadGenerator, args: argparse.Namespace,
    work: Path,
) -> None:  # fmt: skip
    """A flame graph of the gateway under the same load (a separate, unmeasured run)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists() or target.proc is None:
        say("no py-spy (pip install -e '.[bench]'): no profile")
        return
    suffix = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[args.profile_format]
    out = args.out / f"profile-post-redis.{suffix}"
    args.out.mkdir(parents=True, exist_ok=True)
    argv = [str(spy), "record", "-p", str(target.proc.pid), "-d", str(args.seconds), "-r", "200",
            "-f", args.profile_format, "-o", str(out)]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) as spying:
        time.sleep(0.5)
        generator.run(target.port, requests, args.seconds, work)
        spying.wait(timeout=args.seconds + 60)
    say(f"  profile of the gateway (Redis) under POST load: {out}")


def _memory(
    stack: Stack, upstream: Target, keys_path: Path, key_id: str, count: int
) -> probes.TokenMemory:
    redis_port = stack.start_redis("redis-memory")
    gateway = stack.start_gateway(
        "gateway-memory-probe",
        upstream.url,
        keys_path,
        shipped_policies(stack.work / "policies-shipped"),
        redis_port=redis_port,
        trusted_proxies=["127.0.0.1/32"],
    )
    minted = mint_tokens(stack.signing, key_id, count + 320)
    triples = [(m.token, m.jti, m.conversation_id) for m in minted]
    return probes.memory_probe(redis_port, gateway.port, triples[:count], triples[count:])


def _setup_lines(args: argparse.Namespace, pins: Cpus) -> list[str]:
    pin = (
        f"proxy under test pinned to CPU {pins.proxy}; load generator, upstream and Redis "
        f"pinned to CPU {pins.load} (taskset)"
        if pins.proxy is not None
        else "fewer than 2 CPUs: nothing pinned, the figures mix load and proxy"
    )
    limit = RAISED_LIMIT
    return [
        pin,
        f"each target and scenario: {args.warmup:g} s warm-up, then {args.rounds} measured "
        f"runs of {args.seconds:g} s interleaved with the other targets' (the median run is "
        f"reported; direct to the upstream: one run), {args.connections} keep-alive "
        f"connections; {args.tokens} client tokens cycled",
        f"gateway: `gateway serve` (uvloop, upstream.client {args.upstream_client}, JSON "
        "access log to a file, metrics on, admin listener on), file key store, every check "
        "on: HS256 token signature, issuer, "
        "audience and expiry; binding to the client fingerprint; penalty box; the shipped "
        "policy set (policies/default.yaml) with each limit raised to "
        f"{limit['rate']}/{limit['per']} burst {limit['burst']:,} so no request of a run "
        "is limited (same policies and partitions, so the same state per request)",
        "Envoy: jwt_authn (HS256 on the same tokens, from `Authorization: Bearer`) and "
        "local_ratelimit (one process-wide bucket, never empty), --concurrency 1; no binding "
        "and no shared state",
        "bare proxy: bench/passthrough.py, aiohttp server and client on uvloop, forwards "
        "everything unchanged",
        "client tokens for the message runs are issued by the gateway's own codec with the "
        "run's signing key (what the token route returns, without spending its limits); "
        "each is bound to the load generator's fingerprint at its first use",
        "ratios compare targets of the same scenario in the same run",
    ]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
