"""`gateway doctor` as a process, against fixtures that each hold one mistake."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.support.identity_provider import IdentityProvider, SigningKey, identity_provider_app
from tests.support.processes import BIN

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "doctor"
#: placeholders in the fixtures, for what each test starts on its own sockets
UPSTREAM, REDIS, IDP = "http://upstream.test", "redis://redis.test:6379/0", "http://idp.test"


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        return dict(json.loads(self.stdout))


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any gateway setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY")}
    return {**env, **(extra or {})}


async def gateway(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Outcome:
    """Run `gateway ...` without blocking the event loop (the test's servers keep
    answering while it runs)."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "gateway"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(env),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Outcome(proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def idp() -> AsyncIterator[IdentityProvider]:
    provider = IdentityProvider(keys=[SigningKey.ec("ec-1")])
    server = TestServer(identity_provider_app(provider), host="127.0.0.1")
    await server.start_server()
    provider.issuer = str(server.make_url("")).rstrip("/")
    yield provider
    await server.close()


@pytest.fixture
def place(
    tmp_path: Path, backend_url: str, idp: IdentityProvider, request: pytest.FixtureRequest
) -> Any:
    """``place(name)``: the fixture directory ``name`` copied into the test's room with
    its placeholders pointed at this test's upstream, Redis and identity provider;
    returns the copied config.yaml."""
    shutil.copytree(FIXTURES, tmp_path / "doctor")

    def place(name: str) -> Path:
        config = tmp_path / "doctor" / name / "config.yaml"
        text = config.read_text().replace(UPSTREAM, backend_url)
        if REDIS in text:
            text = text.replace(REDIS, request.getfixturevalue("redis_url"))
        if IDP in text:
            text = text.replace(IDP, idp.issuer)
        config.write_text(text)
        return config

    return place
