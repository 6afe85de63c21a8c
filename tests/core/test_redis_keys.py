"""The shapes of the gateway's Redis keys, and their hash tag."""

from redis.crc import key_slot

from gateway.core.redis_keys import (
    CLUSTER_SLOTS,
    KeyStoreKeys,
    StateKey,
    StateKeys,
    bucket_shard,
    cluster_slot,
    hash_tag,
    limit_name,
)


def test_state_keys() -> None:
    keys = StateKeys("gw")
    assert keys.token("J1") == "{gw}:ts:J1"
    assert keys.limit(limit_name("per-ip", "203.0.113.7")) == "{gw}:rl:per-ip:203.0.113.7"
    assert keys.penalty("203.0.113.0/24") == "{gw}:pb:203.0.113.0/24"
    assert keys.failures("s") == "{gw}:pf:s"
    assert keys.attempts("s") == "{gw}:pa:s"
    assert keys.failure_script("s") == ["{gw}:pf:s", "{gw}:pb:s", "{gw}:pa:s"]
    assert keys.reserve_script("s") == ["{gw}:pb:s", "{gw}:pf:s", "{gw}:pa:s"]


def test_state_keys_read_back() -> None:
    keys = StateKeys("gw")
    name = limit_name("per-ip", "2001:db8::|AbCdEf012345")
    assert keys.parse(keys.token("J1")) == StateKey("ts", "J1")
    assert keys.parse(keys.family("c-1")) == StateKey("tf", "c-1")
    assert keys.parse(keys.limit(name)) == StateKey("rl", name)
    assert keys.parse(keys.penalty("2001:db8::/64")) == StateKey("pb", "2001:db8::/64")
    assert keys.parse(keys.failures("s")) == StateKey("pf", "s")
    assert keys.parse(keys.attempts("s")) == StateKey("pa", "s")
    for other in (
        "{gwkeys}:key:k1",  # the key store's
        "{gw2}:ts:J1",  # another prefix
        "{gw}:xx:J1",  # no such kind
        "{gw}:ts:",  # no name
        "{gw}:ts",
        "gw:ts:J1",
    ):
        assert keys.parse(other) is None, other


def test_key_store_keys() -> None:
    keys = KeyStoreKeys("gwkeys")
    assert keys.record("k1") == "{gwkeys}:key:k1"
    assert (keys.ids, keys.version, keys.changes) == (
        "{gwkeys}:ids",
        "{gwkeys}:version",
        "{gwkeys}:changes",
    )


def test_one_store_s_keys_share_one_cluster_slot() -> None:
    state, key_store = StateKeys("tenant-a"), KeyStoreKeys("tenant-a.keys")
    built = [
        state.token("J1"),
        state.limit("p:x|y"),
        *state.failure_script("203.0.113.7"),
        *state.reserve_script("2001:db8::/64"),
    ]
    assert {key_slot(k.encode()) for k in built} == {key_slot(b"tenant-a")}
    assert hash_tag("tenant-a") == "{tenant-a}"
    stored = [key_store.record("k"), key_store.ids, key_store.version]
    assert {key_slot(k.encode()) for k in stored} == {key_slot(b"tenant-a.keys")}


def test_a_sharded_admission_s_keys_share_its_agent_key_s_slot() -> None:
    keys = StateKeys("gw")
    assert keys.for_admission(None) is keys
    shard = keys.for_admission("K0123456789A")
    assert shard is keys.for_admission("K0123456789A")  # built once per shard
    built = [
        shard.token("J1"),
        shard.family("c-1"),
        shard.limit("per-key:K0123456789A"),
        shard.penalty("203.0.113.7"),
    ]
    assert built[0] == "{gw:K0123456789A}:ts:J1"
    assert {key_slot(k.encode()) for k in built} == {key_slot(b"gw:K0123456789A")}
    hot = keys.for_admission(bucket_shard("gw", "K0123456789A", 3, 12))
    assert hot.family("c-1").startswith("{gw:K0123456789A:3:")
    # read back by the store's own builder; another prefix's are not its keys
    assert keys.parse(shard.family("c-1")) == StateKey("tf", "c-1")
    assert keys.parse(hot.token("J1")) == StateKey("ts", "J1")
    assert keys.parse("{gw2:K0123456789A}:ts:J1") is None
    assert keys.parse("{gw:K0123456789A}ts:J1") is None


def test_a_hot_key_s_sub_buckets_sit_on_evenly_spaced_slots() -> None:
    """12 sub-buckets: one in each twelfth of the slots, so 3 (or 4, 6, 12) primaries
    with equal contiguous ranges serve the same number of them."""
    assert cluster_slot("gw:K0123456789A") == key_slot(b"{gw:K0123456789A}:ts:J1")
    shards = [bucket_shard("gw", "K0123456789A", b, 12) for b in range(12)]
    slots = [cluster_slot(f"gw:{shard}") for shard in shards]
    assert [slot * 12 // CLUSTER_SLOTS for slot in slots] == list(range(12))
    assert bucket_shard("gw", "K0123456789A", 5, 12) == shards[5]  # every replica agrees
