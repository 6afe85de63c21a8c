"""Both key stores, for tests that hold each to the same behaviour."""

from pathlib import Path

import pytest

from gateway.config import Config
from tests.support.harness import make_config


@pytest.fixture(params=["file", "redis"])
def keys_config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    if request.param == "file":
        return make_config(tmp_path, "http://127.0.0.1:1", keys={"sync_seconds": 0.2})
    url = request.getfixturevalue("redis_url")
    return make_config(
        tmp_path,
        "http://127.0.0.1:1",
        keys={"type": "redis", "redis_url": url, "sync_seconds": 0.2},
    )
