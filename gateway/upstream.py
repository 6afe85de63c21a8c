"""Forwarding to the upstream chat service, per the design's upstream contract.

One pooled :class:`aiohttp.ClientSession` per process. Outgoing headers are built from
scratch (nothing of the client's request is copied, so no key, token or cookie can
leak); incoming headers lose hop-by-hop fields and cookies. Streamed answers are relayed
chunk by chunk as they arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
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
from gateway.observability.health import CheckFailed
from gateway.observability.metrics import Metrics

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
    header names), cookies, CORS fields and those the gateway sets itself."""
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
        if lowered.startswith("access-control-"):  # CORS is the gateway's decision, per key
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


#: metrics reason for each upstream problem code
ERROR_REASONS = {
    "upstream_timeout": "timeout",
    "upstream_unavailable": "unavailable",
    "upstream_error": "bad_response",
}


def error_reason(code: str) -> str:
    return ERROR_REASONS.get(code, "bad_response")


class UpstreamClient:
    def __init__(
        self,
        settings: UpstreamSettings,
        session: aiohttp.ClientSession,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._session = session
        self.metrics = metrics if metrics is not None else Metrics()
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

    @contextmanager
    def _observed(self, operation: str) -> Iterator[list[int]]:
        """Times one upstream exchange and counts its failure; the caller appends the
        response status to the yielded list once the headers are in."""
        started = time.perf_counter()
        status: list[int] = []
        cancelled = False
        try:
            yield status
        except ProblemError as err:
            self.metrics.upstream_error(operation, error_reason(err.code))
            raise
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self.metrics.observe_upstream(
                operation,
                status[0] if status else None,
                time.perf_counter() - started,
                cancelled=cancelled,
            )

    async def get_messages(self, ctx: ForwardContext) -> BufferedAnswer:
        url = self._url(self._settings.messages_path, ctx.conversation_id)
        headers = {**ctx.headers(), "Accept": "application/json"}
        with self._observed("get_messages") as status, upstream_errors():
            async with self._session.get(
                url, headers=headers, timeout=self._buffered_timeout, allow_redirects=False
            ) as resp:
                status.append(resp.status)
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
        if stream:
            request = self._session.post(
                url,
                data=orjson.dumps(payload),
                headers=headers,
                timeout=self._stream_timeout,
                allow_redirects=False,  # identity headers must not follow a Location elsewhere
            )
        else:
            request = self._session.post(
                url,
                data=orjson.dumps(payload),
                headers=headers,
                timeout=self._buffered_timeout,
                allow_redirects=False,
            )
        # a stream's timeout has no total: bound the wait for its headers; a buffered
        # answer's total already bounds headers and body alike
        async with self._opened("send_message", request, bound_headers=stream) as resp:
            yield resp

    @asynccontextmanager
    async def forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Any request to ``path`` (percent-encoded, with its query, sent as is): the
        response with headers read, to be relayed like :meth:`send_message`'s."""
        url = URL(self._base + path, encoded=True)
        request = self._session.request(
            method,
            url,
            data=body,
            headers=headers,
            timeout=self._stream_timeout,
            allow_redirects=False,  # a 3xx is the client's to follow, with its own token
        )
        async with self._opened("forward", request, bound_headers=True) as resp:
            yield resp

    @asynccontextmanager
    async def _opened(
        self, operation: str, request: Awaitable[aiohttp.ClientResponse], *, bound_headers: bool
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send ``request`` and wait for its headers (with ``bound_headers``, within the
        read timeout: streaming timeouts have no total); on leaving, return the connection
        to the pool when the body was read to the end, else close it, which cancels the
        upstream."""
        with self._observed(operation) as status, upstream_errors():
            if bound_headers:
                async with asyncio.timeout(self._headers_timeout):
                    resp = await request
            else:
                resp = await request
            status.append(resp.status)
        try:
            yield resp
        finally:
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()

    async def buffer(self, resp: aiohttp.ClientResponse) -> BufferedAnswer:
        try:
            with upstream_errors():
                return await self._buffer(resp)
        except ProblemError as err:
            self.metrics.upstream_error("send_message", error_reason(err.code))
            raise

    async def probe(self) -> None:
        """Readiness: GET ``health_path`` (2xx/3xx is up) or, unset, a TCP connect."""
        if self._settings.health_path:
            async with self._session.get(
                self._base + self._settings.health_path, allow_redirects=False
            ) as resp:
                if resp.status >= 400:
                    raise CheckFailed(f"status_{resp.status}")
            return
        url = URL(self._base)
        _reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.close()
        await writer.wait_closed()


async def body_chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The upstream body's chunks as they arrive. Only reading is mapped to upstream
    problems: a failure writing to the client is the client's, not the upstream's."""
    while True:
        with upstream_errors():
            chunk = await resp.content.readany()
        if not chunk:
            return
        yield chunk


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
