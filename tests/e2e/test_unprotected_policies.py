"""`gateway serve` and `gateway policies check` as processes: a policy set that switches
the defences off is refused, unless the configuration allows it, which is then logged."""

from pathlib import Path

import pytest

from tests.support.harness import PROTECTED
from tests.support.processes import BIN, free_port, run_cli, running
from tests.support.stack import write_config

pytestmark = pytest.mark.slow  # gateway processes

SHADOW = PROTECTED.replace("burst: 5}", "burst: 5}\n    mode: shadow")


def policy_dir(tmp_path: Path, text: str | None) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    if text is not None:
        (directory / "default.yaml").write_text(text)
    return directory


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        (None, ["token route", "send route", "penalty box is off"]),  # renamed away
        ("", ["token route", "send route", "penalty box is off"]),
        ("# limits: see the wiki\n", ["token route", "send route", "penalty box is off"]),
        (SHADOW, ["send route (its policies are all in shadow mode"]),
        (PROTECTED.replace("penalty_box: {", "penalty_box: {enabled: false, "), ["penalty box"]),
    ],
    ids=["no-file", "empty", "comments", "shadow", "no-penalty-box"],
)
def test_serve_refuses_to_run_unprotected(
    tmp_path: Path, text: str | None, missing: list[str]
) -> None:
    policies = policy_dir(tmp_path, text)
    config = write_config(tmp_path, server={"port": free_port()}, policies={"path": str(policies)})
    result = run_cli("serve", "--config", str(config), timeout=30)
    assert result.returncode == 2, result.stdout[-2000:]
    assert "refusing a policy set that leaves the gateway unprotected" in result.stderr
    for part in missing:
        assert part in result.stderr
    assert "allow_unprotected: true" in result.stderr  # the way out, named
    assert "fix: add a" in result.stderr


def test_serve_runs_unprotected_on_purpose_and_warns(tmp_path: Path) -> None:
    policies = policy_dir(tmp_path, "")
    port = free_port()
    config = write_config(
        tmp_path,
        server={"port": port},
        policies={"path": str(policies), "allow_unprotected": True},
    )
    argv = [str(BIN / "gateway"), "serve", "--config", str(config)]
    with running(argv, f"http://127.0.0.1:{port}/") as proc:
        pass
    log = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
    (line,) = [line for line in log.splitlines() if '"policies_unprotected"' in line]
    assert '"level":"warning"' in line and '"reason":"start"' in line
    assert "allow_unprotected is true" in line and "penalty box is off" in line


def test_policies_check_reports_the_same(tmp_path: Path) -> None:
    policies = policy_dir(tmp_path, "# nothing\n")
    strict = write_config(tmp_path, policies={"path": str(policies)})
    refused = run_cli("policies", "check", "--config", str(strict))
    assert refused.returncode == 1
    assert "refusing a policy set that leaves the gateway unprotected" in refused.stderr
    assert "0 policies from" in refused.stdout  # the effective (empty) set is still shown

    room = tmp_path / "allowed"
    room.mkdir()
    allowed = write_config(room, policies={"path": str(policies), "allow_unprotected": True})
    relaxed = run_cli("policies", "check", "--config", str(allowed))
    assert relaxed.returncode == 0, relaxed.stderr
    assert "warning: " in relaxed.stderr and "running unprotected" in relaxed.stderr
    assert run_cli("policies", "check", "--strict", "--config", str(allowed)).returncode == 1
