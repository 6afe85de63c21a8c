"""Rotating token signing keys across gateway restarts, as operators do it."""

from typing import Any

import jwt

from tests.support.harness import Gateway

OLD = "old:" + "o" * 48
NEW = "new:" + "n" * 48


async def test_rotation_keeps_live_tokens(gateway_factory: Any, store_kind: str) -> None:
    before: Gateway = await gateway_factory(store=store_kind, environ={"GATEWAY_SIGNING_KEYS": OLD})
    old_token = await before.new_token()
    assert jwt.get_unverified_header(old_token)["kid"] == "old"
    async with before.send(old_token) as resp:
        assert resp.status == 200

    # phase 2 of the rotation: the new key signs, the old one still verifies
    after: Gateway = await gateway_factory(
        store=store_kind, environ={"GATEWAY_SIGNING_KEYS": f"{NEW},{OLD}"}
    )
    new_token = await after.new_token()
    assert jwt.get_unverified_header(new_token)["kid"] == "new"
    async with after.send(old_token) as resp:
        assert resp.status == 200
    async with after.send(new_token) as resp:
        assert resp.status == 200

    # phase 3: the old key is gone, its tokens with it
    final: Gateway = await gateway_factory(store=store_kind, environ={"GATEWAY_SIGNING_KEYS": NEW})
    async with final.send(old_token) as resp:
        assert resp.status == 403
        assert (await resp.json(content_type=None))["code"] == "token_invalid"
    async with final.send(new_token) as resp:
        assert resp.status == 200
