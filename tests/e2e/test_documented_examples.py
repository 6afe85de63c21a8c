"""Every `gateway` command line of docs/configuration.md and the README, run as a real
process: `gateway serve` starts and answers /readyz with 200, any other command exits 0.

The examples are read from the documents here, so a changed document is tested as it
reads. What a test machine cannot take literally is adapted, and only that: the
configuration is the shipped config.yaml (so `store: memory` stays a shorthand) moved
into the test's room, listening ports named by an example become free ports, a Redis
URL becomes the test's own Redis (also given when an example switches to Redis without
naming one), and the token signing keys a Redis store needs come from the environment.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.harness import SIGNING_ENV
from tests.support.processes import BIN, free_port, run_cli, running
from tests.support.stack import ROOT, write_config

pytestmark = pytest.mark.slow  # gateway processes

DOCUMENTS = ("docs/configuration.md", "README.md")
SHELL_BLOCK = re.compile(r"^```(?:sh|shell|bash|console)\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: an inline override: `GATEWAY__STORE__TYPE=redis` (one or more assignments)
INLINE_OVERRIDE = re.compile(r"`((?:GATEWAY__\w+=[^`\s]+ ?)+)`")
ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")
SHELL_OPERATORS = frozenset({"|", "||", "&", "&&", ";", "(", ")", "<", ">", ">>"})


@dataclass(frozen=True)
class Example:
    source: str
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        assignments = [f"{k}={v}" for k, v in self.env.items()]
        return " ".join([*assignments, "gateway", *self.args])


def _logical_lines(block: str) -> Iterator[tuple[int, str]]:
    """(line offset, text) with backslash continuations joined."""
    pending, start = "", 0
    for offset, line in enumerate(block.splitlines()):
        if not pending:
            start = offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def _command(line: str) -> tuple[tuple[str, ...], dict[str, str]] | None:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    starts = [i for i, t in enumerate(tokens) if t == "gateway" or t.endswith("/gateway")]
    if not starts:
        return None
    index = starts[0]
    env: dict[str, str] = {}
    for token in reversed(tokens[:index]):
        match = ASSIGNMENT.match(token)
        if match is None:
            break
        env[match.group(1)] = match.group(2)
    args: list[str] = []
    for token in tokens[index + 1 :]:
        if token in SHELL_OPERATORS:
            break
        args.append(token)
    return tuple(args), dict(reversed(env.items()))


def examples(document: str) -> list[Example]:
    text = (ROOT / document).read_text()
    found: list[Example] = []
    for block in SHELL_BLOCK.finditer(text):
        first = text.count("\n", 0, block.start(1)) + 1
        for offset, line in _logical_lines(block.group(1)):
            command = _command(line)
            if command is not None:
                found.append(Example(f"{document}:{first + offset}", *command))
    for span in INLINE_OVERRIDE.finditer(text):
        line = text.count("\n", 0, span.start()) + 1
        env = dict(item.split("=", 1) for item in span.group(1).split())
        found.append(Example(f"{document}:{line}", ("serve",), env))
    return found


EXAMPLES = [example for document in DOCUMENTS for example in examples(document)]


def test_the_examples_are_found() -> None:
    """The extraction itself: the documented override is among them, so a change of
    the documents' format cannot make this file silently test nothing."""
    texts = [e.text for e in EXAMPLES]
    assert any(
        t.startswith("GATEWAY__STORE__TYPE=redis GATEWAY__STORE__URL=") and t.endswith("serve")
        for t in texts
    ), texts
    assert "GATEWAY__STORE__TYPE=redis gateway serve" in texts  # README, inline
    assert any(t.startswith("gateway keys create --model demo") for t in texts)  # README


@dataclass
class Adapted:
    args: list[str]
    env: dict[str, str]
    admin_port: int
    public_port: int


def adapt(example: Example, config: Path, request: pytest.FixtureRequest) -> Adapted:
    """The example as this machine can run it (see the module's docstring)."""
    env = {**SIGNING_ENV}
    ports = {"GATEWAY__SERVER__PORT": free_port(), "GATEWAY__ADMIN__PORT": free_port()}
    needs_redis = False
    for name, value in example.env.items():
        if name.endswith("__PORT"):
            ports[name] = free_port()
            value = str(ports[name])
        elif re.match(r"^rediss?://", value):
            needs_redis = True
            ours = urlsplit(request.getfixturevalue("redis_url"))
            value = urlsplit(value)._replace(scheme=ours.scheme, netloc=ours.netloc).geturl()
        elif value == "redis":
            needs_redis = True
        env[name] = value
    if needs_redis and not any(name.endswith("STORE__URL") for name in env):
        env["GATEWAY__STORE__URL"] = request.getfixturevalue("redis_url")
    env.setdefault("GATEWAY__SERVER__PORT", str(ports["GATEWAY__SERVER__PORT"]))
    env.setdefault("GATEWAY__ADMIN__PORT", str(ports["GATEWAY__ADMIN__PORT"]))
    args = list(example.args)
    if "--config" in args:
        args[args.index("--config") + 1] = str(config)
    else:
        env["GATEWAY_CONFIG"] = str(config)
    return Adapted(args, env, int(env["GATEWAY__ADMIN__PORT"]), int(env["GATEWAY__SERVER__PORT"]))


def wait_ready(admin: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        resp = httpx.get(admin + "/readyz", timeout=5)
        if resp.status_code == 200:
            return
        last = resp.text
        time.sleep(0.2)
    raise AssertionError(f"/readyz never answered 200: {last}")


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{e.source} {e.text}" for e in EXAMPLES])
def test_each_documented_example_runs(
    example: Example, tmp_path: Path, backend_process: str, request: pytest.FixtureRequest
) -> None:
    config = write_config(
        tmp_path, admin={"enabled": True, "host": "127.0.0.1"}, upstream={"url": backend_process}
    )
    run = adapt(example, config, request)
    if run.args[:1] != ["serve"]:
        result = run_cli(*run.args, env=run.env)
        assert result.returncode == 0, f"{example.text}\n{result.stdout}\n{result.stderr}"
        return
    admin = f"http://127.0.0.1:{run.admin_port}"
    argv = [str(BIN / "gateway"), *run.args]
    with running(argv, admin + "/healthz", env=run.env) as proc:
        wait_ready(admin)
        # the public listener is where the (overridden) configuration says
        assert httpx.get(f"http://127.0.0.1:{run.public_port}/", timeout=5).status_code == 404
    log = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
    assert '"level":"error"' not in log, log[-2000:]
