"""One place that turns a Redis URL into a client: standalone, Cluster or Sentinel.

* ``redis://[:password@]host:port/db`` and ``rediss://`` (TLS), ``unix:///path``
* ``redis+cluster://[:password@]host:port[,host:port...]`` (any seed nodes)
* ``redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]``
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException, RedisError

AnyRedis = Redis | RedisCluster
#: what a failing Redis raises: redis-py's errors (its timeouts and lost connections
#: included), the plain RedisClusterException (not a RedisError) its cluster client raises
#: when no node answers, and OSError (the builtin TimeoutError and ConnectionError among them)
REDIS_FAILURES: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)


class RedisUrlError(ValueError):
    pass


def safe_url(url: str) -> str:
    """``url`` with any password masked, for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    auth, _, hosts = parts.netloc.rpartition("@")
    user = auth.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hosts}").geturl()


def url_password(url: str) -> str | None:
    """The (decoded) password of ``url``, if any."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return None
    auth = parts.netloc.rpartition("@")[0]
    return unquote(auth.split(":", 1)[1] if ":" in auth else auth) or None


def _hosts(netloc: str, url: str) -> tuple[str | None, list[tuple[str, int]]]:
    password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        password = unquote(auth.split(":", 1)[1] if ":" in auth else auth) or None
    hosts = []
    for part in netloc.split(","):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise RedisUrlError(f"{safe_url(url)!r}: expected host:port, got {part!r}")
        hosts.append((host.strip("[]"), int(port)))
    return password, hosts


def connect(url: str, *, socket_timeout: float, max_connections: int, **kwargs: Any) -> AnyRedis:
    """A client for ``url``; nothing is sent until the first command."""
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "max_connections": max_connections,
        **kwargs,
    }
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss", "unix"):
        return Redis.from_url(url, **common)
    if scheme in ("redis+cluster", "rediss+cluster"):
        parts = urlsplit(url)
        password, hosts = _hosts(parts.netloc, url)
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in hosts],
            password=password,
            ssl=scheme.startswith("rediss"),
            **common,
        )
    if scheme == "redis+sentinel":
        parts = urlsplit(url)
        password, hosts = _hosts(parts.netloc, url)
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise RedisUrlError(f"{safe_url(url)!r}: the path must name the sentinel service")
        db = int(path[1]) if len(path) > 1 and path[1].isdigit() else 0
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts,
            sentinel_kwargs={"socket_timeout": socket_timeout, "password": password},
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            password=password,
            db=db,
            **kwargs,
        )
        master: Redis = sentinel.master_for(path[0], max_connections=max_connections)
        return master
    raise RedisUrlError(
        f"{safe_url(url)!r}: unsupported scheme {scheme!r} (redis, rediss, unix, redis+cluster, "
        "redis+sentinel)"
    )
