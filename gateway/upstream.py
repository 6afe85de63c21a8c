"""Forwarding to the upstream chat service, per the design's upstream contract.

One pool of keep-alive connections per process (:mod:`gateway.http_client`). Outgoing
headers are built from scratch (nothing of the client's request is copied, so no key,
token or cookie can leak); incoming headers lose hop-by-hop fields and cookies. Streamed
answers are relayed chunk by chunk as they arrive. No redirect is ever followed.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import orjson
from multidict import CIMultiDict

from gateway.config import UpstreamSettings
from gateway.errors import ProblemError
from gateway.http_client import Http1Pool, Response, UpstreamProtocolError
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
#: characters a path segment carries as they are (RFC 3986 unreserved)
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")
#: never relayed to public clients, whatever the upstream says
DROPPED_RESPONSE_HEADERS = (
    frozenset({"set-cookie", "content-length", "server", "date", "x-request-id"}) | HOP_BY_HOP
)


def relayable_headers(headers: CIMultiDict[str]) -> CIMultiDict[str]:
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
        pool: Http1Pool,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self.metrics = metrics if metrics is not None else Metrics()
        timeouts = settings.timeouts
        self._read_timeout = timeouts.read
        self._idle_timeout = timeouts.stream_idle
        self._max_bytes = settings.max_response_bytes

    @staticmethod
    def new_pool(settings: UpstreamSettings) -> Http1Pool:
        return Http1Pool(
            settings.url,
            max_connections=settings.max_connections,
            connect_timeout=settings.timeouts.connect,
        )

    @property
    def pool(self) -> Http1Pool:
        return self._pool

    @staticmethod
    def _target(template: str, conversation_id: str) -> str:
        if _UNRESERVED.fullmatch(conversation_id) is None:  # ours are UUIDs: no quoting
            conversation_id = quote(conversation_id, safe="")
        return template.format(conversation_id=conversation_id)

    def _observed(self, operation: str) -> Observed:
        return Observed(self.metrics, operation)

    async def get_messages(self, ctx: ForwardContext) -> BufferedAnswer:
        target = self._target(self._settings.messages_path, ctx.conversation_id)
        headers = ctx.headers()
        headers["Accept"] = "application/json"
        with self._observed("get_messages") as exchange:
            async with asyncio.timeout(self._read_timeout):  # headers and body alike
                with await self._pool.request("GET", target, headers) as resp:
                    exchange.status = resp.status
                    return await self._buffer(resp, None)

    async def send_message(self, ctx: ForwardContext, payload: Mapping[str, Any]) -> Response:
        """The upstream's response with headers read and the body not yet consumed.

        The caller relays the body (:meth:`buffer` or :meth:`chunks`) inside
        ``with response:``; leaving the block before the body is complete (on error, or
        because the client went away) closes the connection, which cancels the upstream.
        A buffered answer must be complete within the read timeout, headers and body
        alike; a streamed one must send its headers within it, then never fall silent
        for longer than the stream idle timeout.
        """
        target = self._target(self._settings.send_path, ctx.conversation_id)
        stream = bool(payload.get("stream"))
        headers = ctx.headers()
        headers["Content-Type"] = "application/json"
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        deadline = asyncio.get_running_loop().time() + self._read_timeout
        with self._observed("send_message") as exchange:
            resp = await self._pool.request(
                "POST", target, headers, orjson.dumps(payload), deadline=deadline
            )
            exchange.status = resp.status
        # a buffered answer must be complete by then, even one to a request for a stream
        # that came back as plain JSON; a stream is bounded by its idle timeout instead
        resp.deadline = deadline
        return resp

    async def forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> Response:
        """Any request to ``path`` (percent-encoded, with its query, sent as is): the
        response with headers read, to be relayed with :meth:`chunks` inside
        ``with response:``, like :meth:`send_message`'s streamed answers."""
        deadline = asyncio.get_running_loop().time() + self._read_timeout
        with self._observed("forward") as exchange:
            resp = await self._pool.request(method, path, headers, body, deadline=deadline)
            exchange.status = resp.status
        return resp

    async def _buffer(self, resp: Response, deadline: float | None) -> BufferedAnswer:
        """The whole body (at most ``max_response_bytes``), by ``deadline`` if set."""
        limit = self._max_bytes
        length = resp.content_length
        if length is not None and length > limit:
            raise ProblemError("upstream_error", "the upstream answer is too large")
        parts: list[bytes] = []
        size = 0
        while True:
            if resp.ready() or deadline is None:
                chunk = await resp.read_any()
            else:
                async with asyncio.timeout_at(deadline):
                    chunk = await resp.read_any()
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise ProblemError("upstream_error", "the upstream answer is too large")
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        return BufferedAnswer(resp.status, relayable_headers(resp.headers), body)

    async def buffer(self, resp: Response) -> BufferedAnswer:
        """A :meth:`send_message` answer's whole body, within its deadline."""
        try:
            with upstream_errors():
                return await self._buffer(resp, resp.deadline)
        except ProblemError as err:
            self.metrics.upstream_error("send_message", error_reason(err.code))
            raise

    async def chunks(self, resp: Response) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive, each within the stream idle timeout. Only
        reading is mapped to upstream problems: a failure writing to the client is the
        client's, not the upstream's."""
        idle = self._idle_timeout
        while True:
            with upstream_errors():
                if resp.ready():
                    chunk = await resp.read_any()
                else:
                    async with asyncio.timeout(idle):
                        chunk = await resp.read_any()
            if not chunk:
                return
            yield chunk

    async def probe(self) -> None:
        """Readiness: GET ``health_path`` (2xx/3xx is up) or, unset, a TCP connect."""
        if self._settings.health_path:
            with await self._pool.request("GET", self._settings.health_path, {}) as resp:
                if resp.status >= 400:
                    raise CheckFailed(f"status_{resp.status}")
                while await resp.read_any():  # read to the end: the connection is reused
                    pass
            return
        origin = self._pool.origin
        _reader, writer = await asyncio.open_connection(origin.host, origin.port)
        writer.close()
        await writer.wait_closed()


def as_problem(exc: BaseException) -> ProblemError | None:
    """The problem an upstream failure is: connection failures 502
    ``upstream_unavailable``, timeouts 504; ``None`` for anything else (a bug)."""
    if isinstance(exc, ProblemError):
        return exc
    if isinstance(exc, TimeoutError):
        return ProblemError("upstream_timeout", "the upstream did not answer in time")
    if isinstance(exc, OSError):  # refused, reset, closed early, DNS, TLS
        return ProblemError("upstream_unavailable", "the upstream cannot be reached")
    if isinstance(exc, UpstreamProtocolError):
        return ProblemError("upstream_unavailable", f"upstream failure: {type(exc).__name__}")
    return None


class UpstreamErrors:
    """``with upstream_errors():`` raises upstream failures as their problem
    (:func:`as_problem`). A class, not a generator: it wraps every chunk of a stream."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        problem = as_problem(exc)
        if problem is not None and problem is not exc:
            raise problem from exc


_UPSTREAM_ERRORS = UpstreamErrors()


def upstream_errors() -> UpstreamErrors:
    return _UPSTREAM_ERRORS


class Observed:
    """One upstream exchange: timed, its failure raised as its problem and counted. The
    caller sets :attr:`status` once the response's headers are in."""

    __slots__ = ("_metrics", "_operation", "_started", "status")

    def __init__(self, metrics: Metrics, operation: str) -> None:
        self._metrics = metrics
        self._operation = operation
        self._started = time.perf_counter()
        self.status: int | None = None

    def __enter__(self) -> Observed:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cancelled = isinstance(exc, asyncio.CancelledError)
        self._metrics.observe_upstream(
            self._operation, self.status, time.perf_counter() - self._started, cancelled=cancelled
        )
        if exc is None or cancelled:
            return
        problem = as_problem(exc)
        if problem is None:
            return  # not an upstream failure: propagates as it is
        self._metrics.upstream_error(self._operation, error_reason(problem.code))
        if problem is not exc:
            raise problem from exc
