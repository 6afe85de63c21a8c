from typing import Any, NamedTuple

import pytest


class SharedStore(NamedTuple):
    """The store the replicas share: its URL and the store settings that go with it."""

    url: str
    settings: dict[str, Any]


@pytest.fixture(params=["redis", "cluster", "cluster-sharded"])
def shared_store(request: pytest.FixtureRequest) -> SharedStore:
    """One Redis, a three-master Cluster, or that Cluster with each agent key's state in
    a slot of its own (``store.sharding: key``)."""
    name = "redis_url" if request.param == "redis" else "cluster_url"
    sharding = {"sharding": "key"} if request.param == "cluster-sharded" else {}
    return SharedStore(str(request.getfixturevalue(name)), sharding)
