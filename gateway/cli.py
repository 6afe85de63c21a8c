"""The ``gateway`` command: serve, check, manage agent keys and policies."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.config import Config, default_config_path, load_config
from gateway.config.yaml_source import SourceError
from gateway.core import agent_keys
from gateway.core.origins import invalid_origins
from gateway.core.policy import PolicySet, RequestFacts
from gateway.core.signing_keys import SigningKeyError
from gateway.keystore.admin import KeySpecError, create_key
from gateway.keystore.base import KeyRecord, KeyStoreError, utcnow
from gateway.keystore.factory import open_keystore
from gateway.policies.lint import lint, sharding_changes
from gateway.policies.loader import load_policies
from gateway.policies.protection import assess
from gateway.policies.report import binding_text, effective_table, explain_lines
from gateway.policies.schema import ROUTES
from gateway.redis_connect import RedisUrlError, safe_url
from gateway.store.base import AdmitRequest, StoreUnavailable
from gateway.store.factory import open_store

EXIT_USAGE = 2


class CommandError(Exception):
    """A refusal to print as ``gateway: <message>`` with exit status 2."""


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config or default_config_path())


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.doctor.preflight import preflight, refusal
    from gateway.observability.logging import configure
    from gateway.observability.logging import flush as flush_logs
    from gateway.server import run
    from gateway.supervisor import memory_store_refusal, run_supervisor, worker_count

    config = _config(args)
    workers = worker_count(args.workers if args.workers is not None else config.server.workers)
    refused = memory_store_refusal(config, workers)
    if refused is not None:
        raise CommandError(refused)
    configure(config.logging.level, config.logging.format)
    errors = asyncio.run(preflight(config, os.environ))  # doctor's static checks
    flush_logs()  # its warnings, before anything else is said
    if errors:
        raise CommandError(refusal(errors))
    if workers > 1:
        return run_supervisor(config, args.config or default_config_path(), workers, os.environ)
    run(config, os.environ)
    return 0


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError("a number of at least 1, or auto")
    return count


EXIT_DOCTOR_ERRORS = 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway.doctor.findings import count, render_json, render_text
    from gateway.doctor.run import diagnose
    from gateway.observability.logging import configure

    configure("critical", "json", out=sys.stderr.buffer)  # the report says it all
    path = Path(args.config or default_config_path())
    findings = asyncio.run(diagnose(path, os.environ))
    print(render_json(findings, str(path)) if args.json else render_text(findings, str(path)))
    return EXIT_DOCTOR_ERRORS if count(findings, "error") else 0


EXIT_UNHEALTHY = 1


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the admin listener answers 200, else 1 (never 2: Docker reserves it)."""
    from gateway.observability.health_probe import probe_admin

    try:
        config = _config(args)
    except SourceError as exc:
        print(f"gateway: unhealthy: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    problem = probe_admin(config.admin, "/readyz" if args.ready else "/healthz", args.timeout)
    if problem is not None:
        print(f"gateway: unhealthy: {problem}", file=sys.stderr)
        return EXIT_UNHEALTHY
    return 0


async def _create_key(config: Config, args: argparse.Namespace) -> tuple[str, KeyRecord]:
    try:
        return await create_key(
            config,
            args.model,
            args.origin or (),
            args.label or "",
            require_proof=args.require_proof,
        )
    except KeySpecError as exc:
        raise CommandError(str(exc)) from None


def cmd_keys_create(args: argparse.Namespace) -> int:
    config = _config(args)
    key, record = asyncio.run(_create_key(config, args))
    if args.json:
        print(json.dumps({"key": key, "key_id": record.key_id}))
    else:
        print(key)
        print(
            f"key id {record.key_id}, models {', '.join(record.models)}: "
            "store the key now, it is not shown again.",
            file=sys.stderr,
        )
    if record.origins:  # as browsers send them (punycode hosts, no default port)
        print(f"allowed origins: {' '.join(record.origins)}", file=sys.stderr)
    if record.require_proof:
        print("its tokens need a DPoP proof (bound to the client's key)", file=sys.stderr)
    return 0


async def _list_keys(config: Config) -> list[KeyRecord]:
    store = open_keystore(config)
    try:
        return await store.list()
    finally:
        await store.close()


def cmd_keys_list(args: argparse.Namespace) -> int:
    records = asyncio.run(_list_keys(_config(args)))
    for r in records:  # stored by hand or by an older version: say so, every time
        for origin, reason in invalid_origins(r.origins):
            print(
                f"gateway: warning: key {r.key_id}: origin {origin!r} never matches: {reason}",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps([r.public_view() for r in records], indent=2))
        return 0
    print(f"{'KEY ID':<14}{'STATUS':<10}{'CREATED':<22}{'MODELS':<24}LABEL")
    for r in records:
        status = "active" if r.active else "revoked"
        created = r.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{r.key_id:<14}{status:<10}{created:<22}{','.join(r.models):<24}{r.label}")
    return 0


async def _revoke_key(config: Config, key_id: str) -> KeyRecord | None:
    store = open_keystore(config)
    try:
        return await store.revoke(key_id, utcnow())
    finally:
        await store.close()


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    if not agent_keys.KEY_ID_PATTERN.match(args.key_id):
        raise CommandError(f"{args.key_id!r} is not a key id (12 letters and digits)")
    record = asyncio.run(_revoke_key(_config(args), args.key_id))
    if record is None:
        raise CommandError(f"no key with id {args.key_id}")
    print(f"revoked {record.key_id} at {record.revoked_at:%Y-%m-%dT%H:%M:%SZ}")
    return 0


EXIT_INVALID_POLICIES = 1


def cmd_policies_check(args: argparse.Namespace) -> int:
    known_models = None
    try:
        config: Config | None = _config(args)
    except SourceError:
        if args.path is None:
            raise
        config = None  # checking a policy path alone; model names cannot be checked
    if config is not None:
        known_models = set(config.models)
    path = args.path or (config.policies.path if config else None)
    assert path is not None
    try:
        loaded = load_policies(path)
    except SourceError as exc:
        print(f"gateway: invalid policies:\n{exc}", file=sys.stderr)
        return EXIT_INVALID_POLICIES
    files = ", ".join(str(f) for f in loaded.files) or "(no files)"
    print(f"{len(loaded.policies.policies)} policies from {files}")
    print("\n".join(effective_table(loaded.policies)))
    allow = config.policies.allow_unprotected if config is not None else False
    verdict = assess(loaded, allow_unprotected=allow, source=str(path))
    if verdict.refused:
        print(f"gateway: invalid policies:\n{verdict.refusal()}", file=sys.stderr)
        return EXIT_INVALID_POLICIES
    findings = [f"{n.message} (fix: {n.fix})" for n in verdict.warnings]
    findings += lint(loaded, known_models)
    if config is not None and config.store.sharding == "key":
        findings += sharding_changes(loaded, config.store.hot_keys)
    for finding in findings:
        print(f"warning: {finding}", file=sys.stderr)
    return EXIT_INVALID_POLICIES if findings and args.strict else 0


EXIT_POLICIES_TIGHTEN = 3


def cmd_policies_diff(args: argparse.Namespace) -> int:
    """0: no change or nothing tightens; 1: a set is invalid; 3: a change tightens."""
    from gateway.policies.diff import diff, render_text, tightens

    try:
        old, new = load_policies(args.old), load_policies(args.new)
    except SourceError as exc:
        print(f"gateway: invalid policies:\n{exc}", file=sys.stderr)
        return EXIT_INVALID_POLICIES
    changes = diff(old.policies, new.policies)
    if args.json:
        print(json.dumps([c.as_json() for c in changes], indent=2))
    else:
        print("\n".join(render_text(changes)))
    return EXIT_POLICIES_TIGHTEN if tightens(changes) else 0


EXIT_REPLAY_NEW_LIMITED = 3


def cmd_policies_replay(args: argparse.Namespace) -> int:
    """0: replayed; 1: a set is invalid; 3: more than --max-new-limited conversations
    would be newly limited."""
    from gateway.policies.replay import as_json, render_text, replay

    try:
        baseline_path = args.baseline or _config(args).policies.path
        baseline, candidate = load_policies(baseline_path), load_policies(args.candidate)
    except SourceError as exc:
        print(f"gateway: invalid policies:\n{exc}", file=sys.stderr)
        return EXIT_INVALID_POLICIES
    for log_path in args.logs:
        if not log_path.is_file():
            raise CommandError(f"no decision log {log_path}")
    report = replay(args.logs, baseline.policies, candidate.policies)
    for problem in report.problems.kept:
        print(f"{problem.source}:{problem.line}: {problem.error}; skipped", file=sys.stderr)
    if report.problems.count > len(report.problems.kept):
        hidden = report.problems.count - len(report.problems.kept)
        print(f"... and {hidden} more malformed lines, skipped", file=sys.stderr)
    if args.json:
        print(json.dumps(as_json(report), indent=2))
    else:
        print("\n".join(render_text(report)))
    limit = args.max_new_limited
    if limit is not None and len(report.visitors_newly_limited) > limit:
        return EXIT_REPLAY_NEW_LIMITED
    return 0


async def _key_binding(config: Config, policies: PolicySet, key_id: str) -> str | None:
    """The binding mode of the key ``key_id`` (its origins, ``--require-proof``)."""
    record = {r.key_id: r for r in await _list_keys(config)}.get(key_id)
    if record is None:
        return None
    mode = policies.binding.mode_for(record.origins, record.require_proof)
    why = (
        "the key requires proof"
        if record.require_proof
        else "a key with origins"
        if record.origins
        else "a key without origins"
    )
    return f"binding of key {key_id}: mode {mode} ({why})"


async def _explain(config: Config, args: argparse.Namespace) -> list[str]:
    lines = await _explain_limits(config, args)
    if args.key_id:
        policies = load_policies(config.policies.path).policies
        key_line = await _key_binding(config, policies, args.key_id)
        if key_line is not None:
            lines.append(key_line)
    return lines


async def _explain_limits(config: Config, args: argparse.Namespace) -> list[str]:
    policies = load_policies(config.policies.path).policies
    facts = RequestFacts(
        route=args.route,
        method=args.method or ("GET" if args.route in ("token", "messages") else "POST"),
        client_ip=args.ip,
        key_id=args.key_id,
        model=args.model,
        token=args.token,
        conversation=args.conversation,
    )
    applied = policies.applicable(facts)
    if config.store.type == "memory":
        lines = explain_lines(applied, None)
        lines.append(binding_text(policies.binding))
        lines.append("(store: memory: the counters live inside the running gateway)")
        return lines
    store = open_store(config.store)
    try:
        # a key's limits under store.sharding: key are in its slot (a conversation
        # started before the switch, or in a hot key's sub-bucket, is not looked up)
        shard = args.key_id if config.store.sharding == "key" and args.key_id else None
        states = await store.peek(tuple(a.spec for a in applied), shard)
        lines = explain_lines(applied, states)
        lines.append(binding_text(policies.binding))
        subject = policies.penalty_subject(args.ip)
        if subject is not None:
            boxed = (await store.admit(AdmitRequest(penalty_subject=subject))).penalized_ms
            status = f"refused for {boxed} ms more" if boxed else "not boxed"
            lines.append(f"penalty box ({subject}): {status}")
    except StoreUnavailable as exc:
        raise CommandError(
            f"the store at {safe_url(config.store.url)} did not answer: {exc}"
        ) from None
    finally:
        await store.close()
    return lines


def cmd_policies_explain(args: argparse.Namespace) -> int:
    config = _config(args)
    print("\n".join(asyncio.run(_explain(config, args))))
    return 0


#: stands for the key in a snippet printed without --key (only its hash is stored)
KEY_PLACEHOLDER = "PASTE-THE-KEY-HERE"


def cmd_widget_snippet(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from gateway.web.widget import load_widget, snippet

    parts = urlsplit(args.gateway_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise CommandError(
            f"--gateway-url: expected http(s)://host[:port][/path], not {args.gateway_url!r}"
        )
    records = {r.key_id: r for r in asyncio.run(_list_keys(_config(args)))}
    record = records.get(args.key_id)
    if record is None:
        raise CommandError(f"no key with id {args.key_id!r} in the key store")
    if not record.active:
        raise CommandError(f"key {args.key_id} is revoked")
    model = args.model or record.models[0]
    if model not in record.models:
        raise CommandError(
            f"key {args.key_id} does not serve model {model!r} ({', '.join(record.models)})"
        )
    if args.key is not None:
        parsed = agent_keys.parse(args.key)
        if parsed is None or parsed.key_id != args.key_id:
            raise CommandError(f"--key is not the key with id {args.key_id}")
    print(
        snippet(
            args.gateway_url, load_widget(), args.key or KEY_PLACEHOLDER, model, args.locale or ""
        )
    )
    if args.key is None:
        print(
            f"replace {KEY_PLACEHOLDER} with the key (pak_{args.key_id}_...): "
            "only its hash is stored",
            file=sys.stderr,
        )
    if record.origins:
        print(f"pages on these origins may use it: {' '.join(record.origins)}", file=sys.stderr)
    else:
        print(
            f"gateway: warning: key {args.key_id} lists no origin: browsers are refused",
            file=sys.stderr,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="configuration file (default: $GATEWAY_CONFIG or ./config.yaml)",
    )
    parser = argparse.ArgumentParser(
        prog="gateway", description="Security gateway for public AI-agent chat.", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="processes sharing the public port (auto: one per CPU; default server.workers)",
    )
    serve.set_defaults(func=cmd_serve)

    doctor = commands.add_parser(
        "doctor",
        parents=[common],
        help="check the configuration as serve would load it, and its dependencies",
    )
    doctor.add_argument("--json", action="store_true", help="the findings as JSON")
    doctor.set_defaults(func=cmd_doctor)

    health = commands.add_parser(
        "health",
        parents=[common],
        help="ask the configured admin listener for /healthz (exit 0 or 1), as a health check",
    )
    health.add_argument("--ready", action="store_true", help="ask /readyz instead")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    health.set_defaults(func=cmd_health)

    keys = commands.add_parser("keys", help="manage public agent keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", parents=[common], help="create a key")
    create.add_argument("--model", action="append", required=True, help="model id (repeatable)")
    create.add_argument("--origin", action="append", help="allowed browser origin (repeatable)")
    create.add_argument("--label", help="a note for operators")
    create.add_argument(
        "--require-proof",
        action="store_true",
        help="its tokens are always bound to a key the client holds (DPoP), whatever the "
        "policies' binding mode",
    )
    create.add_argument("--json", action="store_true", help='print {"key": ..., "key_id": ...}')
    create.set_defaults(func=cmd_keys_create)
    listing = key_commands.add_parser("list", parents=[common], help="list keys (no secrets)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_keys_list)
    revoke = key_commands.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys_revoke)

    widget = commands.add_parser("widget", help="embed the chat widget in a website")
    widget_commands = widget.add_subparsers(dest="widget_command", required=True, metavar="ACTION")
    tag = widget_commands.add_parser(
        "snippet",
        parents=[common],
        help="print the <script> tag to paste: the versioned URL and its SRI hash (sha384)",
    )
    tag.add_argument("--key-id", required=True, help="the agent key's id (gateway keys list)")
    tag.add_argument(
        "--gateway-url", required=True, help="the gateway's public base URL, as browsers reach it"
    )
    tag.add_argument("--key", help="the key itself, written into the tag (else a placeholder)")
    tag.add_argument("--model", help="a model of the key (default: its first)")
    tag.add_argument(
        "--locale", choices=("en", "fr"), help="the widget's language (default: the page's)"
    )
    tag.set_defaults(func=cmd_widget_snippet)

    policies = commands.add_parser("policies", help="check, explain and diff rate-limit policies")
    policy_commands = policies.add_subparsers(
        dest="policies_command", required=True, metavar="ACTION"
    )
    check = policy_commands.add_parser(
        "check", parents=[common], help="validate, print the effective policies, lint"
    )
    check.add_argument("path", nargs="?", type=Path, help="policy file or directory")
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    check.set_defaults(func=cmd_policies_check)
    explain = policy_commands.add_parser(
        "explain", parents=[common], help="which policies apply to a request, and their state"
    )
    explain.add_argument("--route", required=True, choices=list(ROUTES))
    explain.add_argument("--ip", required=True, help="client IP address")
    explain.add_argument("--key-id")
    explain.add_argument("--model")
    explain.add_argument("--method")
    explain.add_argument("--token", help="the token's jti (never the token itself)")
    explain.add_argument("--conversation")
    explain.set_defaults(func=cmd_policies_explain)
    compare = policy_commands.add_parser(
        "diff",
        parents=[common],
        help="what changed between two policy sets (exit 3 when a change tightens)",
        epilog="exit status: 0 no change or nothing tightens, 1 a set is invalid, "
        "3 a change tightens (docs/policies.md)",
    )
    compare.add_argument("old", type=Path, help="the policy file or directory in force")
    compare.add_argument("new", type=Path, help="the candidate policy file or directory")
    compare.add_argument("--json", action="store_true", help="the changes as a JSON list")
    compare.set_defaults(func=cmd_policies_diff)
    rerun = policy_commands.add_parser(
        "replay",
        parents=[common],
        help="replay decision logs against a candidate policy set (docs/policies.md)",
        epilog="exit status: 0 replayed, 1 a set is invalid, 3 more than --max-new-limited "
        "conversations would be newly limited",
    )
    rerun.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="decision log files")
    rerun.add_argument("--candidate", required=True, type=Path, help="policy file or directory")
    rerun.add_argument(
        "--baseline", type=Path, help="policy file or directory (default: the configured one)"
    )
    rerun.add_argument("--json", action="store_true", help="the report as JSON")
    rerun.add_argument(
        "--max-new-limited",
        type=int,
        metavar="N",
        help="exit 3 when more than N conversations would see a 429 they did not see",
    )
    rerun.set_defaults(func=cmd_policies_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "config"):
        args.config = None
    try:
        return int(args.func(args))
    except (SourceError, SigningKeyError, KeyStoreError, RedisUrlError, CommandError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
