"""Every key a gateway writes to a real Redis has a shape listed in
gateway.core.redis_keys and documented in docs/operations.md."""

import re
from pathlib import Path
from typing import Any

import redis.asyncio

from gateway.core import agent_keys
from gateway.core.redis_keys import KEY_STORE_KEY_SHAPES, STATE_KEY_SHAPES
from tests.support.dpop import ProofKey
from tests.support.harness import PROTECTED, TOKEN_URL

OPERATIONS = Path(__file__).parents[2] / "docs" / "operations.md"
#: a low threshold, so that the traffic below puts the client in the penalty box
POLICIES = PROTECTED.replace("threshold: 20", "threshold: 2")


def shape_pattern(shape: str, prefix: str) -> re.Pattern[str]:
    escaped = re.escape(shape.replace("{prefix}", "{" + prefix + "}"))
    return re.compile(
        "^" + re.sub(r"<[^>]+>", ".+", escaped.replace(r"\<", "<").replace(r"\>", ">")) + "$"
    )


def test_every_key_shape_is_documented() -> None:
    text = OPERATIONS.read_text()
    for shape, kind in STATE_KEY_SHAPES:
        assert f"| `{shape.replace('{prefix}', '{gw}')}` | {kind}" in text
    for shape, kind in KEY_STORE_KEY_SHAPES:
        assert f"| `{shape.replace('{prefix}', '{gwkeys}')}` | {kind}" in text


async def test_real_traffic_leaves_only_documented_keys(
    gateway_factory: Any, redis_url: str
) -> None:
    gateway = await gateway_factory(
        store="redis",
        policies=POLICIES,
        allow_unprotected=False,
        keys={"type": "redis", "redis_url": redis_url},
    )
    key = await gateway.create_key()
    token = await gateway.get_token(key)
    async with gateway.send(token) as resp:
        assert resp.status == 200
    async with gateway.refresh(token) as resp:  # the conversation's token family
        assert resp.status == 200, await resp.text()
    proof = ProofKey().proof("GET", gateway.url + TOKEN_URL.format(model="demo"))
    await gateway.get_token(key, DPoP=proof)  # a DPoP proof, remembered against replay
    wrong = agent_keys.generate().key  # well formed, unknown: a failure
    client = redis.asyncio.Redis.from_url(redis_url)
    found: dict[str, str] = {}
    try:
        for _ in range(3):  # a failure counted, then the penalty box (which resets it)
            async with gateway.http.get(
                gateway.url + TOKEN_URL.format(model="demo"),
                headers=gateway.headers({"Authorization": f"Bearer {wrong}"}),
            ) as resp:
                assert resp.status in (404, 429)
            async for raw in client.scan_iter():
                found[raw.decode()] = (await client.type(raw)).decode()
    finally:
        await client.aclose()
    shapes = [
        *((shape_pattern(s, "gw"), s, kind) for s, kind in STATE_KEY_SHAPES),
        *((shape_pattern(s, "gwkeys"), s, kind) for s, kind in KEY_STORE_KEY_SHAPES),
    ]
    seen = set()
    for name, kind in found.items():
        matching = [(s, k) for pattern, s, k in shapes if pattern.match(name)]
        assert matching, f"{name}: no documented shape"
        assert kind in {k for _, k in matching}, f"{name} is a {kind}"
        seen.update(s for s, _ in matching)
    # the traffic above wrote every kind of key but the attempts in flight (released)
    assert seen >= {s for s, _ in (*STATE_KEY_SHAPES, *KEY_STORE_KEY_SHAPES)} - {
        "{prefix}:pa:<subject>"
    }, sorted(found)
