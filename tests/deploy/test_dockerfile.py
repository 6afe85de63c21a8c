"""The Dockerfile, read statically (no container engine is needed): a multi-stage build
whose final stage is slim, unprivileged and without build tools, and whose ports,
health check and user agree with the configuration and the Kubernetes manifests. Also
what the build relies on, checked with the real tools: hadolint finds nothing, the locks
cover every dependency with hashes, and the gateway's wheel leaves the reference backend
out."""

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def stage(stages: list[Stage], name: str) -> Stage:
    (found,) = [s for s in stages if s.name == name]
    return found


def lineage(stages: list[Stage], start: Stage) -> list[Stage]:
    """The stage and those it is based on, nearest first."""
    names = {s.name: s for s in stages if s.name}
    found = [start]
    while found[-1].base in names:
        found.append(names[found[-1].base])
    return found


def image_of(stages: list[Stage], start: Stage) -> str:
    """The image a stage finally builds on, through the stages it is based on."""
    return lineage(stages, start)[-1].base


def k8s_config() -> Config:
    return load_config(ROOT / "deploy" / "k8s" / "base" / "config.yaml", environ={})


def test_multi_stage_build_with_a_slim_runtime() -> None:
    _args, stages = parse(ROOT / "Dockerfile")
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert image_of(stages, final).startswith("python:3.11-slim")
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
    assert labels["org.opencontainers.image.licenses"] == project["license"]


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
    env = " ".join(e for s in lineage(stages, final) for e in s.all("ENV"))
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


# -- the base image, the targets ------------------------------------------------------

DIGEST = re.compile(r"^python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$")


def test_the_base_is_pinned_by_digest_and_every_stage_can_be_rebased() -> None:
    """One ARG names the base, by digest; `--build-arg PYTHON_IMAGE=...` overrides it for
    every stage at once (a mirror, a locally made base)."""
    args, stages = parse(ROOT / "Dockerfile")
    assert DIGEST.match(args["PYTHON_IMAGE"]), args["PYTHON_IMAGE"]
    names = {s.name for s in stages if s.name}
    for each in stages:
        assert each.base in names or each.base == args["PYTHON_IMAGE"], each
    raw = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", raw, re.M) == [
        "${PYTHON_IMAGE}" if s.base == args["PYTHON_IMAGE"] else s.base for s in stages
    ]


