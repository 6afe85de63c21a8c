"""Redis URLs: every supported kind connects to the right client, and no error or log
line ever shows a password."""

from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway.redis_connect import RedisUrlError, connect, safe_url, url_password
from tests.support.processes import run_cli
from tests.support.stack import write_config

SECRET = "Sup3r%2FS3cret"


def test_safe_url_masks_passwords_only() -> None:
    assert safe_url(f"redis://:{SECRET}@cache:6379/0") == "redis://:***@cache:6379/0"
    assert safe_url(f"redis://app:{SECRET}@cache:6379/0") == "redis://app:***@cache:6379/0"
    assert safe_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert url_password(f"redis://app:{SECRET}@cache:6379/0") == "Sup3r/S3cret"
    assert url_password("redis://cache:6379/0") is None


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", Redis),
        ("rediss://127.0.0.1:6380/0", Redis),
        ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", RedisCluster),
        ("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/2", Redis),
    ],
)
async def test_each_kind_of_url_gives_its_client(url: str, kind: type) -> None:
    client = connect(url, socket_timeout=0.5, max_connections=4)
    assert isinstance(client, kind)
    await client.aclose()


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://:{SECRET}@127.0.0.1:26379",  # no service name
        f"redis+cluster://:{SECRET}@127.0.0.1",  # no port
        f"memcached://:{SECRET}@127.0.0.1:11211",
    ],
)
def test_url_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(RedisUrlError) as info:
        connect(url, socket_timeout=0.5, max_connections=4)
    assert SECRET not in str(info.value)
    assert "***" in str(info.value)


def test_the_command_line_never_prints_a_store_password(tmp_path: Path) -> None:
    url = f"redis+sentinel://:{SECRET}@127.0.0.1:26379"
    config = write_config(tmp_path, store={"type": "redis", "url": url})
    result = run_cli(
        "serve", "--config", str(config), env={"GATEWAY_SIGNING_KEYS": "k:" + "s" * 40}
    )
    assert result.returncode == 2
    assert "the path must name the sentinel service" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "Sup3r/S3cret" not in result.stdout + result.stderr
