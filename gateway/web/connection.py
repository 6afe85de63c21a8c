"""One client connection: aiohttp's ``RequestHandler`` with deadlines, caps and answers.

aiohttp reads requests off a connection and hands them to the application; it has a
keep-alive timeout but no deadline for a request's head or body, and it answers what its
parser refuses in ``text/plain`` quoting the request. :class:`GuardedConnection` adds,
per connection and without a timer per request:

* the connection is counted against the listener's caps when it opens (a refused one is
  answered and closed before any byte is read);
* a request's head (request line and header fields) must arrive within
  ``header_timeout`` of the connection's start (first request) or of its first byte
  (later requests), and be at most ``max_header_bytes``; a head still incomplete then is
  answered 408 (or 431), a connection that never sent a byte is closed quietly;
* a request's body must arrive within ``body_timeout`` of its head; the handler reading
  it gets a 408 problem, a body nobody reads any more ends the connection;
* a client that takes none of its answer for ``send_timeout`` while more is waiting to
  be sent (the transport paused writing) is disconnected, which cancels its handler;
* a body the parser finds malformed (a bad chunk size after the head was accepted)
  fails the request reading it with a 400 problem instead of leaving it waiting;
* what the parser refuses is answered as a problem, HTTP/1.1, ``Connection: close``,
  with an ``X-Request-Id`` and one access line (see :mod:`gateway.web.early_answers`).
* while the application's shedding is saturated, a whole request arriving on an idle
  connection is answered ``503 overloaded`` here, before aiohttp builds a request (see
  :mod:`gateway.web.early_shed`); the requests handed to the application are counted
  until they reach its shedding, which is how it knows it is saturated.

A connection is in one reading phase at a time: ``IDLE`` (between requests), ``HEAD``
(part of a request head has arrived) or ``BODY`` (a head has, its body has not yet); a
stalled answer is tracked beside it. One timer per connection serves every deadline: a
deadline moved later needs no new timer, the timer finds the new deadline when it fires
and waits again.

This class relies on aiohttp's ``RequestHandler`` internals (its message queue, waiter
and close flags), which is why aiohttp's version is pinned; tests/web/test_listener.py
exercises each of them on real sockets.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import ERROR, RequestHandler, _ErrInfo

from gateway.errors import ProblemError
from gateway.web.early_answers import SERVER, parse_refusal
from gateway.web.middlewares import new_request_id
from gateway.web.responses import NOSNIFF, problem_response

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from gateway.web.early_shed import EarlyShed
    from gateway.web.listener import Listener

IDLE, HEAD, BODY = 0, 1, 2
CLOSE = {"Connection": "close"}
#: the request a parser refusal is answered through: aiohttp's placeholder, in HTTP/1.1
_REFUSED = ERROR._replace(version=HttpVersion11, should_close=True)


class GuardedConnection(RequestHandler):
    __slots__ = (
        "_body",
        "_client",
        "_counted",
        "_deadline",
        "_handed",
        "_head_bytes",
        "_head_started",
        "_listener",
        "_max_header_bytes",
        "_phase",
        "_stalled_at",
        "_timer",
        "_timer_at",
    )

    def __init__(self, manager: web.Server, *, listener: Listener, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._listener = listener
        self._max_header_bytes = listener.max_header_bytes
        self._client: str | None = None
        self._counted = False
        self._phase = IDLE
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._head_started = 0.0
        self._head_bytes = 0
        self._body: StreamReader | None = None
        self._stalled_at = 0.0
        #: requests handed to the application that have not reached its shedding yet
        self._handed = 0

    # -- opening and closing ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        admitted, client = self._listener.admit(transport)
        if not admitted:  # answered and closed by the listener; nothing is read
            self._force_close = True
            return
        self._counted, self._client = True, client
        super().connection_made(transport)
        now = self._loop.time()
        self._phase, self._head_started, self._head_bytes = HEAD, now, 0
        self._expect(now + self._listener.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._handed:  # they will never ask for a place
            early = self._listener.early_shed
            if early is not None:
                early.pending_done(self._handed)
            self._handed = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase, self._body = IDLE, None
        if self._counted:
            self._counted = False
            self._listener.release(self._client)
        super().connection_lost(exc)

    def _process_keepalive(self) -> None:
        transport = self.transport
        super()._process_keepalive()
        if transport is not None and self.transport is None:
            self._listener.timed_out("keep_alive")

    # -- reading ---------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close:
            return
        phase = self._phase
        count = self._request_count
        early, waiter = self._listener.early_shed, self._waiter
        if early is not None and waiter is not None and early.saturated() and not waiter.done():
            if self._shed_early(early, data, waiter):
                return
        else:
            RequestHandler.data_received(self, data)
        if self._request_count != count:
            if early is not None:
                self._hand_over(early, self._request_count - count)
            message, payload = self._messages[-1]
            if (
                type(message) is not _ErrInfo
                and payload.is_eof()
                and self._head_bytes + len(data) <= self._max_header_bytes
            ):  # the usual case: whole requests, nothing left to wait for
                self._phase, self._body = IDLE, None
                return
            self._after_messages(phase, self._request_count - count, len(data))
        elif not data:  # aiohttp parsing what it had kept while paused
            return
        elif phase == BODY:
            body = self._body
            if body is None or body.is_eof():
                self._phase, self._body = IDLE, None
            elif body.exception() is not None:  # the parser could not decode it
                self._end_body()
        else:  # part of a request head
            if phase == IDLE:
                self._phase = HEAD
                self._head_started = self._loop.time()
                self._head_bytes = 0
            self._head_bytes += len(data)
            if self._head_bytes > self._max_header_bytes:
                self._refuse_head(self._head_too_large())
            else:
                self._expect(self._head_started + self._listener.header_timeout)

    def _hand_over(self, early: EarlyShed, new: int) -> None:
        """``new`` messages were queued: the requests among them are on their way to the
        application's shedding (counted until they reach it, see :meth:`arrived`)."""
        messages = self._messages
        handed = (
            sum(
                1
                for index in range(len(messages) - new, len(messages))
                if isinstance(messages[index][0], RawRequestMessage)
            )
            if new > 1
            else int(isinstance(messages[-1][0], RawRequestMessage))
        )
        if handed:
            self._handed += handed
            early.pending_add(handed)

    def arrived(self) -> None:
        """A request of this connection reached the application's shedding."""
        if self._handed:
            self._handed -= 1
            early = self._listener.early_shed
            if early is not None:
                early.pending_done(1)

    def _shed_early(self, early: EarlyShed, data: bytes, waiter: asyncio.Future[None]) -> bool:
        """Parse ``data`` while the connection is idle and the application sheds all it
        gets; answer a whole request here (see :mod:`gateway.web.early_shed`). False
        when there is none to answer so, and the connection goes on as usual."""
        count = self._request_count
        self._waiter = None  # aiohttp would wake the request loop with it: not yet
        try:
            RequestHandler.data_received(self, data)
        finally:
            self._waiter = waiter
        messages = self._messages
        if self._request_count == count + 1 and len(messages) == 1:
            message, payload = messages[0]
            if (
                isinstance(message, RawRequestMessage)
                and payload.is_eof()
                and self._head_bytes + len(data) <= self._max_header_bytes
                and message.method != "HEAD"
                and not message.upgrade
                and "Origin" not in message.headers
            ):
                messages.pop()
                if self._parser is not None:
                    self._parser.message_consumed()
                self._phase, self._body = IDLE, None
                answer, keep_alive = early.answer(
                    message.method, message.path, message.should_close
                )
                if self.transport is not None:
                    self.transport.write(answer)
                if not keep_alive:
                    self.force_close()
                    return True
                loop = self._loop
                self._next_keepalive_close_time = loop.time() + self._keepalive_timeout
                if self._keepalive_handle is None:
                    self._keepalive_handle = loop.call_at(
                        self._next_keepalive_close_time, self._process_keepalive
                    )
                return True
        if messages and not waiter.done():
            waiter.set_result(None)
        return False

    def _after_messages(self, phase: int, new: int, received: int) -> None:
        """``new`` messages were queued by the chunk just parsed, and the last one is
        not simply a whole request."""
        messages = self._messages
        message, payload = messages[-1]
        if isinstance(message, _ErrInfo):
            if phase == BODY and self._body is not None and not self._body.is_eof():
                # the body of a request already handed over is malformed: that request
                # gets the 400 when it reads its body
                messages.pop()
                refusal = parse_refusal(message.exc)
                self._fail_body(ProblemError("invalid_request", refusal.detail, CLOSE))
                return
            if phase == IDLE:  # the refused head came whole: it started just now
                self._head_started = self._loop.time()
            self._phase, self._body = IDLE, None
            self._close = True  # the stream cannot be trusted past a refusal
            return
        if self._head_bytes + received > self._max_header_bytes:
            self._check_head_sizes(new)  # a large chunk may hold a large head
            if self._close:
                return
        self._head_bytes = 0
        if payload.is_eof():
            self._phase, self._body = IDLE, None
        elif payload.exception() is not None:
            self._body = payload
            self._end_body()
        else:
            self._phase, self._body = BODY, payload
            self._expect(self._loop.time() + self._listener.body_timeout)

    def _check_head_sizes(self, new: int) -> None:
        limit = self._listener.max_header_bytes
        messages = self._messages
        for index in range(len(messages) - new, len(messages)):
            message = messages[index][0]
            if isinstance(message, _ErrInfo):
                continue
            size = len(message.method) + len(message.path) + 12  # "M P HTTP/1.1\r\n"
            size += sum(len(name) + len(value) + 4 for name, value in message.raw_headers)
            if size > limit:
                messages[index] = (_ErrInfo(431, self._head_too_large(), ""), EMPTY_PAYLOAD)
                self._phase, self._body = IDLE, None
                self._close = True
                return

    def _head_too_large(self) -> ProblemError:
        limit = self._listener.max_header_bytes
        return ProblemError(
            "header_fields_too_large", f"the request head is larger than {limit} bytes", CLOSE
        )

    def _refuse_head(self, err: ProblemError) -> None:
        """Answer ``err`` once the connection is free (after any request being handled);
        read nothing more."""
        self._phase, self._body = IDLE, None
        self._close = True
        self._messages.append((_ErrInfo(err.status, err, err.detail), EMPTY_PAYLOAD))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail_body(self, err: ProblemError) -> None:
        """The request reading this body gets ``err``; the connection ends after it."""
        body = self._body
        if body is not None:
            body.set_exception(err)
        self._end_body()

    def _end_body(self) -> None:
        """The body will not complete: readers see its exception (nothing is left to
        read past it, so aiohttp does not linger over it) and the connection ends."""
        body = self._body
        self._phase, self._body = IDLE, None
        self._close = True
        if body is not None and not body.is_eof():
            body.feed_eof()

    # -- deadlines -------------------------------------------------------------------------
    def _expect(self, when: float) -> None:
        """The current phase (head or body) must be over by ``when``."""
        self._deadline = when
        self._arm(when)

    def _arm(self, when: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return  # it fires first and waits again
            timer.cancel()
        self._timer = self._loop.call_at(when, self._on_deadline)
        self._timer_at = when

    def pause_writing(self) -> None:
        """The client reads the answer slower than it is written: it has
        ``send_timeout`` to take some of it."""
        super().pause_writing()
        self._stalled_at = now = self._loop.time()
        self._arm(now + self._listener.send_timeout)

    def resume_writing(self) -> None:
        self._stalled_at = 0.0
        super().resume_writing()

    def _on_deadline(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        now = self._loop.time()
        listener = self._listener
        stalled = self._stalled_at
        if stalled and now >= stalled + listener.send_timeout:
            listener.timed_out("response")
            transport = self.transport
            self.force_close()
            # close() would wait for the unread answer to leave: drop it, so the connection
            # ends now and its handler (and upstream call) is cancelled
            transport.abort()
            return
        if self._phase != IDLE and now >= self._deadline:
            self._expired(self._phase)
        due = [self._deadline] if self._phase != IDLE else []
        if self._stalled_at:
            due.append(self._stalled_at + listener.send_timeout)
        if due and self.transport is not None:
            self._arm(min(due))

    def _expired(self, phase: int) -> None:
        listener = self._listener
        if phase == HEAD:
            listener.timed_out("request_head")
            if self._head_bytes == 0 and self._waiter is not None:
                self._phase = IDLE
                self.force_close()  # not a byte of a request: nothing to answer
                return
            timeout = listener.header_timeout
            self._refuse_head(
                ProblemError(
                    "request_timeout",
                    f"the request line and headers did not arrive within {timeout:g} seconds",
                    CLOSE,
                )
            )
            return
        listener.timed_out("request_body")
        body = self._body
        if self._request_in_progress or any(queued is body for _, queued in self._messages):
            timeout = listener.body_timeout
            self._fail_body(
                ProblemError(
                    "request_timeout",
                    f"the request body did not arrive within {timeout:g} seconds",
                    CLOSE,
                )
            )
        else:  # already answered: the rest of its body is not worth waiting for
            self._phase, self._body = IDLE, None
            self.force_close()

    # -- answers ---------------------------------------------------------------------------
    def _make_error_handler(
        self, err_info: _ErrInfo
    ) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        async def refuse(request: web.BaseRequest) -> web.StreamResponse:
            return await self._answer_refusal(request, err_info.exc)

        return refuse

    async def _answer_refusal(
        self, request: web.BaseRequest, exc: BaseException
    ) -> web.StreamResponse:
        """A request the parser (or a deadline, or a size limit) refused: a problem in
        HTTP/1.1, never the request's bytes, never a stack trace; one access line."""
        err = exc if isinstance(exc, ProblemError) else parse_refusal(exc)
        request_id = new_request_id()
        response = problem_response(err, {"Server": SERVER, "X-Request-Id": request_id, **NOSNIFF})
        response.force_close()
        # aiohttp builds the refused request as HTTP/1.0: answer through an HTTP/1.1 one
        reply_to = web.BaseRequest(
            _REFUSED, request.content, self, request.writer, request.task, self._loop
        )
        try:
            await response.prepare(reply_to)
            await response.write_eof()
        finally:
            seconds = max(0.0, self._loop.time() - self._head_started)
            self._listener.answered(request_id, err, seconds, self._peer_address())
        return response

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """What escaped the application (its middleware answers everything else): the
        same problem body as every other error. An exception is a bug and is logged as
        one, unless it is the client going away."""
        if exc is not None and not isinstance(exc, ConnectionError):
            self.log_exception("Error handling request", exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started: the connection is cut")
        code = "upstream_timeout" if status == 504 else "internal_error"
        err = ProblemError(code, "the request could not be completed")
        response = problem_response(err, NOSNIFF)
        response.force_close()
        return response

    def _peer_address(self) -> str | None:
        peer = self.peername
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
        return None
