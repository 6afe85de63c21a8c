"""What a misbehaving upstream does, one case per misbehaviour, and what the gateway's
clients may get for each.

Every answer a case writes names the request it was written for (the conversation id and
the ``X-Request-Id`` it read), so that an answer that reaches another client is seen for
what it is. A stray or duplicate answer is a copy of the one it follows: a buggy upstream
repeats, it does not forge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field

from tests.support.raw_upstream import Answer, RawConn, RawRequest

#: what a client can get: its own answer, its own stream cut by an error event, an empty
#: 204/304, an upstream problem, or its own stream cut short (a truncated response)
OWN, OWN_ERROR, EMPTY, P502, P504, TRUNCATED = (
    "own",
    "own+error",
    "empty",
    "502",
    "504",
    "truncated",
)
ANY_FAILURE = frozenset({P502, P504})


def named(request: RawRequest) -> dict[str, str | None]:
    return {"conversation_id": request.conversation_id, "request_id": request.request_id}


def json_body(request: RawRequest) -> bytes:
    return json.dumps({**named(request), "messages": [], "answer": "hello"}).encode()


def sse_event(request: RawRequest, delta: str, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps({**named(request), 'delta': delta})}\n\n".encode()


def sse_body(request: RawRequest) -> bytes:
    return sse_event(request, "hel") + sse_event(request, "lo") + sse_event(request, "", "done")


def head(
    request: RawRequest,
    status: str = "200 OK",
    *,
    echo: bool = True,
    content_type: str | None = None,
    extra: str = "",
) -> bytes:
    if content_type is None:
        content_type = "text/event-stream" if request.wants_stream else "application/json"
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}"]
    if echo and request.request_id:
        lines.append(f"X-Request-Id: {request.request_id}")
    return ("\r\n".join(lines) + "\r\n" + extra).encode()


def good(request: RawRequest, *, echo: bool = True, chunked: bool = False) -> bytes:
    """A well-framed answer naming ``request``."""
    body = sse_body(request) if request.wants_stream else json_body(request)
    if chunked:
        return head(
            request, echo=echo, extra="Transfer-Encoding: chunked\r\n\r\n"
        ) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return head(request, echo=echo, extra=f"Content-Length: {len(body)}\r\n\r\n") + body


async def drain_quietly(conn: RawConn, data: bytes) -> None:
    with contextlib.suppress(ConnectionError):
        await conn.write(data)


async def endless(conn: RawConn, start: bytes, unit: bytes, pause: float = 0.0) -> None:
    """``start``, then ``unit`` until the client hangs up."""
    with contextlib.suppress(ConnectionError):
        await conn.write(start)
        while True:
            await conn.write(unit)
            if pause:
                await asyncio.sleep(pause)
    conn.writer.close()


# -- the cases ------------------------------------------------------------------------------
def well_behaved(request: RawRequest, conn: RawConn) -> None:
    conn.writer.write(good(request))


def well_behaved_chunked(request: RawRequest, conn: RawConn) -> None:
    conn.writer.write(good(request, chunked=True))


def not_echoing(request: RawRequest, conn: RawConn) -> None:
    conn.writer.write(good(request, echo=False))


def stray_same_read(request: RawRequest, conn: RawConn) -> None:
    conn.writer.write(good(request) * 2)


def stray_later(delay: float, *, echo: bool = True) -> Answer:
    """The answer, then the same again ``delay`` later, while the upstream goes on reading
    and answering the next requests on the connection."""

    def answer(request: RawRequest, conn: RawConn) -> None:
        data = good(request, echo=echo)
        conn.writer.write(data)
        asyncio.get_running_loop().call_later(delay, _write_if_open, conn, data)

    return answer


def _write_if_open(conn: RawConn, data: bytes) -> None:
    if not conn.writer.is_closing():
        conn.writer.write(data)


async def stray_before_the_next_request(request: RawRequest, conn: RawConn) -> None:
    """The answer, and 5 ms later the same again, before the next request is read."""
    data = good(request)
    await drain_quietly(conn, data)
    await asyncio.sleep(0.005)
    await drain_quietly(conn, data)


def bytes_past_content_length(request: RawRequest, conn: RawConn) -> None:
    conn.writer.write(good(request) + b'{"spill": "' + json_body(request) + b'"}')


def bodiless_with_body(status: str) -> Answer:
    """A bodiless status that declares a length, and a body: an answer naming the same
    request (what the parser would take for the next message)."""

    def answer(request: RawRequest, conn: RawConn) -> None:
        body = good(request)
        conn.writer.write(
            head(request, status, extra=f"Content-Length: {len(body)}\r\n\r\n") + body
        )

    return answer


def informational_with_body(request: RawRequest, conn: RawConn) -> None:
    body = good(request)
    conn.writer.write(
        f"HTTP/1.1 100 Continue\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
        + good(request)
    )


async def early_answer(request: RawRequest, conn: RawConn) -> None:
    """Answers from the head alone, then reads the body (the server reads no bodies)."""
    await drain_quietly(conn, good(request))
    length = int(request.headers.get("content-length", "0") or 0)
    if length:
        await conn.reader.readexactly(length)


def giant_header(size: int) -> Answer:
    async def answer(request: RawRequest, conn: RawConn) -> None:
        await endless_bounded(conn, head(request) + b"X-Big: ", b"a" * 65536, size)
        await drain_quietly(conn, b"\r\nContent-Length: 2\r\n\r\n{}")

    return answer


def many_headers(count: int) -> Answer:
    async def answer(request: RawRequest, conn: RawConn) -> None:
        block = b"".join(b"X-H%d: v\r\n" % i for i in range(1000))
        await endless_bounded(conn, head(request), block, len(block) * (count // 1000))
        await drain_quietly(conn, b"Content-Length: 2\r\n\r\n{}")

    return answer


async def endless_bounded(conn: RawConn, start: bytes, unit: bytes, total: int) -> None:
    with contextlib.suppress(ConnectionError):
        await conn.write(start)
        sent = 0
        while sent < total:
            await conn.write(unit)
            sent += len(unit)


async def endless_headers(request: RawRequest, conn: RawConn) -> None:
    await endless(conn, head(request), b"X-More: yes\r\n" * 256)


async def endless_header_value(request: RawRequest, conn: RawConn) -> None:
    await endless(conn, head(request) + b"X-Endless: ", b"v" * 4096)


def framed(extra: str, body: bytes = b"5\r\nhello\r\n0\r\n\r\n") -> Answer:
    def answer(request: RawRequest, conn: RawConn) -> None:
        conn.writer.write(head(request, extra=extra + "\r\n") + body)

    return answer


def raw_bytes(data: bytes, *, close: bool = True) -> Answer:
    def answer(_request: RawRequest, conn: RawConn) -> None:
        conn.writer.write(data)
        if close:
            conn.writer.close()

    return answer


def http09(request: RawRequest, conn: RawConn) -> None:
    conn.writer.write(json_body(request))
    conn.writer.close()


async def informational_flood(_request: RawRequest, conn: RawConn) -> None:
    await endless(conn, b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 64)


async def header_drip(request: RawRequest, conn: RawConn) -> None:
    await endless(conn, b"HTTP/1.1 200 OK\r\n", b"X", pause=0.05)


async def body_drip(request: RawRequest, conn: RawConn) -> None:
    body = json_body(request) * 50
    start = head(
        request, content_type="application/json", extra=f"Content-Length: {len(body)}\r\n\r\n"
    )
    with contextlib.suppress(ConnectionError):
        await conn.write(start)
        for i in range(len(body)):
            await conn.write(body[i : i + 1])
            await asyncio.sleep(0.05)


async def stream_forever(request: RawRequest, conn: RawConn) -> None:
    """Streams get an event every 0.2 s, forever; other requests a normal answer."""
    if not request.wants_stream:
        conn.writer.write(good(request))
        return
    with contextlib.suppress(ConnectionError):
        await conn.write(head(request, extra="Transfer-Encoding: chunked\r\n\r\n"))
        n = 0
        while True:
            event = sse_event(request, str(n))
            await conn.write(b"%x\r\n%s\r\n" % (len(event), event))
            n += 1
            await asyncio.sleep(0.2)


def cut_mid_body(*, reset: bool) -> Answer:
    """A head that promises more, one whole event (or half a JSON body), then the end."""

    async def answer(request: RawRequest, conn: RawConn) -> None:
        part = sse_event(request, "hel") if request.wants_stream else json_body(request)[:10]
        with contextlib.suppress(ConnectionError):
            await conn.write(head(request, extra="Content-Length: 100000\r\n\r\n") + part)
            await asyncio.sleep(0.05)
        if reset:
            conn.reset()
        else:
            conn.writer.close()

    return answer


def close_without_answer(_request: RawRequest, conn: RawConn) -> None:
    conn.writer.close()


def closes_pooled_connection(request: RawRequest, conn: RawConn) -> None:
    """Answers a connection's first request, closes it unanswered on the second: what a
    request meets on a connection the upstream closed as it went idle."""
    if conn.exchanges == 1:
        conn.writer.write(good(request))
    else:
        conn.writer.close()


async def endless_trailers(request: RawRequest, conn: RawConn) -> None:
    body = sse_body(request) if request.wants_stream else json_body(request)
    start = head(request, extra="Transfer-Encoding: chunked\r\n\r\n")
    await endless(conn, start + b"%x\r\n%s\r\n0\r\nX-Trailer: " % (len(body), body), b"t" * 4096)


def large_valid_head(request: RawRequest, conn: RawConn) -> None:
    fields = "".join(f"X-Pad-{i}: {'p' * 400}\r\n" for i in range(100))
    body = sse_body(request) if request.wants_stream else json_body(request)
    conn.writer.write(head(request, extra=fields + f"Content-Length: {len(body)}\r\n\r\n") + body)


@dataclass(frozen=True)
class Case:
    name: str
    answer: Answer
    #: outcomes a client may get
    allowed: frozenset[str]
    #: outcomes every client must get (a subset of ``allowed``); empty: any allowed mix
    required: frozenset[str] = frozenset()
    #: sequential requests per client
    rounds: int = 3
    read_bodies: bool = True
    #: outcomes allowed per request kind where they differ (get, post, stream)
    per_kind: dict[str, frozenset[str]] = field(default_factory=dict)
    #: where the aiohttp client may do otherwise, and why (what aiohttp does)
    aiohttp_per_kind: dict[str, frozenset[str]] = field(default_factory=dict)
    aiohttp_reason: str = ""

    def allowed_for(self, kind: str, client: str) -> frozenset[str]:
        if client == "aiohttp" and kind in self.aiohttp_per_kind:
            return self.aiohttp_per_kind[kind]
        return self.per_kind.get(kind, self.allowed)


def _case(
    name: str, answer: Answer, *allowed: str, required: frozenset[str] | set[str] = frozenset(),
    **kw: object,
) -> Case:  # fmt: skip
    return Case(name, answer, frozenset(allowed), frozenset(required), **kw)  # type: ignore[arg-type]


ONLY_OWN = frozenset({OWN})
#: reads and plain sends fail whole; a stream fails in flight
BUFFERED_FAIL = {"get": frozenset({P502}), "post": frozenset({P502})}
CASES: list[Case] = [
    _case("well-behaved", well_behaved, OWN, required=ONLY_OWN),
    _case("well-behaved-chunked", well_behaved_chunked, OWN, required=ONLY_OWN),
    _case("not-echoing", not_echoing, OWN, required=ONLY_OWN),
    _case("large-valid-head", large_valid_head, OWN, required=ONLY_OWN),
    _case("stray-same-read", stray_same_read, OWN, P502),
    _case("stray-1ms-late", stray_later(0.001), OWN, P502),
    _case("stray-5ms-late", stray_later(0.005), OWN, P502),
    _case("stray-50ms-late", stray_later(0.05), OWN, P502),
    _case("stray-5ms-late-not-echoing", stray_later(0.005, echo=False), OWN, P502),
    _case("stray-before-the-next-request", stray_before_the_next_request, OWN, P502),
    _case("bytes-past-content-length", bytes_past_content_length, OWN, P502),
    _case("body-on-204", bodiless_with_body("204 No Content"), EMPTY, P502),
    _case("body-on-304", bodiless_with_body("304 Not Modified"), EMPTY, P502),
    _case("body-on-100", informational_with_body, OWN, P502),
    _case("early-answer", early_answer, OWN, required=ONLY_OWN, read_bodies=False),
    _case("header-20mb", giant_header(20 * 1024 * 1024), P502, required={P502}, rounds=1),
    _case("headers-100000", many_headers(100_000), P502, required={P502}, rounds=1),
    _case("endless-headers", endless_headers, P502, required={P502}, rounds=2),
    _case("endless-header-value", endless_header_value, P502, required={P502}, rounds=2),
    # a stream whose done event came whole before the endless trailers ends clean (own)
    _case("endless-trailers", endless_trailers, P502, OWN_ERROR, TRUNCATED, rounds=1, per_kind={"stream": frozenset({OWN, OWN_ERROR, TRUNCATED, P502})}),
    _case("content-length-and-chunked", framed("Content-Length: 5\r\nTransfer-Encoding: chunked"), P502, required={P502}),
    _case("conflicting-lengths", framed("Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), P502, required={P502}),
    _case("duplicate-lengths", framed("Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), P502, required={P502}),
    _case("negative-length", framed("Content-Length: -5\r\n", b"hello"), P502, required={P502}),
    # the head is fine: a stream has begun when the body fails, and ends with an error event
    _case("chunk-size-overflow", framed("Transfer-Encoding: chunked\r\n", b"fffffffffffffffffffff\r\nab"), P502, OWN_ERROR, per_kind=BUFFERED_FAIL),
    _case("gzip-then-chunked", framed("Transfer-Encoding: gzip, chunked\r\n"), P502, required={P502}),
    _case("chunked-then-gzip", framed("Transfer-Encoding: chunked, gzip\r\n"), P502, required={P502}),
    _case("chunked-twice", framed("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), P502, required={P502}),
    _case("http-0.9", http09, P502, required={P502}),
    _case("status-2000", raw_bytes(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"), P502, required={P502}),
    _case("no-status-code", raw_bytes(b"HTTP/1.1 OK\r\n\r\n"), P502, required={P502}),
    _case("not-http", raw_bytes(b"SSH-2.0-OpenSSH_9.6\r\n"), P502, required={P502}),
    _case("switching-protocols", raw_bytes(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n", close=False), P502, required={P502}),
    _case("informational-flood", informational_flood, P502, P504, required=ANY_FAILURE, rounds=1),
    _case("header-drip", header_drip, P504, required={P504}, rounds=1),
    _case("body-drip", body_drip, P504, required={P504}, rounds=1),
    # the eight streams may take all eight pooled connections first and hold them until
    # stream_max (3 s): a read or send still waiting for one at its 2 s deadline gets a 504
    _case("stream-forever", stream_forever, OWN, OWN_ERROR, P504, rounds=1, per_kind={"stream": frozenset({OWN_ERROR}), "get": frozenset({OWN, P504}), "post": frozenset({OWN, P504})}),
    _case("close-mid-body", cut_mid_body(reset=False), P502, OWN_ERROR, TRUNCATED, rounds=1),
    _case("reset-mid-body", cut_mid_body(reset=True), P502, OWN_ERROR, TRUNCATED, rounds=1),
    _case("close-without-answer", close_without_answer, P502, required={P502}, rounds=1),
    _case(
        "dead-pooled-connection",
        closes_pooled_connection,
        OWN,
        P502,
        per_kind={"get": ONLY_OWN},
        aiohttp_per_kind={"get": frozenset({OWN, P502})},
        aiohttp_reason="aiohttp sends the GET once more on whatever connection its pool "
        "gives next, which may be another pooled one the upstream closes too",
    ),
]  # fmt: skip
CASE_IDS = [case.name for case in CASES]


def case_named(name: str) -> Case:
    return next(case for case in CASES if case.name == name)
