"""Forwarding to the upstream chat service, per the design's upstream contract.

One pooled :class:`aiohttp.ClientSession` per process. Outgoing headers are built from
scratch (nothing of the client's request is copied, so no key, token or cookie can
leak); incoming headers lose hop-by-hop fields and cookies. Streamed answers are relayed
chunk by chunk as they arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config import UpstreamSettings
from gateway.errors import ProblemError

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: never relayed to public clients, whatever the upstream says
DROPPED_RESPONSE_HEADERS = (
    frozenset({"set-cookie", "content-length", "server", "date", "x-request-id"}) | HOP_BY_HOP
)


def relayable_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's response headers minus hop-by-hop ones (and those the Connection
    header names), cookies and those the gateway sets itself."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
    }
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in DROPPED_RESPONSE_HEADERS or lowered in named:
            continue
        out.add(name, value)
    return out


@dataclass(frozen=True, slots=True)
class ForwardContext:
    """Who and what a forwarded request is about; becomes the ``X-*`` headers."""

    conversation_id: str
    model_id: str
    key_id: str
    request_id: str
    client_ip: str

    def headers(self) -> dict[str, str]:
        return {
            "X-Conversation-Id": self.conversation_id,
            "X-Model-Id": self.model_id,
            "X-Agent-Key-Id": self.key_id,
            "X-Request-Id": self.request_id,
            "X-Forwarded-For": self.client_ip,
        }


@dataclass(frozen=True, slots=True)
class BufferedAnswer:
    status: int
    headers: CIMultiDict[str]
    body: bytes


class UpstreamClient:
    def __init__(self, settings: UpstreamSettings, session: aiohttp.ClientSession) -> None:
        self._settings = settings
        self._session = session
        self._base = settings.url.rstrip("/")
        timeouts = settings.timeouts
        self._buffered_timeout = aiohttp.ClientTimeout(
            total=timeouts.read, connect=timeouts.connect
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect, sock_read=timeouts.stream_idle
        )
        self._headers_timeout = timeouts.read

    @staticmethod
    def new_session(settings: UpstreamSettings) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections,
            limit_per_host=settings.max_connections,
            keepalive_timeout=30,
            enable_cleanup_closed=True,
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
            skip_auto_headers=("User-Agent",),
        )

    def _url(self, template: str, conversation_id: str) -> str:
        return self._base + template.format(conversation_id=quote(conversation_id, safe=""))

    async def get_messages(self, ctx: ForwardContext) -> BufferedAnswer:
        url = self._url(self._settings.messages_path, ctx.conversation_id)
        headers = {**ctx.headers(), "Accept": "application/json"}
        with upstream_errors():
            async with self._session.get(
                url, headers=headers, timeout=self._buffered_timeout
            ) as resp:
                return await self._buffer(resp)

    async def _buffer(self, resp: aiohttp.ClientResponse) -> BufferedAnswer:
        limit = self._settings.max_response_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise ProblemError("upstream_error", "the upstream answer is too large")
        body = bytearray()
        async for chunk in resp.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise ProblemError("upstream_error", "the upstream answer is too large")
        return BufferedAnswer(resp.status, relayable_headers(resp.headers), bytes(body))

    @asynccontextmanager
    async def send_message(
        self, ctx: ForwardContext, payload: Mapping[str, Any]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The upstream's response with headers read and the body not yet consumed.

        The caller relays the body. Leaving the block (normally, on error, or because the
        client went away and the handler was cancelled) closes the upstream request.
        """
        url = self._url(self._settings.send_path, ctx.conversation_id)
        stream = bool(payload.get("stream"))
        headers = {
            **ctx.headers(),
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        with upstream_errors():
            # the stream timeout has no total: bound the wait for the headers ourselves
            async with asyncio.timeout(self._headers_timeout):
                resp = await self._session.post(
                    url,
                    data=orjson.dumps(payload),
                    headers=headers,
                    timeout=self._stream_timeout if stream else self._buffered_timeout,
                )
        try:
            yield resp
        finally:
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()

    @asynccontextmanager
    async def forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Any request to ``path`` (percent-encoded, with its query, sent as is): the
        response with headers read, to be relayed like :meth:`send_message`'s."""
        url = URL(self._base + path, encoded=True)
        with upstream_errors():
            async with asyncio.timeout(self._headers_timeout):
                resp = await self._session.request(
                    method, url, data=body, headers=headers, timeout=self._stream_timeout
                )
        try:
            yield resp
        finally:
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()

    async def buffer(self, resp: aiohttp.ClientResponse) -> BufferedAnswer:
        with upstream_errors():
            return await self._buffer(resp)


@contextmanager
def upstream_errors() -> Iterator[None]:
    """Connection failures become 502 ``upstream_unavailable``, timeouts 504."""
    try:
        yield
    except ProblemError:
        raise
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise ProblemError("upstream_timeout", "the upstream did not answer in time") from exc
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
        raise ProblemError("upstream_unavailable", "the upstream cannot be reached") from exc
    except aiohttp.ClientError as exc:
        raise ProblemError(
            "upstream_unavailable", f"upstream failure: {type(exc).__name__}"
        ) from exc