def test_the_gateway_is_the_default_target_and_the_backend_a_separate_one() -> None:
    _args, stages = parse(ROOT / "Dockerfile")
    assert stages[-1].name == "gateway"  # `docker build .` without --target
    backend = stage(stages, "chat-backend")
    assert json.loads(backend.all("ENTRYPOINT")[-1]) == ["chat-backend"]
    assert "chat-backend = chat_backend.__main__:main" in (ROOT / "setup.py").read_text()
    exposed = {int(p) for line in backend.all("EXPOSE") for p in line.split()}
    assert exposed == {8081}
    assert json.loads(backend.all("CMD")[-1]) == ["--host", "0.0.0.0", "--port", "8081"]
    uid, _, _gid = backend.all("USER")[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0
    titles = {
        s.name: re.search(r'image\.title="([^"]+)"', " ".join(s.all("LABEL")))
        for s in (stages[-1], backend)
    }
    assert {k: m.group(1) for k, m in titles.items() if m} == {
        "gateway": "agent-gateway",
        "chat-backend": "agent-gateway-chat-backend",
    }


def test_each_target_installs_its_own_wheel_and_the_gateway_one_is_built_without_the_backend() -> (
    None
):
    _args, stages = parse(ROOT / "Dockerfile")
    builder = stages[0]
    steps = builder.instructions
    gateway_wheel = next(
        i for i, (kw, a) in enumerate(steps) if kw == "RUN" and "--wheel-dir=/wheels/gateway" in a
    )
    backend_copy = next(
        i for i, (kw, a) in enumerate(steps) if kw == "COPY" and a.startswith("chat_backend ")
    )
    assert gateway_wheel < backend_copy  # the source tree has no chat_backend yet
    for kw, a in steps[:gateway_wheel]:
        assert not (kw == "COPY" and "chat_backend" in a), a
    gateway_install = " ".join(stages[-1].all("RUN"))
    assert "/wheels/gateway/agent_gateway-" in gateway_install
    assert "/wheels/chat-backend" not in gateway_install
    assert "/wheels/chat-backend/agent_gateway-" in " ".join(
        stage(stages, "chat-backend").all("RUN")
    )


def test_every_install_is_hash_checked_against_the_lock() -> None:
    """The dependencies only ever come from the lock, hash-checked; the project's own
    wheels, built in the builder, are installed without dependencies."""
    _args, stages = parse(ROOT / "Dockerfile")
    builder = stages[0]
    fetch = next(r for r in builder.all("RUN") if "runtime.lock" in r)
    assert "--mount=type=bind,source=requirements,target=/src/requirements" in fetch
    for command in re.split(r";|&&", fetch):
        if re.search(r"\bpip (wheel|install)\b", command):
            assert "--require-hashes" in command and "--only-binary=:all:" in command, command
    assert "-r requirements/build.lock" in fetch
    # the project's wheels with the locked build backend, not one fetched in isolation
    for command in builder.all("RUN"):
        if "/wheels/gateway" in command or "/wheels/chat-backend" in command:
            assert "--no-deps" in command and "--no-build-isolation" in command, command
    for target in (stages[-1], stage(stages, "chat-backend")):
        (install,) = [r for r in target.all("RUN") if "pip install" in r]
        pips = [c.strip() for c in install.split("&&") if "pip install" in c]
        assert len(pips) == 2, pips
        assert "--require-hashes" in pips[0] and "-r /requirements/runtime.lock" in pips[0]
        assert "--no-deps" in pips[1] and "--no-index" in pips[1]


def test_make_builds_each_target_and_regenerates_the_locks() -> None:
    make = shutil.which("make")
    assert make, "make is needed (Debian: apt-get install make)"

    def dry_run(*targets: str) -> str:
        return subprocess.run(
            [make, "-n", *targets, "PYTHON_IMAGE=example/python@sha256:" + "0" * 64],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    image = dry_run("image")
    assert "--target gateway" in image and f"-t agent-gateway:{version}" in image
    assert "--build-arg PYTHON_IMAGE=example/python@sha256:" in image
    assert "DOCKER_BUILDKIT=1" in image
    backend = dry_run("image-backend")
    assert "--target chat-backend" in backend
    assert f"-t agent-gateway-chat-backend:{version}" in backend
    lock = dry_run("lock")
    names = ("runtime", "dev", "bench", "build")
    for name in names:
        assert f"-o requirements/{name}.lock" in lock
    assert lock.count("--generate-hashes") == len(names)
    # resolved against PyPI alone: no machine's find-links, extra index or constraints
    assert "PIP_CONFIG_FILE=/dev/null" in lock and "-u PIP_FIND_LINKS" in lock


# -- the locks ------------------------------------------------------------------------

LOCKS = ROOT / "requirements"
#: a Python 3.11 the image or a developer may have: Debian bookworm's own is 3.11.2
PYTHONS_311 = ("3.11.0", "3.11.2", "3.11.16")
LINUX = ("x86_64", "aarch64")


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) for each requirement of a pip-compile lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        spec, *options = re.split(r"\s+--", line)
        requirement = Requirement(spec.strip())
        (pin,) = requirement.specifier
        assert pin.operator == "==", line
        hashes = [o.removeprefix("hash=sha256:") for o in options if o.startswith("hash=")]
        name = canonicalize_name(requirement.name)
        assert name not in entries, line
        entries[name] = (pin.version, hashes)
    return entries


def environments(extras: tuple[str, ...]) -> Iterator[dict[str, str]]:
    for version in PYTHONS_311:
        for machine in LINUX:
            for extra in ("", *extras):
                yield {
                    "python_version": "3.11",
                    "python_full_version": version,
                    "implementation_name": "cpython",
                    "platform_python_implementation": "CPython",
                    "sys_platform": "linux",
                    "platform_system": "Linux",
                    "os_name": "posix",
                    "platform_machine": machine,
                    "extra": extra,
                }


def applies(marker: Marker | None, extras: tuple[str, ...]) -> bool:
    return marker is None or any(marker.evaluate(env) for env in environments(extras))


def needed(requirements: list[Requirement], seen: set[str]) -> Iterator[Requirement]:
    """Every distribution the requirements need on some Linux CPython 3.11, read from the
    installed distributions' metadata (installed from the same locks by `make`)."""
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        yield requirement
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:  # not on this Python: its own needs unknown
            continue
        extras = tuple(sorted(requirement.extras))
        below = [Requirement(r) for r in requires]
        yield from needed([r for r in below if applies(r.marker, extras)], seen)


def project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.parametrize(
    ("lock", "groups"),
    [("runtime.lock", ()), ("dev.lock", ("dev",)), ("bench.lock", ("dev", "bench"))],
)
def test_the_lock_pins_and_hashes_every_dependency(lock: str, groups: tuple[str, ...]) -> None:
    """Every dependency pyproject declares is in the lock at the version pyproject pins,
    with the dependencies they need on any Linux CPython 3.11.x (not only the 3.11 the lock
    was compiled with), each with at least one sha256: `pip install --require-hashes`
    refuses anything else."""
    entries = read_lock(LOCKS / lock)
    declared = project()["project"]
    assert isinstance(declared, dict)
    top = [Requirement(r) for r in declared["dependencies"]]
    for group in groups:
        top += [Requirement(r) for r in declared["optional-dependencies"][group]]
    for requirement in top:
        name = canonicalize_name(requirement.name)
        assert name in entries, f"{requirement.name} is missing from {lock}: make lock"
        assert requirement.specifier.contains(entries[name][0]), (requirement, entries[name])
    missing = sorted({canonicalize_name(r.name) for r in needed(top, set())} - set(entries))
    assert not missing, f"{lock} lacks {missing}: add to requirements/older-3.11.in, make lock"
    for locked, (_version, hashes) in entries.items():
        assert hashes, f"{locked} has no --hash in {lock}"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), (locked, hashes)
    # each lock is part of the next (runtime, development, bench), at the same versions
    # and hashes
    below = {"dev.lock": "runtime.lock", "bench.lock": "dev.lock"}.get(lock)
    if below is not None:
        inner = read_lock(LOCKS / below)
        assert {n: entries[n] for n in inner} == inner


