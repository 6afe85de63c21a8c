"""Forwarding to the upstream chat service, per the design's upstream contract.

The service builds each request (outgoing headers from scratch: nothing of the client's
request is copied, so no key, token or cookie can leak), sends it through the configured
:class:`~gateway.upstream.base.Transport`, bounds its answer in time and size, keeps only
the response headers clients may see (:mod:`gateway.upstream.response_headers`) and maps
every failure to its problem. Streamed answers are relayed chunk by chunk as they arrive,
within an idle timeout and an absolute duration. No redirect is ever followed.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import orjson
import structlog
from multidict import CIMultiDict, MultiMapping

from gateway.config import UpstreamSettings
from gateway.errors import ProblemError
from gateway.observability.health import CheckFailed
from gateway.observability.metrics import Metrics
from gateway.upstream.base import (
    RequestIdMismatch,
    RequestIdMissing,
    Transport,
    UpstreamProtocolError,
    UpstreamResponse,
)
from gateway.upstream.response_headers import ResponseHeaderPolicy

#: characters a path segment carries as they are (RFC 3986 unreserved)
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")
log = structlog.get_logger("gateway")


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
    """The upstream service the handlers use (see the module's documentation)."""

    def __init__(
        self,
        settings: UpstreamSettings,
        transport: Transport,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self.metrics = metrics
        timeouts = settings.timeouts
        self._read_timeout = timeouts.read
        self._idle_timeout = timeouts.stream_idle
        self._stream_max = timeouts.stream_max
        self._max_bytes = settings.max_response_bytes
        self._headers = ResponseHeaderPolicy(settings.relay_headers)
        #: said once per process: an upstream that does not echo costs a connection each
        self._echo_checked = settings.require_request_id_echo

    @property
    def transport(self) -> Transport:
        return self._transport

    def relayable(self, headers: MultiMapping[str]) -> CIMultiDict[str]:
        """The upstream response headers clients may see (the allow-list)."""
        return self._headers.relayable(headers)

    def _note_echo(self, resp: UpstreamResponse) -> None:
        if self._echo_checked or "X-Request-Id" in resp.headers:
            return
        self._echo_checked = True
        log.warning(
            "upstream_does_not_echo_request_id",
            detail="connections are not reused after an answer that does not echo "
            "X-Request-Id: one connection per request; make the upstream echo it",
        )

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
        deadline = asyncio.get_running_loop().time() + self._read_timeout
        with self._observed("get_messages") as exchange:
            resp = await self._transport.request(
                "GET", target, headers, deadline=deadline, request_id=ctx.request_id
            )
            with resp:  # headers and body alike within the read timeout
                exchange.status = resp.status
                self._note_echo(resp)
                return await self._buffer(resp, deadline)

    async def send_message(
        self, ctx: ForwardContext, payload: Mapping[str, Any]
    ) -> UpstreamResponse:
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
            resp = await self._transport.request(
                "POST",
                target,
                headers,
                orjson.dumps(payload),
                deadline=deadline,
                request_id=ctx.request_id,
            )
            exchange.status = resp.status
        self._note_echo(resp)
        # a buffered answer must be complete by then, even one to a request for a stream
        # that came back as plain JSON; a stream is bounded by its idle timeout instead
        resp.deadline = deadline
        return resp

    async def forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None
    ) -> UpstreamResponse:
        """Any request to ``path`` (percent-encoded, with its query, sent as is): the
        response with headers read, to be relayed with :meth:`chunks` inside
        ``with response:``, like :meth:`send_message`'s streamed answers. ``headers``
        carry the request's ``X-Request-Id``, which the answer may echo."""
        deadline = asyncio.get_running_loop().time() + self._read_timeout
        with self._observed("forward") as exchange:
            resp = await self._transport.request(
                method,
                path,
                headers,
                body,
                deadline=deadline,
                request_id=headers.get("X-Request-Id"),
            )
            exchange.status = resp.status
        return resp

    async def _buffer(self, resp: UpstreamResponse, deadline: float | None) -> BufferedAnswer:
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
        return BufferedAnswer(resp.status, self._headers.relayable(resp.headers), body)

    async def buffer(self, resp: UpstreamResponse) -> BufferedAnswer:
        """A :meth:`send_message` answer's whole body, within its deadline."""
        try:
            with upstream_errors():
                return await self._buffer(resp, resp.deadline)
        except ProblemError as err:
            self.metrics.upstream_error("send_message", error_reason(err.code))
            raise

    async def chunks(self, resp: UpstreamResponse) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive, each within the stream idle timeout, all of
        them within the stream's longest duration (``upstream_timeout`` past either).
        Only reading is mapped to upstream problems: a failure writing to the client is
        the client's, not the upstream's."""
        loop = asyncio.get_running_loop()
        idle = self._idle_timeout
        ends = loop.time() + self._stream_max
        while True:
            with upstream_errors():
                left = ends - loop.time()
                if left <= 0:
                    raise self._too_long()
                if resp.ready():
                    chunk = await resp.read_any()
                elif left > idle:
                    async with asyncio.timeout(idle):
                        chunk = await resp.read_any()
                else:  # the stream's end comes before its idle timeout
                    try:
                        async with asyncio.timeout(left):
                            chunk = await resp.read_any()
                    except TimeoutError:
                        raise self._too_long() from None
            if not chunk:
                return
            yield chunk

    def _too_long(self) -> ProblemError:
        return ProblemError(
            "upstream_timeout", f"the answer lasted longer than {self._stream_max:g} s"
        )

    async def probe(self) -> None:
        """Readiness: GET ``health_path`` (2xx/3xx is up) or, unset, a TCP connect."""
        if self._settings.health_path:
            request_id = f"probe-{random.getrandbits(64):016x}"
            resp = await self._transport.request(
                "GET",
                self._settings.health_path,
                {"X-Request-Id": request_id},
                request_id=request_id,
            )
            with resp:
                if resp.status >= 400:
                    raise CheckFailed(f"status_{resp.status}")
                while await resp.read_any():  # read to the end: the connection is reused
                    pass
            return
        origin = self._transport.origin
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
    if isinstance(exc, RequestIdMismatch | RequestIdMissing):
        return ProblemError("upstream_error", f"the upstream's answer failed a check: {exc}")
    if isinstance(exc, UpstreamProtocolError):
        return ProblemError("upstream_unavailable", f"upstream failure: {type(exc).__name__}")
    return None


def failure_reason(exc: BaseException, problem: ProblemError) -> str:
    """The metrics reason of an upstream failure: the protocol error's own, when it has
    one (``request_id_mismatch``, ...), else the problem's."""
    if isinstance(exc, UpstreamProtocolError):
        return exc.reason
    return error_reason(problem.code)


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
        self._metrics.upstream_error(self._operation, failure_reason(exc, problem))
        if problem is not exc:
            raise problem from exc
