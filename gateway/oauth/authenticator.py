"""Authenticating a bearer access token: its header, its key from the JWKS, its claims."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from gateway.oauth.access_token import (
    AccessToken,
    AccessTokenPolicy,
    TokenInvalid,
    TokenKeyUnknown,
    read_header,
    verify,
)
from gateway.oauth.jwks import JwksCache, UnknownKey, UnpublishedKey
from gateway.oauth.settings import OAuthSettings


class Authenticator:
    def __init__(
        self, settings: OAuthSettings, jwks: JwksCache, clock: Callable[[], float] = time.time
    ) -> None:
        self.policy = AccessTokenPolicy.from_settings(settings)
        self.jwks = jwks
        self._clock = clock

    async def authenticate(self, token: str) -> AccessToken:
        """The token's subject and scopes; raises :class:`TokenInvalid`, or
        :class:`gateway.oauth.jwks.JwksUnavailable` when no key set can be had."""
        header = read_header(token, self.policy)
        try:
            key = await self.jwks.key(header.kid, header.alg)
        except UnpublishedKey as exc:
            raise TokenKeyUnknown(
                "the access token was signed with an unknown key, not among the identity "
                f"provider's keys (fetched again in at most {math.ceil(exc.refetch_in)} s)"
            ) from None
        except UnknownKey:
            raise TokenInvalid(
                "the access token was signed with an unknown key (none fits its kid and alg)"
            ) from None
        return verify(token, header, key, self.policy, self._clock())
