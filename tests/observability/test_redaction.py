"""The redaction processor, as a pure function over event dicts."""

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.core.agent_keys import generate
from gateway.observability import logging as gateway_logging
from gateway.observability.redaction import REDACTED, Redactor, register_secret

KEY = generate().key
JWT = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.eyJqdGkiOiJhYmMifQ.c2lnbmF0dXJlLXZhbHVl"
SIGNING_SECRET = "s3cr3t-signing-material-0123456789abcdef"


def redact(event: dict[str, Any], secrets: tuple[str, ...] = (SIGNING_SECRET,)) -> Any:
    return Redactor(secrets)(None, "info", event)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"presented {KEY} twice", KEY),
        (f"GET /v1/chat/conversation/public/messages/{JWT} HTTP/1.1", JWT),
        ("Authorization: Bearer opaque-credential-123", "opaque-credential-123"),
        ("Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("connect redis://default:hunter2pass@redis:6379/0", "hunter2pass"),
        (f"key material {SIGNING_SECRET}!", SIGNING_SECRET),
    ],
)
def test_secrets_in_text_are_removed(text: str, secret: str) -> None:
    out = redact({"event": "x", "detail": text})
    assert secret not in json.dumps(out)
    assert REDACTED in out["detail"]


def test_credential_fields_are_removed_whole_but_ids_and_counts_stay() -> None:
    out = redact(
        {
            "event": "x",
            "authorization": "anything at all",
            "client_token": "short",
            "api_key": "k",
            "password": "p",
            "Set-Cookie": "a=b",
            "key_id": "AbCdEf012345",
            "token_hash": "89ce076267db",
            "keys": 3,
            "key": None,
        }
    )
    assert out["authorization"] == out["client_token"] == out["api_key"] == REDACTED
    assert out["password"] == out["Set-Cookie"] == REDACTED
    assert out["key_id"] == "AbCdEf012345" and out["token_hash"] == "89ce076267db"
    assert out["keys"] == 3 and out["key"] is None


def test_nested_structures_and_bytes_are_walked() -> None:
    out = redact(
        {
            "event": "x",
            "headers": {"X-Trace": f"Bearer {JWT}", "list": [KEY, {"deep": KEY.encode()}]},
            "exception": [{"exc_value": f"bad token {JWT}", "frames": []}],
            "obj": ValueError(KEY),
        }
    )
    dumped = json.dumps(out)
    assert KEY not in dumped and JWT not in dumped
    assert "Bearer " + REDACTED in dumped


def test_short_secrets_are_not_registered() -> None:
    redactor = Redactor(("abc",))
    assert redactor.text("abc abcdef") == "abc abcdef"


def test_configured_logging_redacts_gateway_and_library_records(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real processor chains: structlog events to a byte stream, stdlib records (for
    example aiohttp's) to stderr; both pass through redaction."""
    out = io.BytesIO()
    register_secret(SIGNING_SECRET)
    try:
        gateway_logging.configure("debug", "json", out=out)
        structlog.get_logger("gateway").warning(
            "oops", detail=f"Bearer {KEY}", client_token=JWT, signing=SIGNING_SECRET
        )
        try:
            raise RuntimeError(f"failed with {JWT}")
        except RuntimeError:
            logging.getLogger("aiohttp.server").exception("Error handling request %s", KEY)
            structlog.get_logger("gateway").exception("unhandled_error")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    written = out.getvalue().decode() + capsys.readouterr().err
    lines = [json.loads(line) for line in written.splitlines() if line.strip()]
    assert {line["event"] for line in lines} >= {"oops", "unhandled_error"}
    assert any(line.get("logger") == "aiohttp.server" for line in lines)
    for secret in (KEY, JWT, SIGNING_SECRET):
        assert secret not in written


async def test_lines_logged_in_one_loop_turn_are_written_together() -> None:
    out = io.BytesIO()
    try:
        gateway_logging.configure("info", "json", out=out)
        log = structlog.get_logger("gateway")
        log.info("first", token=JWT)
        log.info("second")
        assert out.getvalue() == b""  # still this turn of the loop
        await asyncio.sleep(0)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [line["event"] for line in lines] == ["first", "second"]
        assert JWT not in out.getvalue().decode()
        log.info("third")
        gateway_logging.flush()  # what shutdown does
        assert json.loads(out.getvalue().splitlines()[-1])["event"] == "third"
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()


def test_decision_log_lines_hold_no_token_key_address_or_user_agent(tmp_path: Path) -> None:
    """The decision log (gateway.observability.decision_log) writes identifiers only as
    keyed hashes: not the token, its jti, the conversation, the key, the address or UA."""
    from gateway.core.gcra import LimitState
    from gateway.core.policy import Limit, Policy, PolicySet, RequestFacts
    from gateway.observability.decision_log import Decision, DecisionLog

    policies = PolicySet((Policy("p", frozenset({"send"}), ("client_ip",), Limit(1, 60, 1)),))
    ip, ua, jti, conversation = "198.51.100.23", f"agent {KEY}", "jti-0f3a9", "conv-9c1e"
    decision = Decision()
    decision.facts = RequestFacts("send", "POST", ip, "KeyId0001", "demo", jti, conversation)
    decision.policies = policies.select("send", "POST", "demo", "KeyId0001").policies
    decision.states = (LimitState(True, 0, 1, 0, 1),)
    decision.reached = True
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(str(path), SIGNING_SECRET.encode(), lambda: policies, lambda: None)
    log.start()
    log.submit(decision, "/v1/chat/conversation/public/message", "POST", 200, None, ip, ua, None)
    log.stop()
    text = path.read_text()
    assert json.loads(text)["outcome"] == "admitted"
    for secret in (ip, ua, KEY, JWT, jti, conversation, SIGNING_SECRET):
        assert secret not in text
