"""Deciding whether a request may proceed: token checks and the single store call.

Handlers call :meth:`Admissions.use_token` with the presented client token; it verifies
the signature and claims (no I/O), computes the client fingerprint, then asks the store
once whether the token is revoked, bound elsewhere or over a limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError

from gateway.config import BindingSettings
from gateway.core.fingerprint import FingerprintRule, fingerprint
from gateway.core.token_codec import ClientToken, TokenCodec, TokenRejected
from gateway.errors import ProblemError
from gateway.observability.metrics import Metrics
from gateway.store.base import (
    Admission,
    AdmitRequest,
    StateStore,
    StoreUnavailable,
    TokenUse,
    TokenVerdict,
)

log = structlog.get_logger("gateway.security")


@dataclass(frozen=True, slots=True)
class Client:
    """The requester as the gateway sees it."""

    ip: str
    user_agent: str


def rule_of(binding: BindingSettings) -> FingerprintRule:
    return FingerprintRule(
        components=tuple(binding.components),
        ipv4_prefix=binding.ipv4_prefix,
        ipv6_prefix=binding.ipv6_prefix,
    )


class Admissions:
    def __init__(
        self,
        codec: TokenCodec,
        store: StateStore,
        binding: BindingSettings,
        *,
        store_timeout: float,
        max_token_chars: int,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.codec = codec
        self.store = store
        self.binding = binding
        self.rule = rule_of(binding)
        self._store_timeout = store_timeout
        self._max_token_chars = max_token_chars
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    def fingerprint(self, client: Client) -> str:
        if not self.rule.enabled:
            return ""
        return fingerprint(self.rule, client.ip, client.user_agent)

    def issue_fingerprint(self, client: Client) -> str | None:
        """The fingerprint to embed at issue when tokens are bound at issue."""
        if self.binding.bind_at != "issue" or not self.rule.enabled:
            return None
        return self.fingerprint(client)

    def decode(self, token: str) -> ClientToken:
        if not token or len(token) > self._max_token_chars:
            raise ProblemError("token_invalid", "the token is malformed")
        try:
            return self.codec.decode(token, self._clock())
        except TokenRejected as exc:
            raise ProblemError(exc.code, exc.detail) from None

    async def _admit(self, request: AdmitRequest) -> Admission:
        try:
            with self.metrics.store_call("admit"):  # latency and errors, by operation
                async with asyncio.timeout(self._store_timeout):
                    return await self.store.admit(request)
        except (TimeoutError, RedisError, StoreUnavailable, OSError) as exc:
            log.error("store_error", error=type(exc).__name__)
            raise ProblemError("store_unavailable", "the state store is unavailable") from exc

    async def use_token(self, claims: ClientToken, client: Client) -> None:
        """Admit one use of a decoded token, or raise the matching 403/503 problem."""
        now = self._clock()
        use = TokenUse(
            jti=claims.jti,
            fingerprint=self.fingerprint(client),
            issued_fingerprint=claims.fingerprint or "",
            max_fingerprints=self.binding.max_fingerprints,
            revoke_on_reuse=self.binding.action == "revoke",
            ttl_ms=int(claims.remaining(now) * 1000),
        )
        admission = await self._admit(AdmitRequest(token=use))
        if admission.token is TokenVerdict.REVOKED:
            raise ProblemError("token_revoked", "the token has been revoked")
        if admission.token is TokenVerdict.REUSE:
            log.warning(
                "token_reuse_suspected",
                key_id=claims.key_id,
                action=self.binding.action,
            )
            raise ProblemError("token_reuse_suspected", "the token was used from another client")
