"""The upstream chat service: what the web layer may use of it.

- :class:`UpstreamClient`, the service the handlers call (builds requests, bounds answers,
  maps failures to problems), and :func:`open_transport`, which builds the configured
  transport for it;
- the types a handler sees: :class:`ForwardContext`, :class:`BufferedAnswer`,
  :class:`UpstreamResponse`, :class:`Transport`.

Implementations (``http1``, ``aiohttp_session``) are never imported by the web layer.
"""

from gateway.upstream.base import Transport, UpstreamResponse
from gateway.upstream.factory import open_transport
from gateway.upstream.service import (
    BufferedAnswer,
    ForwardContext,
    UpstreamClient,
    error_reason,
)

__all__ = [
    "BufferedAnswer",
    "ForwardContext",
    "Transport",
    "UpstreamClient",
    "UpstreamResponse",
    "error_reason",
    "open_transport",
]