def test_the_build_lock_holds_the_build_backend() -> None:
    entries = read_lock(LOCKS / "build.lock")
    build = project()["build-system"]
    assert isinstance(build, dict)
    for spec in build["requires"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in entries and requirement.specifier.contains(entries[name][0]), spec
    assert all(hashes for _v, hashes in entries.values())


def test_the_locks_name_no_index_or_local_path() -> None:
    """Options from the machine that compiled them would send every install there."""
    for lock in LOCKS.glob("*.lock"):
        for line in lock.read_text().splitlines():
            assert not re.match(r"\s*-(-index-url|-extra-index-url|-find-links|f|i)\b", line)
            assert not re.search(r"file://|/opt/", line), (lock.name, line)


# -- the real tools -------------------------------------------------------------------


def tool(name: str) -> str:
    """A console script of the dev extra: next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is missing: pip install -e '.[dev]' (make test installs it)"
    return found


def test_hadolint_finds_nothing() -> None:
    """Any finding, down to `info`, fails; an ignore in .hadolint.yaml needs its reason."""
    config = ROOT / ".hadolint.yaml"
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--config", str(config), "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    settings = yaml.safe_load(config.read_text()) or {}
    assert settings.get("failure-threshold") == "info"
    lines = config.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*-\s*(DL|SC)\d+", line):  # an ignored rule
            assert "#" in line or lines[i - 1].strip().startswith("#"), line


def test_the_gateway_wheel_carries_neither_the_backend_nor_its_script(tmp_path: Path) -> None:
    """Built as the builder stage builds it: from a tree without chat_backend."""
    build = [Requirement(r) for r in project()["build-system"]["requires"]]  # type: ignore[index]
    for requirement in build:  # as requirements/build.lock installs them for `make test`
        installed = metadata.version(requirement.name)
        assert requirement.specifier.contains(installed), (
            f"{requirement.name} {installed} is installed; the build needs {requirement}: "
            "pip install --require-hashes -r requirements/build.lock"
        )
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "gateway", tmp_path / "gateway", ignore=shutil.ignore_patterns("__pycache__")
    )
    wheels = {}
    for variant in ("gateway", "chat-backend"):
        if variant == "chat-backend":
            shutil.copytree(
                ROOT / "chat_backend",
                tmp_path / "chat_backend",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            shutil.rmtree(tmp_path / "build", ignore_errors=True)
        out = tmp_path / "wheels" / variant
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--wheel-dir",
                str(out),
                str(tmp_path),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        (wheel,) = out.glob("agent_gateway-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
            wheels[variant] = (names, archive.read(entry_points).decode())
    names, scripts = wheels["gateway"]
    assert not [n for n in names if n.startswith("chat_backend")]
    assert "gateway/cli.py" in names and "gateway = gateway.cli:main" in scripts
    assert "chat-backend" not in scripts
    names, scripts = wheels["chat-backend"]
    assert "chat_backend/__main__.py" in names
    assert "chat-backend = chat_backend.__main__:main" in scripts
