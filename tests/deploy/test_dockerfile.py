"""The Dockerfile, read statically (no container engine is needed): a multi-stage build
whose final stage is slim, unprivileged and without build tools, and whose ports,
health check and user agree with the configuration and the Kubernetes manifests."""

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gateway.config import Config, load_config
from gateway.policies.loader import load_policies

ROOT = Path(__file__).resolve().parents[2]
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|make|clang|python3-dev|libc6-dev)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages, with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            stages.append(Stage(base, name))
        elif keyword == "ARG" and not stages:
            key, _, value = rest.partition("=")
            args[key] = value
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return args, stages


def k8s_config() -> Config:
    return load_config(ROOT / "deploy" / "k8s" / "base" / "config.yaml", environ={})


def test_multi_stage_build_with_a_slim_runtime() -> None:
    _args, stages = parse(ROOT / "Dockerfile")
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert final.base.startswith("python:3.11-slim")
    assert any("pip wheel" in r for r in builder.all("RUN"))
    # the wheels are mounted for the install, not copied: a copy leaves a dead layer
    mount = f"--mount=type=bind,from={builder.name or '0'},source=/wheels,target=/wheels"
    assert any(r.startswith(mount) and "pip install" in r for r in final.all("RUN"))
    assert not any("/wheels" in c for c in final.all("COPY")), final.all("COPY")


def test_no_parser_directive_fetches_a_frontend() -> None:
    """``# syntax=...`` makes BuildKit pull a frontend image: offline builds fail at once."""
    head = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not line.startswith("#"):
            break
        head.append(line)
    assert not [line for line in head if re.match(r"#\s*syntax\s*=", line, re.I)], head


def test_no_stage_installs_build_tools() -> None:
    """Every dependency is a ready-made wheel: no compiler in the builder either."""
    _args, stages = parse(ROOT / "Dockerfile")
    for stage in stages:
        for command in stage.all("RUN"):
            assert not BUILD_TOOLS.search(command), command
            assert "apt-get" not in command, command


def test_the_image_carries_oci_labels() -> None:
    _args, stages = parse(ROOT / "Dockerfile")
    final = stages[-1]
    labels = dict(
        re.findall(r'(org\.opencontainers\.image\.\w+)="([^"]*)"', " ".join(final.all("LABEL")))
    )
    assert {"title", "description", "version", "licenses"} <= {k.rsplit(".", 1)[1] for k in labels}
    version = dict(a.partition("=")[::2] for a in final.all("ARG"))["VERSION"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version == project["version"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]["text"]


def test_the_final_stage_has_no_build_tools_and_installs_offline() -> None:
    _args, stages = parse(ROOT / "Dockerfile")
    final = stages[-1]
    for command in final.all("RUN"):
        assert not BUILD_TOOLS.search(command), command
        assert "apt-get install" not in command
        if "pip install" in command:
            assert "--no-index" in command  # only the wheels built in the builder


def test_it_runs_unprivileged_as_the_manifests_expect() -> None:
    _args, stages = parse(ROOT / "Dockerfile")
    users = stages[-1].all("USER")
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root UID (runAsNonRoot checks it)"
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "deployment.yaml").read_text())
    context = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (int(uid), int(gid)) == (context["runAsUser"], context["runAsGroup"])


def test_ports_health_check_and_entry_point_agree_with_the_configuration() -> None:
    _args, stages = parse(ROOT / "Dockerfile")
    final = stages[-1]
    config = k8s_config()
    exposed = {int(p) for line in final.all("EXPOSE") for p in line.split()}
    assert exposed == {config.server.port, config.admin.port}
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["gateway"]
    assert json.loads(final.all("CMD")[-1]) == ["serve"]
    env = " ".join(final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # the root filesystem is read-only
    assert "GATEWAY_CONFIG=/etc/agent-gateway/config.yaml" in env


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "var", "tests"} <= ignored


def test_the_health_check_follows_the_configured_admin_listener() -> None:
    """No port or address in the Dockerfile: `gateway health` reads the configuration as
    `serve` does (tests/e2e/test_health_command.py runs it against a real gateway)."""
    _args, stages = parse(ROOT / "Dockerfile")
    (check,) = stages[-1].all("HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    assert json.loads(command) == ["gateway", "health"]
    assert not re.search(r"\b(9090|127\.0\.0\.1|localhost)\b", check)
    timeout = re.search(r"--timeout=(\d+)s", options)
    # a Python start (1.3-1.7 s measured on a busy 2-core machine), then the probe's 2 s
    assert timeout is not None and int(timeout.group(1)) >= 5


def copied_into(final: Stage, target: str) -> list[Path]:
    """The repository files the final stage copies into the image directory ``target``."""
    files: list[Path] = []
    for line in final.all("COPY"):
        parts = [p for p in line.split() if not p.startswith("--")]
        *sources, destination = parts
        if destination.rstrip("/") != target.rstrip("/"):
            continue
        for source in sources:
            path = ROOT / source
            files += sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    return files


def test_the_image_bakes_in_the_default_policies_where_its_config_looks() -> None:
    """A plain `docker run` must not start with no policies (every limit off)."""
    _args, stages = parse(ROOT / "Dockerfile")
    final = stages[-1]
    config = k8s_config()
    target = str(config.policies.path)
    baked = copied_into(final, target)
    assert ROOT / "policies" / "default.yaml" in baked, final.all("COPY")
    assert {p.name for p in baked} == {p.name for p in (ROOT / "policies").glob("*.yaml")}
    # what is baked in is a complete, protected set (refused otherwise at start)
    from gateway.policies.protection import assess

    directory = baked[0].parent
    loaded = load_policies(directory)
    assert not assess(loaded, allow_unprotected=False).refused
    assert not config.policies.allow_unprotected
