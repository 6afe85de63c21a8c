import pytest


@pytest.fixture(params=["redis", "cluster"])
def shared_store(request: pytest.FixtureRequest) -> str:
    """The URL of the store the replicas share: one Redis, or a three-master Cluster."""
    name = "redis_url" if request.param == "redis" else "cluster_url"
    return str(request.getfixturevalue(name))
