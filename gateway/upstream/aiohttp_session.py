"""The ``aiohttp`` transport: the upstream through ``aiohttp.ClientSession``, held to the
builtin transport's rules (``upstream.client: aiohttp``).

The library parses and pools; what it does not do is here, in the connection protocol
the session's connector builds (a subclass of aiohttp's ``ResponseHandler``, set as the
connector's protocol factory: an internal of aiohttp, pinned with its version):

- each exchange knows the ``X-Request-Id`` it sent (a context variable carries it from
  :meth:`AiohttpTransport.request` to the protocol the connector hands that request);
- a final answer is checked as the builtin transport checks it
  (:mod:`gateway.upstream.response_head`: framing, echo; the head's size after aiohttp's
  own line, field and count limits, which it enforces while parsing); a failure fails the
  request and closes the connection;
- the connection goes back to the pool only when the answer proved it clean (it echoed
  its request's id, nothing more came, no bodiless status declared a length): otherwise
  aiohttp is told to close it (``should_close``);
- a second message in one exchange, or any byte while no exchange is open, closes the
  connection: aiohttp would queue such a message as the next request's answer;
- informational answers are dropped as they are parsed (aiohttp queues each one);
- a body being read fails as soon as the connection does, and a body without a length
  that the gateway closes is cut, not complete.

aiohttp itself retries a ``GET`` or ``HEAD`` once when the connection fails before the
answer's head is complete (``ServerDisconnectedError``), which covers a pooled connection
the upstream has just closed.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientResponse
from aiohttp.helpers import _EXC_SENTINEL as _NO_CAUSE
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawResponseMessage
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

from gateway.upstream.base import (
    HeadLimits,
    HeadTooLarge,
    Origin,
    UpstreamDisconnected,
    UpstreamProtocolError,
    check_request,
    declared_length,
    media_type,
)
from gateway.upstream.response_head import check_echo, check_framing

_FRAMING_FIELDS = ("Content-Length", "Transfer-Encoding")


class _Exchange:
    """One request's state, found by the protocol the connector hands it."""

    __slots__ = ("acquired", "request_id")

    def __init__(self, request_id: str | None) -> None:
        self.request_id = request_id
        #: a connection was handed to the request (it no longer waits)
        self.acquired = False


_EXCHANGE: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar(
    "upstream_exchange", default=None
)


