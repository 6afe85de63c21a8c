"""Real keys and tokens through every path of a real `gateway serve` process: none of
them, nor the signing key, may appear in its output or its metrics."""

import json
import secrets
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from gateway.core import agent_keys
from tests.support.processes import run_cli
from tests.support.stack import SEND, TOKEN, stack

pytestmark = pytest.mark.slow  # gateway processes

SIGNING_SECRET = "redaction-test-" + secrets.token_urlsafe(32)
UPSTREAM_PASSWORD = "upstream-" + secrets.token_hex(8)
MESSAGES = "/v1/chat/conversation/public/messages/{token}"


def wrong_secret_key(key_id: str) -> str:
    """A well-formed key (valid checksum) for a known key id, with another secret."""
    body = f"pak_{key_id}_" + agent_keys._base62(secrets.randbits(256), agent_keys.SECRET_LEN)
    return body + agent_keys._checksum(body)


def eventually(check: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("not true in time")


def test_no_key_token_or_secret_reaches_the_logs_or_metrics(tmp_path: Path) -> None:
    env = {"GATEWAY_SIGNING_KEYS": f"k9:{SIGNING_SECRET}"}
    logging = {"logging": {"level": "debug"}}
    userinfo = f"gateway:{UPSTREAM_PASSWORD}@"
    with stack(tmp_path, env=env, sections=logging, upstream_userinfo=userinfo) as gw:
        key, token = gw.token()
        revoked_key, revoked_id = gw.create_key()
        revoked_token = gw.token(revoked_key)[1]
        second_token = gw.token(key)[1]
        key_id = agent_keys.parse(key).key_id  # type: ignore[union-attr]
        bad_keys = [
            "pak_" + secrets.token_hex(20),  # malformed
            agent_keys.generate().key,  # unknown key id
            wrong_secret_key(key_id),  # known id, wrong secret
        ]
        basic = "Basic " + secrets.token_urlsafe(24)
        presented = [token, second_token, revoked_token, key, revoked_key, *bad_keys, basic]
        ua = {"User-Agent": "browser/1"}

        with httpx.Client(base_url=gw.public, timeout=10, headers=ua) as client:

            def get_token(credential: str, **headers: str) -> int:
                auth = {"Authorization": f"Bearer {credential}", **headers}
                return client.get(TOKEN, headers=auth).status_code

            for bad in bad_keys:
                assert get_token(bad) == 404
            assert client.get(TOKEN, headers={"Authorization": basic}).status_code == 401
            assert client.get(TOKEN).status_code == 401
            # the token route with credentials in the model slot and the query
            odd_model = TOKEN.replace("demo", quote(token)) + f"?k={revoked_key}"
            assert get_token(key) == 200 and client.get(odd_model).status_code == 401
            assert (
                client.get(odd_model, headers={"Authorization": f"Bearer {key}"}).status_code == 404
            )

            # plain, streamed and history, with the token in the URL and the body
            sent = client.post(SEND, json={"client_token": token, "message": f"hi {key}"})
            assert sent.status_code == 200
            with client.stream(
                "POST", SEND, json={"client_token": token, "message": "more", "stream": True}
            ) as streamed:
                assert "event: done" in "".join(streamed.iter_text())
            assert client.get(MESSAGES.format(token=token)).status_code == 200

            # malformed requests that carry the token
            raw = '{"client_token": "' + token + '", "message": '
            headers = {"Content-Type": "application/json"}
            assert client.post(SEND, content=raw, headers=headers).status_code == 400
            text = {"Content-Type": "text/plain"}
            assert client.post(SEND, content=raw, headers=text).status_code == 415
            assert client.get(f"/unknown/{token}?key={key}").status_code == 404
            assert client.get(MESSAGES.format(token=token[:-3] + "abc")).status_code == 403

            # reuse from another client revokes; the owner is then refused too
            other = {"User-Agent": "scraper/2"}
            assert client.get(MESSAGES.format(token=token), headers=other).status_code == 403
            assert client.get(MESSAGES.format(token=token)).status_code == 403

            # a key revoked from the command line reaches the gateway
            result = run_cli("keys", "revoke", revoked_id, "--config", str(gw.config))
            assert result.returncode == 0
            eventually(lambda: get_token(revoked_key) == 404)
            # and so do the tokens it issued
            refused = client.post(SEND, json={"client_token": revoked_token, "message": "x"})
            assert refused.status_code == 403

            # the upstream goes away: 502 with the token in flight
            gw.backend.terminate()
            gw.backend.wait(10)
            failed = client.post(SEND, json={"client_token": second_token, "message": "x"})
            assert failed.status_code == 502

        metrics = httpx.get(gw.admin + "/metrics", timeout=5).text

    output = gw.log()
    assert "listening" in output  # the event that names the upstream URL
    for secret in [*presented, SIGNING_SECRET, basic.split()[1], UPSTREAM_PASSWORD]:
        assert secret not in output, "a secret reached the logs"
        assert secret not in metrics, "a secret reached the metrics"
    assert "127.0.0.1" not in metrics
    # the process-level series of `gateway serve` are there too
    assert "process_resident_memory_bytes" in metrics
    assert "gateway_event_loop_lag_seconds_count" in metrics
    assert "_created" not in metrics

    # every line is one JSON object, and the events operators need are there
    events = [json.loads(line) for line in output.splitlines() if line.strip()]
    access = [e for e in events if e["event"] == "request"]
    assert len(access) >= 15
    assert all(e["request_id"] and e["route"] and "duration_ms" in e for e in access)
    hashed = [e for e in access if e.get("token_hash")]
    assert hashed and all(len(e["token_hash"]) == 12 for e in hashed)
    warnings = [
        (e["event"], e.get("reason") or e.get("code")) for e in events if e["level"] == "warning"
    ]
    for expected in [
        ("invalid_key", "malformed"),
        ("invalid_key", "unknown"),
        ("invalid_key", "wrong_secret"),
        ("invalid_key", "revoked"),
        ("token_reuse_suspected", None),
        ("token_refused", "token_revoked"),
        ("token_refused", "token_invalid"),
    ]:
        assert expected in warnings, expected
