"""The identity provider's signing keys (a JWKS), fetched with aiohttp and cached.

- Fetched lazily on first use, then again when the cached set is older than
  ``cache_seconds``, or when a token names a ``kid`` the set lacks (key rotation).
- Whatever the reason, at most one fetch starts per ``min_refresh_seconds``: tokens with
  made-up ``kid``s cannot make the gateway hammer the provider. Concurrent requests that
  need a fetch share the one in flight.
- A ``kid`` the set lacks is :class:`UnpublishedKey`: the provider may have rotated to a
  key not fetched yet (inside the refetch interval), so it is no evidence of forgery; the
  first such token after the interval fetches again. A ``kid`` the set has, but not for
  the token's ``alg``, is a plain :class:`UnknownKey`.
- A failed fetch keeps the last good set (logged); with no set at all the caller gets
  :class:`JwksUnavailable` (503), not a 401 that would blame the token.
- Keys are parsed with pyjwt's :class:`jwt.PyJWK` once per fetch, for each allowed
  algorithm they fit (``kty``/``crv``/``alg``/``use``/``key_ops``); symmetric (``oct``)
  keys, keys with private members and RSA keys under 2048 bits are ignored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson
import structlog

log = structlog.get_logger("gateway.oauth")

MAX_JWKS_BYTES = 512 * 1024
MIN_RSA_BITS = 2048
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_EDDSA_CURVES = frozenset({"Ed25519", "Ed448"})
#: members that only a private JWK has (RFC 7518 section 6)
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class JwksUnavailable(Exception):
    """No key set could be obtained from the identity provider."""


class UnknownKey(Exception):
    """No key of the set fits the token's ``kid`` and ``alg``."""


class UnpublishedKey(UnknownKey):
    """The set has no key with the token's ``kid`` at all; it is fetched again (and the
    ``kid`` looked for) in ``refetch_in`` seconds at most."""

    def __init__(self, message: str, refetch_in: float) -> None:
        super().__init__(message)
        self.refetch_in = refetch_in


def fits(jwk: dict[str, Any], alg: str) -> bool:
    """Whether the JWK may verify ``alg`` signatures (RFC 7517 ``use``/``alg``, key type)."""
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
        return False
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return False
    kty = jwk.get("kty")
    if alg[:2] in ("RS", "PS"):
        return bool(kty == "RSA")
    if alg in _CURVES:
        return kty == "EC" and jwk.get("crv") == _CURVES[alg]
    if alg == "EdDSA":
        return kty == "OKP" and jwk.get("crv") in _EDDSA_CURVES
    return False


@dataclass(frozen=True, slots=True)
class KeySet:
    """Verification keys by ``(kid, alg)``; keys without ``kid`` by ``alg`` only."""

    by_kid: dict[tuple[str, str], Any]
    without_kid: dict[str, list[Any]]
    size: int
    #: every ``kid`` the document names, usable or not
    kids: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, document: Any, algorithms: Iterable[str]) -> KeySet:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWK Set (no 'keys' list)")
        by_kid: dict[tuple[str, str], Any] = {}
        without_kid: dict[str, list[Any]] = {}
        kids: set[str] = set()
        size = 0
        for jwk in document["keys"]:
            if not isinstance(jwk, dict):
                continue
            kid = jwk.get("kid")
            if isinstance(kid, str) and kid:
                kids.add(kid)
            if PRIVATE_MEMBERS & jwk.keys():
                log.error(
                    "jwks_key_skipped", kid=kid, error="the JWKS publishes private key material"
                )
                continue
            for alg in algorithms:
                if not fits(jwk, alg):
                    continue
                try:
                    key = jwt.PyJWK(jwk, algorithm=alg).key
                except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
                    log.warning("jwks_key_skipped", kid=kid, alg=alg, error=str(exc)[:200])
                    continue
                if alg[:2] in ("RS", "PS") and key.key_size < MIN_RSA_BITS:
                    log.warning("jwks_key_skipped", kid=kid, alg=alg, error="RSA key too short")
                    continue
                size += 1
                if isinstance(kid, str) and kid:
                    by_kid.setdefault((kid, alg), key)
                else:
                    without_kid.setdefault(alg, []).append(key)
        return cls(by_kid=by_kid, without_kid=without_kid, size=size, kids=frozenset(kids))

    def find(self, kid: str | None, alg: str) -> Any | None:
        if kid is not None:
            return self.by_kid.get((kid, alg))
        candidates = self.without_kid.get(alg, [])
        if len(candidates) == 1 and not any(a == alg for _, a in self.by_kid):
            return candidates[0]
        return None  # no kid and not exactly one key for alg: ambiguous


class JwksCache:
    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        algorithms: Iterable[str],
        cache_seconds: float,
        min_refresh_seconds: float,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._session = session
        self._algorithms = tuple(algorithms)
        self._cache_seconds = cache_seconds
        self._min_refresh = min_refresh_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._clock = clock
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        #: fetches started (successful or not), for metrics and tests
        self.fetches = 0

    async def key(self, kid: str | None, alg: str) -> Any:
        """The verification key for a token's ``kid``/``alg``; raises :class:`UnknownKey`
        or :class:`JwksUnavailable`."""
        now = self._clock()
        if self._keys is None or now - self._fetched_at >= self._cache_seconds:
            await self._refresh(now)
        if self._keys is None:
            raise JwksUnavailable("the identity provider's keys could not be fetched")
        key = self._keys.find(kid, alg)
        if key is None:
            await self._refresh(now)  # maybe rotated; throttled
            key = self._keys.find(kid, alg)
        if key is None:
            if kid is not None and kid not in self._keys.kids:
                raise UnpublishedKey(f"no key with kid {kid!r}", self.refetch_in(now))
            raise UnknownKey(f"no key for kid {kid!r} and alg {alg}")
        return key

    def refetch_in(self, now: float) -> float:
        """Seconds until the throttle lets a fetch start again (0: now)."""
        if self._attempted_at is None:
            return 0.0
        return max(0.0, self._attempted_at + self._min_refresh - now)

    async def prime(self) -> None:
        """Fetch now (at start), so the first request does not wait for the provider."""
        await self._refresh(self._clock())

    async def _refresh(self, now: float) -> None:
        """Join the fetch in flight, or start one if the throttle allows; never raises."""
        if self._inflight is None:
            if self._attempted_at is not None and now - self._attempted_at < self._min_refresh:
                return
            self._attempted_at = now
            self.fetches += 1
            self._inflight = asyncio.create_task(self._fetch(), name="jwks-fetch")
            self._inflight.add_done_callback(self._fetched)
        await asyncio.shield(self._inflight)

    def _fetched(self, task: asyncio.Task[None]) -> None:
        self._inflight = None

    async def _fetch(self) -> None:
        try:
            async with self._session.get(
                self.url, timeout=self._timeout, headers={"Accept": "application/json"}
            ) as resp:
                if resp.status != 200:
                    raise ValueError(f"the JWKS endpoint answered {resp.status}")
                body = await resp.content.read(MAX_JWKS_BYTES + 1)
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
            keys = KeySet.parse(orjson.loads(body), self._algorithms)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.error(
                "jwks_fetch_failed",
                url=self.url,
                error=str(exc)[:200] or type(exc).__name__,
                kept_keys=self._keys.size if self._keys else 0,
            )
            return
        if keys.size == 0:
            log.error("jwks_fetch_failed", url=self.url, error="no usable key for the algorithms")
            return
        self._keys, self._fetched_at = keys, self._clock()
        log.info("jwks_fetched", url=self.url, keys=keys.size)

    async def close(self) -> None:
        task = self._inflight
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
