"""The builtin transport's own ways: the exact bytes it writes, its read-ahead, its one
deadline timer, its line of callers (what every transport does: test_transport.py)."""

from __future__ import annotations

import asyncio

from gateway.upstream.http1 import READ_AHEAD, Http1Pool
from tests.support.raw_upstream import RawConn, RawRequest, raw_server, response


def new_pool(url: str, **kw: object) -> Http1Pool:
    return Http1Pool(
        url, max_connections=int(kw.pop("max_connections", 4)), connect_timeout=2.0, **kw
    )  # type: ignore[arg-type]


def ok(request: RawRequest, conn: RawConn) -> None:
    conn.writer.write(response(request_id=request.request_id))


async def read_all(pool: Http1Pool, target: str = "/x", request_id: str = "r") -> tuple[int, bytes]:
    headers = {"X-Request-Id": request_id}
    with await pool.request("GET", target, headers, request_id=request_id) as resp:
        data = b""
        while chunk := await resp.read_any():
            data += chunk
        return resp.status, data


async def test_request_bytes_are_exactly_what_was_asked() -> None:
    async with raw_server(ok) as server:
        pool = new_pool(server.url)
        headers = {"Accept": "application/json", "X-Request-Id": "r1"}
        with await pool.request("POST", "/x", headers, b'{"a": 1}', request_id="r1") as resp:
            assert resp.status == 200
        await pool.close()
    port = server.url.rsplit(":", 1)[1]
    assert server.requests[0].raw == (
        b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() + b"\r\n"
        b"Accept: application/json\r\nX-Request-Id: r1\r\nContent-Length: 8\r\n\r\n"
        b'{"a": 1}'
    )


async def test_each_request_keeps_its_own_deadline() -> None:
    """One timer serves every deadline: a later request with an earlier deadline times
    out first, the earlier one still at its own, and an answer in time is untouched."""

    async def answer(request: RawRequest, conn: RawConn) -> None:
        if request.target == "/fast":
            ok(request, conn)
        else:
            await asyncio.sleep(10)

    async with raw_server(answer) as server:
        pool = new_pool(server.url, max_connections=3)
        loop = asyncio.get_running_loop()
        slow = asyncio.create_task(pool.request("GET", "/a", {}, deadline=loop.time() + 0.3))
        await asyncio.sleep(0.01)
        quick = asyncio.create_task(pool.request("GET", "/b", {}, deadline=loop.time() + 0.05))
        fast = await pool.request("GET", "/fast", {}, deadline=loop.time() + 0.02)
        with fast:
            assert fast.status == 200
        done, _ = await asyncio.wait({slow, quick}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {quick}
        for task in (quick, slow):
            try:
                await task
            except TimeoutError:
                pass
            else:  # pragma: no cover
                raise AssertionError("no timeout")
        await pool.close()


async def test_read_ahead_is_bounded_by_pausing_the_socket() -> None:
    size = READ_AHEAD * 8

    def answer(request: RawRequest, conn: RawConn) -> None:
        conn.writer.write(response(body=b"x" * size, request_id=request.request_id))

    async with raw_server(answer) as server:
        pool = new_pool(server.url)
        with await pool.request("GET", "/x", {"X-Request-Id": "r"}, request_id="r") as resp:
            await asyncio.sleep(0.2)  # the server has written everything it could
            assert resp._size < READ_AHEAD * 2  # the rest waits in the kernel's buffers
            total = 0
            while chunk := await resp.read_any():
                total += len(chunk)
            assert total == size
        assert await read_all(pool) == (200, b"x" * size)  # resumed, then reused
        await pool.close()
    assert server.connections == 1


async def test_a_caller_cancelled_after_its_answer_came_leaves_the_connection_alone() -> None:
    """The answer is in (its connection back in the pool, perhaps already handed on), then
    the caller is cancelled before it resumes: the connection must not be closed."""
    answered = asyncio.Event()

    async def answer(request: RawRequest, conn: RawConn) -> None:
        await conn.write(response(request_id=request.request_id))
        answered.set()

    async with raw_server(answer) as server:
        pool = new_pool(server.url, max_connections=1)
        loop = asyncio.get_running_loop()
        caller = asyncio.create_task(
            pool.request("GET", "/x", {"X-Request-Id": "r"}, request_id="r")
        )
        await answered.wait()
        # queued now, this runs after the answer is read (same loop turn) and before the
        # caller resumes: what a client hanging up at that moment does
        loop.call_soon(caller.cancel)
        try:
            await caller
        except asyncio.CancelledError:
            pass
        else:  # pragma: no cover
            raise AssertionError("not cancelled")
        assert (pool.open_connections, pool.idle_connections) == (1, 1)
        assert await read_all(pool) == (200, b"{}")
        await pool.close()
    assert server.connections == 1


async def test_callers_in_line_are_served_before_newcomers() -> None:
    """A slot freed by a closed connection is kept for the first caller in line, not
    taken by a request that arrives in the same loop turn."""

    async def answer(request: RawRequest, conn: RawConn) -> None:
        if request.target == "/stream":
            await conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
            await asyncio.sleep(10)
        ok(request, conn)

    async with raw_server(answer) as server:
        pool = new_pool(server.url, max_connections=1)
        held = await pool.request("GET", "/stream", {})
        in_line = asyncio.create_task(read_all(pool))
        await asyncio.sleep(0.05)

        async def hang_up_then_ask_again() -> tuple[int, bytes]:
            held.release()  # the client went away: its connection closes, the slot frees
            return await read_all(pool)  # and a new request comes in the same loop turn

        newcomer = asyncio.create_task(hang_up_then_ask_again())
        done, _ = await asyncio.wait({in_line, newcomer}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {in_line}
        assert await newcomer == (200, b"{}")
        await pool.close()
