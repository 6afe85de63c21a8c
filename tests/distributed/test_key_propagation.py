"""A key that `gateway keys create` reports as created is served by every replica at once,
and a revocation still reaches every replica within seconds: `gateway serve` processes
sharing a Redis key store (standalone and Cluster), the command run as a process."""

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.support.harness import SIGNING_ENV
from tests.support.processes import run_cli
from tests.support.replicas import SEND, TOKEN, replicas

pytestmark = pytest.mark.slow  # replicas as processes

#: the default box (20 failures a minute counting invalid_key), at a threshold a
#: refusal of a genuine key would reach
POLICIES = """
penalty_box: {threshold: 2, window: 1m, cooldown: 5m, count: [invalid_key, invalid_token]}
"""


@pytest.fixture(params=["redis", "cluster"])
def shared_store(request: pytest.FixtureRequest) -> str:
    name = "redis_url" if request.param == "redis" else "cluster_url"
    return str(request.getfixturevalue(name))


def test_a_created_key_is_served_by_every_replica_at_once(
    tmp_path: Path, shared_store: str, backend_process: str
) -> None:
    # replicas that poll for changes as rarely as allowed: what they know at once came
    # through the change channel or a look-up
    keys = {"type": "redis", "redis_url": shared_store, "sync_seconds": 5}
    with (
        replicas(
            tmp_path,
            2,
            store_url=shared_store,
            upstream=backend_process,
            policies=POLICIES,
            keys=keys,
        ) as group,
        httpx.Client(timeout=10) as client,
    ):
        args = ("keys", "create", "--model", "demo", "--json", "--config", str(group.config))
        for _ in range(3):
            created = run_cli(*args, env=SIGNING_ENV)
            assert created.returncode == 0, created.stderr
            key = json.loads(created.stdout)["key"]
            tokens = []
            for url in reversed(group.urls):  # no wait of any kind
                resp = client.get(
                    url + TOKEN.format(model="demo"), headers={"Authorization": f"Bearer {key}"}
                )
                assert resp.status_code == 200, (url, resp.text)
                tokens.append(resp.json()["token"])
            resp = client.post(
                group.urls[0] + SEND, json={"client_token": tokens[0], "message": "hi"}
            )
            assert resp.status_code == 200, resp.text

        key_id = json.loads(created.stdout)["key_id"]
        revoked = run_cli("keys", "revoke", key_id, "--config", str(group.config), env=SIGNING_ENV)
        assert revoked.returncode == 0, revoked.stderr
        started = time.monotonic()
        for url in group.urls:
            while True:
                resp = client.post(url + SEND, json={"client_token": tokens[0], "message": "hi"})
                if resp.status_code == 403:
                    assert resp.json()["code"] == "token_revoked"
                    break
                assert resp.status_code == 200, resp.text
                assert time.monotonic() - started < 5, "the revocation did not arrive in time"
                time.sleep(0.05)
        logs = group.log_text()
    assert "invalid_key" not in logs
    assert "penalty_box" not in logs
