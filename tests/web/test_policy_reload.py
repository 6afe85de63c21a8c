"""Hot reload of policies: valid changes apply without dropping requests; invalid ones don't."""

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.harness import PROTECTED, TOKEN_URL, Gateway

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
        policies = gw.services.policies.current.policies
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
    before = gw.services.policies.current
    policy_file(gw).write_text(LIMIT.format(burst=2).replace("burst: 2", "burst: lots"))
    deadline = asyncio.get_running_loop().time() + 5
    while "policies_reload_failed" not in (out := capsys.readouterr().out):
        assert asyncio.get_running_loop().time() < deadline, "no reload attempt seen"
        await asyncio.sleep(0.05)
    assert "test.yaml:6: policies[0].limit.burst: Input should be a valid integer" in out
    assert gw.services.policies.current is before
    token = await gw.new_token()
    for status in (200, 200, 429):
        async with gw.send(token) as reply:
            assert reply.status == status
    # fixing the file takes effect again
    policy_file(gw).write_text(LIMIT.format(burst=4))
    await wait_for_burst(gw, 4)


async def test_adding_a_file_to_the_directory_is_picked_up(gateway_factory: Any) -> None:
    gw: Gateway = await gateway_factory()
    assert gw.services.policies.current.policies == ()
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
    while gw.services.policies.current.binding.rule.components != ("client_ip",):
        assert asyncio.get_running_loop().time() < deadline, "the new rule never applied"
        await asyncio.sleep(0.05)
    for _ in range(2):  # the same client: bound again under the new rule, then as usual
        async with gw.send(token) as resp:
            assert resp.status == 200
    async with gw.send(token, **{"X-Forwarded-For": "198.51.100.1"}) as resp:
        assert resp.status == 200  # untrusted header: still the same client
    async with gw.messages(token) as resp:
        assert resp.status == 200


def reloads(gw: Gateway, result: str) -> float:
    return gw.sample("gateway_config_reloads_total", kind="policies", result=result)


async def tokens_admitted(gw: Gateway, key: str, attempts: int) -> int:
    admitted = 0
    for _ in range(attempts):
        async with gw.http.get(
            gw.url + TOKEN_URL.format(model="demo"),
            headers=gw.headers({"Authorization": f"Bearer {key}"}),
        ) as resp:
            assert resp.status in (200, 429), await resp.text()
            admitted += resp.status == 200
    return admitted


def unprotect(directory: Path, how: str) -> None:
    """What the review saw turn every limit off: a policy file emptied, left with
    comments only, or renamed away."""
    path = directory / "test.yaml"
    if how == "empty":
        path.write_text("")
    elif how == "comments":
        path.write_text("# policies are being reworked\n# policies: []\n")
    else:
        path.rename(directory / "test.yaml.disabled")


@pytest.mark.parametrize("how", ["empty", "comments", "renamed"])
async def test_a_change_that_leaves_no_defence_keeps_the_last_good_set(
    gateway_factory: Any, how: str
) -> None:
    gw: Gateway = await gateway_factory(policies=PROTECTED, allow_unprotected=False)
    key = await gw.create_key()
    before = gw.services.policies.current
    failed, succeeded = reloads(gw, "failure"), reloads(gw, "success")
    with capture_logs() as events:
        unprotect(gw.config.policies.path, how)
        deadline = asyncio.get_running_loop().time() + 10
        while reloads(gw, "failure") == failed and reloads(gw, "success") == succeeded:
            assert asyncio.get_running_loop().time() < deadline, "no reload attempt seen"
            await asyncio.sleep(0.05)
    assert reloads(gw, "success") == succeeded, "an unprotected set was put in force"
    assert reloads(gw, "failure") == failed + 1
    assert gw.services.policies.current is before
    (failure,) = [e for e in events if e["event"] == "policies_reload_failed"]
    assert failure["log_level"] == "error"
    assert "no enforcing limit on the token route" in failure["error"]
    assert "no enforcing limit on the send route" in failure["error"]
    assert "the penalty box is off" in failure["error"]
    assert "allow_unprotected" in failure["error"]
    # token-per-ip (burst 3) still decides: 3 of 8 admitted, not 8 of 8
    assert await tokens_admitted(gw, key, 8) == 3


FINAL = PROTECTED.replace("burst: 3", "burst: 7") + (
    "  - name: reads-per-token\n"
    "    match: {routes: [messages]}\n"
    "    partition: [token]\n"
    "    limit: {rate: 60, per: 1m, burst: 20}\n"
)


async def test_a_file_rewritten_in_place_is_loaded_only_once_complete(
    gateway_factory: Any,
) -> None:
    """Truncate, then write in steps (as an editor or `cat > file` does): no
    intermediate set may ever be in force, and the complete one must be."""
    gw: Gateway = await gateway_factory(policies=PROTECTED, allow_unprotected=False)
    path = policy_file(gw)
    # cut points: nothing, the penalty box only, a valid and protected set without the
    # reads policy, a set cut in the middle of a line, then the whole file
    reads_at = FINAL.index("  - name: reads-per-token")
    cuts = [0, FINAL.index("policies:"), reads_at, len(FINAL) - 12, len(FINAL)]
    succeeded, failed = reloads(gw, "success"), reloads(gw, "failure")
    with capture_logs() as events:
        with path.open("w") as handle:  # truncates
            written = 0
            for cut in cuts:
                handle.write(FINAL[written:cut])
                handle.flush()
                written = cut
                # longer than the watcher's debounce, shorter than the settle interval
                await asyncio.sleep(0.2)
        deadline = asyncio.get_running_loop().time() + 10
        while len(gw.services.policies.current.policies) != 3:
            assert asyncio.get_running_loop().time() < deadline, "the complete file never loaded"
            await asyncio.sleep(0.05)
    current = gw.services.policies.current
    assert [p.name for p in current.policies] == [
        "token-per-ip",
        "send-per-token",
        "reads-per-token",
    ]
    assert current.policies[0].limit.burst == 7
    loaded = [e for e in events if e["event"] == "policies_reloaded"]
    assert [e["policies"] for e in loaded] == [3], loaded
    assert reloads(gw, "success") == succeeded + 1
    assert reloads(gw, "failure") == failed
