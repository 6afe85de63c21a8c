"""The configured transport (``upstream.client``), built inside the running loop."""

from __future__ import annotations

from gateway.config import UpstreamSettings
from gateway.upstream.base import HeadLimits, Transport


def head_limits(settings: UpstreamSettings) -> HeadLimits:
    return HeadLimits(
        max_bytes=settings.max_header_bytes,
        max_line=settings.max_header_line_bytes,
        max_headers=settings.max_header_count,
    )


def open_transport(settings: UpstreamSettings) -> Transport:
    """``builtin`` (:mod:`gateway.upstream.http1`) or ``aiohttp``
    (:mod:`gateway.upstream.aiohttp_session`), configured alike."""
    if settings.client == "aiohttp":
        from gateway.upstream.aiohttp_session import AiohttpTransport

        return AiohttpTransport(
            settings.url,
            max_connections=settings.max_connections,
            connect_timeout=settings.timeouts.connect,
            idle_seconds=settings.idle_seconds,
            limits=head_limits(settings),
            require_echo=settings.require_request_id_echo,
        )
    from gateway.upstream.http1 import Http1Pool

    return Http1Pool(
        settings.url,
        max_connections=settings.max_connections,
        connect_timeout=settings.timeouts.connect,
        idle_seconds=settings.idle_seconds,
        limits=head_limits(settings),
        require_echo=settings.require_request_id_echo,
    )
