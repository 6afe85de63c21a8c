"""What a gateway says at start when it runs with less than it could: structlog events."""

import asyncio
from typing import Any

from structlog.testing import capture_logs

from tests.support.harness import PROTECTED, Gateway


def warnings(events: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == event and e["log_level"] == "warning"]


async def test_an_empty_key_file_is_a_warning_at_start(gateway_factory: Any) -> None:
    with capture_logs() as events:
        gw: Gateway = await gateway_factory(policies=PROTECTED, allow_unprotected=False)
    (warned,) = warnings(events, "keystore_empty")
    assert warned["detail"] == (
        f"the key store {gw.config.keys.path} holds no agent key: every token request is refused"
    )
    assert warned["fix"].startswith("gateway keys create --model demo")


async def test_an_empty_redis_key_store_is_a_warning_at_start(
    gateway_factory: Any, redis_url: str
) -> None:
    with capture_logs() as events:
        await gateway_factory(
            policies=PROTECTED,
            allow_unprotected=False,
            keys={"type": "redis", "redis_url": redis_url, "prefix": "shopkeys"},
        )
    (warned,) = warnings(events, "keystore_empty")
    assert f"the key store {redis_url} (prefix shopkeys) holds no agent key" in warned["detail"]
    assert "gateway keys create" in warned["fix"]


async def test_a_key_store_with_keys_says_nothing(gateway_factory: Any) -> None:
    first: Gateway = await gateway_factory(policies=PROTECTED, allow_unprotected=False)
    await first.create_key()  # the replicas of one test share the key file
    with capture_logs() as events:
        await gateway_factory(policies=PROTECTED, allow_unprotected=False)
    assert warnings(events, "keystore_empty") == []


async def test_fail_open_is_a_warning_at_start_and_at_reload(gateway_factory: Any) -> None:
    text = "on_store_error: fail_open\n" + PROTECTED
    with capture_logs() as events:
        gw: Gateway = await gateway_factory(policies=text, allow_unprotected=False)
        path = gw.config.policies.path / "test.yaml"
        (at_start,) = warnings(events, "policies_fail_open")
        assert at_start["reason"] == "start"
        assert at_start["detail"].startswith(f"{path}:1: on_store_error: fail_open: ")
        assert "each replica limits on its own" in at_start["detail"]
        assert "fail_closed" in at_start["fix"]
        path.write_text(text.replace("burst: 3", "burst: 4"))
        deadline = asyncio.get_running_loop().time() + 10
        while len(warnings(events, "policies_fail_open")) < 2:
            assert asyncio.get_running_loop().time() < deadline, "no warning at reload"
            await asyncio.sleep(0.05)
    assert warnings(events, "policies_fail_open")[1]["reason"] == "file_change"


async def test_running_unprotected_on_purpose_is_a_warning_at_start(gateway_factory: Any) -> None:
    with capture_logs() as events:
        await gateway_factory()  # the harness's policies: binding only, allowed
    (warned,) = warnings(events, "policies_unprotected")
    assert warned["reason"] == "start"
    assert "running unprotected because policies.allow_unprotected is true" in warned["detail"]
