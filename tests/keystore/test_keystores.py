"""Both key stores: hashes only, listing, revocation, and propagation to running gateways."""

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from gateway.config import Config
from gateway.keystore.admin import KeySpecError, create_key
from gateway.keystore.base import KeyStore, utcnow
from gateway.keystore.factory import open_keystore


@pytest.fixture
async def watcher(keys_config: Config) -> AsyncIterator[KeyStore]:
    """A store as a running gateway holds it: loaded, and synchronising in the background."""
    store = open_keystore(keys_config)
    await store.refresh()
    stop = asyncio.Event()
    task = asyncio.create_task(store.run(stop))
    yield store
    stop.set()
    await task
    await store.close()


async def raw_contents(config: Config) -> bytes:
    if config.keys.type == "file":
        return config.keys.path.read_bytes()
    client = redis.asyncio.Redis.from_url(config.key_store_redis_url)
    try:
        out = b""
        async for name in client.scan_iter("*"):
            value = await client.dump(name)
            out += name + b"=" + (value or b"")
        return out
    finally:
        await client.aclose()


async def test_only_the_hash_is_stored(keys_config: Config) -> None:
    key, record = await create_key(keys_config, ["demo"], ["https://Shop.example/"], "shop")
    assert record.hash.startswith("$argon2id$")
    assert record.origins == ("https://shop.example",)
    contents = await raw_contents(keys_config)
    secret = key.split("_", 2)[2]
    assert key.encode() not in contents
    assert secret.encode() not in contents
    assert record.key_id.encode() in contents


async def test_create_list_revoke(keys_config: Config) -> None:
    _, first = await create_key(keys_config, ["demo"])
    _, second = await create_key(keys_config, ["demo", "other"], label="two models")
    store = open_keystore(keys_config)
    try:
        listed = {r.key_id: r for r in await store.list()}
        assert set(listed) == {first.key_id, second.key_id}
        assert listed[second.key_id].models == ("demo", "other")
        revoked = await store.revoke(first.key_id, utcnow())
        assert revoked is not None and not revoked.active
        again = await store.revoke(first.key_id, utcnow())
        assert again is not None and again.revoked_at == revoked.revoked_at
        assert await store.revoke("AAAAAAAAAAAA", utcnow()) is None
        lookup = store.lookup(first.key_id)
        assert lookup is not None and not lookup.active
    finally:
        await store.close()


async def test_unknown_models_are_refused(keys_config: Config) -> None:
    with pytest.raises(KeySpecError, match="unknown model 'gpt-9'"):
        await create_key(keys_config, ["gpt-9"])
    with pytest.raises(KeySpecError, match="origin"):
        await create_key(keys_config, ["demo"], ["not an origin"])


async def test_changes_reach_a_running_store_within_seconds(
    keys_config: Config, watcher: KeyStore
) -> None:
    _, record = await create_key(keys_config, ["demo"])
    assert await _eventually(lambda: watcher.lookup(record.key_id) is not None)
    other = open_keystore(keys_config)
    try:
        await other.revoke(record.key_id, utcnow())
    finally:
        await other.close()

    def revoked() -> bool:
        found = watcher.lookup(record.key_id)
        return found is not None and not found.active

    assert await _eventually(revoked)


async def _eventually(check: object, timeout: float = 5.0) -> bool:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return bool(check())


@pytest.mark.parametrize("keys_config", ["file"], indirect=True)
async def test_a_broken_file_keeps_the_last_good_keys(
    keys_config: Config, watcher: KeyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    _, record = await create_key(keys_config, ["demo"])
    assert await _eventually(lambda: watcher.lookup(record.key_id) is not None)
    path = keys_config.keys.path
    path.write_text(path.read_text().replace("models:", "modles:"))
    await asyncio.sleep(0.6)
    assert watcher.lookup(record.key_id) is not None
    from gateway.keystore.base import KeyStoreError

    with pytest.raises(KeyStoreError, match=r"keys.yaml:\d+: keys\[0\].modles: unknown field"):
        await watcher.refresh()
