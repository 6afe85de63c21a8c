"""Hot reload of policies: valid changes apply without dropping requests; invalid ones don't."""

import asyncio
from pathlib import Path
from typing import Any

from tests.support.harness import Gateway

LIMIT = """
policies:
  - name: send-per-token
    match: {{routes: [send]}}
    partition: [token]
    limit: {{rate: 1, per: 1m, burst: {burst}}}
"""


def policy_file(gw: Gateway) -> Path:
    return gw.config.policies.path / "test.yaml"


async def wait_for_burst(gw: Gateway, burst: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        policies = gw.services.admissions.policies.current.policies
        if policies and policies[0].limit.burst == burst:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"burst {burst} not in force after {timeout}s")


async def test_a_valid_change_applies_without_dropping_a_stream(
    gateway_factory: Any, backend: Any
) -> None:
    from chat_backend.app import MODEL

    backend.app[MODEL].word_delay = 0.15  # type: ignore[attr-defined]
    gw: Gateway = await gateway_factory(policies=LIMIT.format(burst=1))
    streaming, later = await gw.new_token(), await gw.new_token()
    async with gw.send(streaming, "one two three four five six seven", stream=True) as resp:
        assert resp.status == 200
        first = await resp.content.readline()
        assert first.startswith(b"data:")
        policy_file(gw).write_text(LIMIT.format(burst=3))
        await wait_for_burst(gw, 3)
        rest = await resp.read()  # the stream that started under the old set completes
    assert b"event: done" in rest
    for _ in range(3):
        async with gw.send(later) as reply:
            assert reply.status == 200
    async with gw.send(later) as reply:
        assert reply.status == 429


async def test_an_invalid_change_keeps_the_last_good_policies(
    gateway_factory: Any, capsys: Any
) -> None:
    gw: Gateway = await gateway_factory(policies=LIMIT.format(burst=2))
    before = gw.services.admissions.policies.current
    policy_file(gw).write_text(LIMIT.format(burst=2).replace("burst: 2", "burst: lots"))
    deadline = asyncio.get_running_loop().time() + 5
    while "policies_reload_failed" not in (out := capsys.readouterr().out):
        assert asyncio.get_running_loop().time() < deadline, "no reload attempt seen"
        await asyncio.sleep(0.05)
    assert "test.yaml:6: policies[0].limit.burst: Input should be a valid integer" in out
    assert gw.services.admissions.policies.current is before
    token = await gw.new_token()
    for status in (200, 200, 429):
        async with gw.send(token) as reply:
            assert reply.status == status
    # fixing the file takes effect again
    policy_file(gw).write_text(LIMIT.format(burst=4))
    await wait_for_burst(gw, 4)


async def test_adding_a_file_to_the_directory_is_picked_up(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory()
    assert gw.services.admissions.policies.current.policies == ()
    (gw.config.policies.path / "more.yaml").write_text(LIMIT.format(burst=7))
    await wait_for_burst(gw, 7)


async def test_changing_the_binding_rule_does_not_revoke_live_tokens(
    gateway_factory: Any, store_kind: str
) -> None:
    gw: Gateway = await gateway_factory(
        store=store_kind, policies="binding: {components: [ip_prefix, user_agent]}\n"
    )
    token = await gw.new_token()
    async with gw.send(token) as resp:
        assert resp.status == 200
    policy_file(gw).write_text("binding: {components: [client_ip]}\n")
    deadline = asyncio.get_running_loop().time() + 5
    while gw.services.admissions.policies.current.binding.rule.components != ("client_ip",):
        assert asyncio.get_running_loop().time() < deadline, "the new rule never applied"
        await asyncio.sleep(0.05)
    for _ in range(2):  # the same client: bound again under the new rule, then as usual
        async with gw.send(token) as resp:
            assert resp.status == 200
    async with gw.send(token, **{"X-Forwarded-For": "198.51.100.1"}) as resp:
        assert resp.status == 200  # untrusted header: still the same client
    async with gw.messages(token) as resp:
        assert resp.status == 200
