"""Which shard an admission's state lives in (``store.sharding: key``), and how a hot
agent key's own limits are split over its sub-buckets. Pure.

A shard is an agent key: every key of its admissions carries ``{prefix:<key id>}``
(:meth:`gateway.core.redis_keys.StateKeys.for_admission`). A hot key
(``store.hot_keys``) has N sub-buckets on evenly spaced slots
(:func:`~gateway.core.redis_keys.bucket_shard`): a conversation's
state lives in the sub-bucket its id picks, so its tokens, its family and its renewals
stay together (a renewal changes the jti, never the conversation), and N is written in
its tokens (``shd``), so a change of ``hot_keys`` moves no live conversation. Each limit
of the key as a whole (partitioned by nothing but ``api_key``, ``model``, ``global``) is
counted per sub-bucket at rate/N with burst ceil(burst/N): over any window the N
sub-buckets admit at most N - 1 requests more than the whole limit would (the burst
rounded up N times), and a client whose requests all land in one sub-bucket gets rate/N.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.core.gcra import LimitSpec
from gateway.core.redis_keys import bucket_shard


@dataclass(frozen=True, slots=True)
class Shard:
    """One admission's shard and how many sub-buckets its agent key has."""

    name: str
    buckets: int = 1

    def split(self, spec: LimitSpec, whole_key: bool) -> LimitSpec:
        """``spec`` as counted in one sub-bucket: a limit of the key as a whole
        (``whole_key``) gets rate/N and burst ceil(burst/N); any other is unchanged."""
        if self.buckets == 1 or not whole_key or spec.scope is not None:
            return spec
        n = self.buckets
        return spec._replace(interval_us=spec.interval_us * n, burst=math.ceil(spec.burst / n))


def bucket_of(spread: str, buckets: int) -> int:
    """The sub-bucket of ``spread`` (a conversation id, or a client address when there is
    no conversation yet): the same value always lands in the same sub-bucket."""
    return zlib.crc32(spread.encode()) % buckets


#: hot keys' sub-bucket shards remembered (key id, bucket, buckets)
MAX_BUCKETS_KEPT = 4096


@dataclass(frozen=True)
class Sharding:
    """How admissions lay out their state: ``enabled`` is ``store.sharding: key`` (for
    new conversations; a token's own layout, ``shd``, decides for its conversation), with
    the store's prefix and its hot keys (key id -> sub-buckets)."""

    prefix: str = "gw"
    hot_keys: Mapping[str, int] = field(default_factory=dict)
    enabled: bool = False
    _buckets: dict[tuple[str, int, int], str] = field(default_factory=dict, compare=False)

    def shards(self, key_id: str) -> int:
        """What a new conversation of ``key_id`` writes in its tokens (``shd``): 0 when
        sharding is off."""
        return self.hot_keys.get(key_id, 1) if self.enabled else 0

    def shard(self, key_id: str, spread: str, buckets: int) -> Shard:
        """The shard of an admission for ``key_id`` over ``buckets`` sub-buckets (1: the
        key itself); ``spread`` picks the sub-bucket."""
        if buckets <= 1:
            return Shard(key_id)
        wanted = (key_id, bucket_of(spread, buckets), buckets)
        name = self._buckets.get(wanted)
        if name is None:
            if len(self._buckets) >= MAX_BUCKETS_KEPT:
                self._buckets.clear()
            name = self._buckets[wanted] = bucket_shard(self.prefix, *wanted)
        return Shard(name, buckets)