class _GuardedProtocol(ResponseHandler):
    """aiohttp's connection protocol under the rules of the module's documentation."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, owner: AiohttpTransport) -> None:
        super().__init__(loop)
        self._owner = owner
        self._exchanges = 0
        #: the exchange open on this connection (None: idle, or not yet used)
        self._current: _Exchange | None = None
        self._answered = False
        self._proved = False
        self._tainted = False
        self._head_bytes = 0

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_lost(self, exc: BaseException | None) -> None:
        self._current = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self._current is None:
            self._poison()  # bytes nobody asked for: this connection cannot be trusted
            return
        super().data_received(data)

    # -- aiohttp's hooks -----------------------------------------------------------------
    def set_response_params(self, **kwargs: Any) -> None:
        """Called once a request has this connection, before it is sent."""
        super().set_response_params(**kwargs)
        exchange = _EXCHANGE.get()
        self._exchanges += 1
        self._current = exchange
        self._answered = self._proved = self._tainted = False
        self._head_bytes = 0
        if exchange is not None and not exchange.acquired:
            exchange.acquired = True
            self._owner._pending -= 1

    @property
    def should_close(self) -> bool:
        return not self._proved or super().should_close

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        message, payload = data
        exchange = self._current
        if exchange is None or self._answered:
            self._poison()  # a second answer to one request
            return
        code = message.code
        # the status line ("HTTP/1.1 200 " and CRLF) and each field ("name: value" and CRLF)
        self._head_bytes += (
            len(message.reason)
            + 15
            + sum(len(name) + len(value) + 4 for name, value in message.raw_headers)
        )
        limit = self._owner.limits.max_bytes
        try:
            if self._head_bytes > limit:
                raise HeadTooLarge(f"the answer's head is longer than {limit} bytes")
            if 100 <= code < 200 and code != 101:
                # the real answer follows: the gateway never waits for a 100 Continue, so
                # informational answers are dropped here (aiohttp would queue every one of
                # a flood); one that declares a body is not to be trusted
                if any(name in message.headers for name in _FRAMING_FIELDS):
                    self._tainted = True
                return
            self._answered = True
            if code < 200:
                raise UpstreamProtocolError(f"the upstream answered {code}")
            declares_body = check_framing(code, message.headers)
            proved = check_echo(
                message.headers,
                exchange.request_id,
                required=self._owner.require_echo or self._exchanges > 1,
            )
        except UpstreamProtocolError as exc:
            self.set_exception(exc)  # the request's read raises it; aiohttp closes
            return
        self._proved = proved and not declares_body and not self._tainted
        payload.on_eof(self._ended)
        super().feed_data(data, size)

    def _ended(self) -> None:
        self._current = None

    def set_exception(self, exc: BaseException, exc_cause: BaseException = _NO_CAUSE) -> None:
        """The connection failed (aiohttp's parser refused bytes, or a check here did):
        a body being read fails now, not when the connection is finally lost."""
        if isinstance(exc, UpstreamProtocolError | HttpProcessingError):
            self._cut(UpstreamProtocolError(f"invalid response from the upstream: {exc}"))
        else:
            self._cut()
        super().set_exception(exc, exc_cause)

    def close(self) -> None:
        self._cut()
        super().close()

    def abort(self) -> None:
        self._cut()
        super().abort()

    def _cut(self, error: BaseException | None = None) -> None:
        """Closed from this side, or failed: a body still being read is cut, never
        complete (aiohttp would end a body without a length as if the upstream had
        closed, and tell a body's reader of a parser failure only once the connection is
        finally lost)."""
        payload = self._payload
        if payload is not None and not payload.is_eof():
            payload.set_exception(
                error or UpstreamDisconnected("the connection was closed mid-answer")
            )

    def _poison(self) -> None:
        self._proved = False
        self.force_close()
        self.close()


class _Connector(aiohttp.TCPConnector):
    def __init__(self, owner: AiohttpTransport, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._factory = functools.partial(  # type: ignore[assignment]
            _GuardedProtocol, loop=self._loop, owner=owner
        )


class AiohttpResponse:
    """An upstream response (:class:`~gateway.upstream.base.UpstreamResponse`) over
    aiohttp's."""

    __slots__ = ("_resp", "deadline")

    def __init__(self, resp: ClientResponse) -> None:
        self._resp = resp
        self.deadline: float | None = None

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._resp.headers

    @property
    def content_type(self) -> str:
        return media_type(self._resp.headers)

    @property
    def content_length(self) -> int | None:
        return declared_length(self._resp.headers)

    def ready(self) -> bool:
        return False  # unknown: reads are always bounded by the caller's timeout

    async def read_any(self) -> bytes:
        try:
            return await self._resp.content.readany()
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamDisconnected(f"the answer's body failed: {exc}") from exc
        except aiohttp.ClientConnectionError as exc:
            raise UpstreamDisconnected(f"the upstream closed the connection: {exc}") from exc

    def release(self) -> None:
        resp = self._resp
        if resp.content.is_eof():
            resp.release()
        else:
            resp.close()  # unfinished: the connection is closed

    def __enter__(self) -> AiohttpResponse:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class AiohttpTransport:
    """A :class:`~gateway.upstream.base.Transport` on ``aiohttp.ClientSession``. Build it
    inside the running event loop."""

    def __init__(
        self,
        url: str,
        *,
        max_connections: int,
        connect_timeout: float,
        idle_seconds: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        limits: HeadLimits | None = None,
        require_echo: bool = False,
    ) -> None:
        self.origin = Origin.parse(url)
        self.limits = limits = limits or HeadLimits()
        self.require_echo = require_echo
        self._base = self.origin.url
        #: requests that have no connection yet (in line for one, or connecting)
        self._pending = 0
        self._connector = connector = _Connector(
            self,
            limit=max_connections,
            limit_per_host=0,
            keepalive_timeout=idle_seconds,
            ssl=ssl_context if ssl_context is not None else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
            auto_decompress=False,
            skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),
            max_line_size=limits.max_line,
            max_field_size=limits.max_line,
            max_headers=limits.max_headers,
            trust_env=False,
            requote_redirect_url=False,
        )

    @property
    def open_connections(self) -> int:
        """Connections the pool holds, connecting, in use or idle. The connector's own
        lists (a protocol whose connect was cancelled may never be told it was lost), less
        those already closed that it has yet to drop."""
        if self._connector.closed:
            return 0
        # copies first (one C call each): the admin thread reads these while the loop
        # changes them
        in_use = sum(
            1
            for proto in list(self._connector._acquired)
            if not isinstance(proto, ResponseHandler) or proto.is_connected()
        )
        return in_use + self.idle_connections

    @property
    def idle_connections(self) -> int:
        return sum(
            1
            for idle in list(self._connector._conns.values())
            for proto, _since in list(idle)
            if proto.is_connected()
        )

    @property
    def waiting(self) -> int:
        return self._pending

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> AiohttpResponse:
        check_request(target, headers)
        url = URL(self._base + target, encoded=True)
        exchange = _Exchange(request_id)
        token = _EXCHANGE.set(exchange)
        self._pending += 1
        try:
            if deadline is None:
                resp = await self._send(method, url, headers, body)
            else:
                async with asyncio.timeout_at(deadline):
                    resp = await self._send(method, url, headers, body)
        finally:
            _EXCHANGE.reset(token)
            if not exchange.acquired:
                self._pending -= 1
        return AiohttpResponse(resp)

    async def _send(
        self, method: str, url: URL, headers: Mapping[str, str], body: bytes | None
    ) -> ClientResponse:
        """The response, with aiohttp's failures raised as the builtin transport's."""
        try:
            return await self._session.request(
                method, url, headers=headers, data=body, allow_redirects=False
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise exc.certificate_error from exc
        except aiohttp.ClientConnectorError as exc:
            raise exc.os_error from exc  # refused, unreachable, DNS, TLS
        except aiohttp.ClientResponseError as exc:  # the parser refused the head
            raise UpstreamProtocolError(
                f"invalid response from the upstream: {exc.message}"
            ) from exc
        except TimeoutError:
            raise
        except aiohttp.ClientConnectionError as exc:
            raise UpstreamDisconnected(f"the upstream closed the connection: {exc}") from exc
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamDisconnected(f"the answer failed: {exc}") from exc
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # aiohttp cancels the requests in line for a connection when it closes
            raise UpstreamDisconnected("the upstream client is closed") from None

    async def close(self) -> None:
        await self._session.close()
