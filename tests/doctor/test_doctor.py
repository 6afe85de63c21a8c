"""`gateway doctor`: each mistake of tests/fixtures/doctor/ is named precisely, with its
fix; the shipped configuration passes; `gateway serve` refuses what doctor calls an
error among its static checks and starts despite unreachable dependencies."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.doctor.conftest import FIXTURES, clean_env, gateway
from tests.support.harness import SIGNING_ENV
from tests.support.processes import BIN, free_port, run_cli, running
from tests.support.stack import ROOT

CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "config.yaml").is_file())
#: what a memory-store fixture without signing keys is always told (not its mistake)
BACKGROUND = {"signing.generated"}


def expectation(name: str) -> tuple[str, str, str] | None:
    """(severity, check, message fragment) from the fixture's first line, or None (ok)."""
    first = (FIXTURES / name / "config.yaml").read_text().splitlines()[0]
    expected = first.removeprefix("# expect: ")
    if expected == "ok":
        return None
    severity, rest = expected.split(" ", 1)
    check, fragment = rest.split(": ", 1)
    return severity, check, fragment


def named_precisely(name: str, findings: list[dict[str, Any]]) -> bool:
    """Whether ``findings`` are exactly what the fixture ``name`` expects: its one
    finding (with a fix), or nothing but ok for the clean one."""
    problems = [f for f in findings if f["severity"] != "ok" and f["check"] not in BACKGROUND]
    expected = expectation(name)
    if expected is None:
        assert problems == [], problems
        return True
    severity, check, fragment = expected
    matching = [
        f
        for f in problems
        if (f["severity"], f["check"]) == (severity, check) and fragment in f["message"]
    ]
    assert len(matching) == 1, findings
    assert matching[0]["fix"], "every problem comes with its fix"
    assert [f for f in problems if f not in matching] == [], "one mistake, one finding"
    return True


@pytest.mark.parametrize("name", CASES)
async def test_each_mistake_is_named_precisely(name: str, place: Any) -> None:
    """The checks themselves, in this process (what the command prints is below)."""
    from gateway.doctor.run import diagnose

    findings = await diagnose(place(name), clean_env())
    assert named_precisely(name, [asdict(f) for f in findings])


@pytest.mark.parametrize("name", ["clean", "policies_send_in_shadow", "keys_plain_http_origin"])
async def test_the_command_reports_as_json_with_its_exit_status(name: str, place: Any) -> None:
    outcome = await gateway("doctor", "--json", "--config", str(place(name)))
    report = outcome.report
    assert named_precisely(name, report["findings"])
    failed = report["errors"] > 0
    assert outcome.returncode == (1 if failed else 0), outcome.stderr
    assert report["ok"] is not failed
    assert (report["errors"], report["warnings"]) == (
        sum(f["severity"] == "error" for f in report["findings"]),
        sum(f["severity"] == "warning" for f in report["findings"]),
    )


@pytest.mark.slow  # a gateway process
def test_the_shipped_configuration_passes(backend_process: str) -> None:
    """config.yaml as `make run` uses it; only the upstream's address is this test's."""
    result = run_cli(
        "doctor",
        "--config",
        str(ROOT / "config.yaml"),
        env={"GATEWAY__UPSTREAM__URL": backend_process},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"gateway doctor: {ROOT / 'config.yaml'}"
    assert not [line for line in lines if line.startswith("error")]
    assert "ok       policies.protection    enforcing limits on the token and send routes" in (
        result.stdout
    )
    assert "ok       upstream " in result.stdout
    assert lines[-1].startswith("0 errors")


async def test_text_output_gives_each_problem_its_fix(place: Any) -> None:
    config = place("policies_comments_only")
    outcome = await gateway("doctor", "--config", str(config))
    assert outcome.returncode == 1
    lines = outcome.stdout.splitlines()
    (index,) = [i for i, line in enumerate(lines) if line.startswith("error")]
    assert lines[index].startswith("error    policies.protection    ")
    assert lines[index + 1].strip().startswith("fix: add a policy with match: {routes: [token]}")
    assert "policies.allow_unprotected: true" in lines[index + 1]
    assert lines[-1].startswith("1 error, ")


#: one static mistake of each family
STATIC_ERRORS = [
    "unknown_field",
    "policies_comments_only",
    "signing_short_for_hs512",
    "keys_corrupt",
    "admin_on_public_port",
]


@pytest.mark.slow  # a gateway process
@pytest.mark.parametrize("name", STATIC_ERRORS)
async def test_serve_refuses_what_doctor_finds_statically(name: str, place: Any) -> None:
    config = place(name)
    _severity, _check, fragment = expectation(name)  # type: ignore[misc]
    port = str(free_port())
    ports = {"GATEWAY__SERVER__PORT": port, "GATEWAY__ADMIN__PORT": str(free_port())}
    if name == "admin_on_public_port":  # the mistake itself, on a free port
        ports["GATEWAY__ADMIN__PORT"] = port
        fragment = fragment.replace("8080", port)
    outcome = await gateway("serve", "--config", str(config), env=ports, timeout=30)
    assert outcome.returncode == 2, outcome.stdout[-2000:]
    assert fragment in outcome.stderr
    assert "fix: " in outcome.stderr or name == "unknown_field"


@pytest.mark.slow  # a gateway process
@pytest.mark.parametrize("name", ["store_unreachable", "upstream_unreachable"])
def test_serve_starts_while_a_dependency_is_down(name: str, tmp_path: Path) -> None:
    """Reachability is readiness's business: the process starts and says not ready."""
    room = tmp_path / "room"
    shutil.copytree(FIXTURES, room)
    config = room / name / "config.yaml"
    config.write_text(config.read_text().replace("http://upstream.test", "http://127.0.0.1:1"))
    admin = free_port()
    env = {
        **clean_env(SIGNING_ENV),
        "GATEWAY__SERVER__PORT": str(free_port()),
        "GATEWAY__ADMIN__PORT": str(admin),
    }
    argv = [str(BIN / "gateway"), "serve", "--config", str(config)]
    with running(argv, f"http://127.0.0.1:{admin}/healthz", env=env):
        ready = httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=10)
        assert ready.status_code == 503


@pytest.mark.slow  # a gateway process
def test_serve_logs_the_warnings_of_its_static_checks(tmp_path: Path) -> None:
    room = tmp_path / "room"
    shutil.copytree(FIXTURES, room)
    config = room / "trusted_proxies_broad" / "config.yaml"
    admin = free_port()
    env = {
        **clean_env(SIGNING_ENV),
        "GATEWAY__SERVER__PORT": str(free_port()),
        "GATEWAY__ADMIN__PORT": str(admin),
    }
    argv = [str(BIN / "gateway"), "serve", "--config", str(config)]
    with running(argv, f"http://127.0.0.1:{admin}/healthz", env=env) as proc:
        pass
    events = [json.loads(line) for line in Path(proc.log_path).read_text().splitlines()]  # type: ignore[attr-defined]
    (warned,) = [e for e in events if e["event"] == "config_trusted_proxies"]
    assert warned["level"] == "warning"
    assert warned["detail"].startswith("server.trusted_proxies[1]: 10.0.0.0/8 is 16777216")
    assert warned["fix"]
