"""`gateway serve` as a process, SIGTERM with answers that outlive the grace: a stream
that would never end and a request whose upstream never answers.

The process must be gone within drain + grace + a margin: the stream ends with a final
``shutting_down`` event asking the client to retry, the slow request is cancelled with its
upstream call, and nothing waits a second grace (aiohttp's own shutdown did: about
drain + 2 x grace).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.web.relay import SHUTDOWN_RETRY_SECONDS
from tests.support.harness import SIGNING_ENV
from tests.support.processes import BIN, free_port, running
from tests.support.raw_upstream import RawConn, RawRequest, ThreadedRawServer
from tests.support.readers import Reader
from tests.support.stack import SEND, Stack, write_config

pytestmark = pytest.mark.slow  # gateway processes

DRAIN = 0.5
#: long enough that aiohttp's second wait (another GRACE) lands well past the bound
GRACE = 3.0
#: a correctness bound, not a benchmark: generous for a loaded 2-core machine, yet below
#: the GRACE the old shutdown waited a second time
MARGIN = 1.5
EVENT_INTERVAL = 0.1


class Upstream:
    """A scripted upstream: streamed answers send an event every ``EVENT_INTERVAL`` until
    the gateway closes the connection; other answers never come. It notes when the
    gateway closed each connection (its upstream call cancelled)."""

    def __init__(self) -> None:
        self.server = ThreadedRawServer(self.answer)
        self.closed: dict[str, float] = {}  # "stream" / "plain": when the gateway hung up
        self.events_sent = 0

    async def answer(self, request: RawRequest, conn: RawConn) -> None:
        kind = "stream" if request.wants_stream else "plain"
        eof = asyncio.ensure_future(conn.reader.read(1))  # b"": the gateway hung up
        try:
            if kind == "stream":
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    f"X-Request-Id: {request.request_id}\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n"
                )
                conn.writer.write(head.encode())
                while not eof.done():
                    event = b'data: {"delta": "w%d"}\n\n' % self.events_sent
                    conn.writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.events_sent += 1
                    await asyncio.wait({eof}, timeout=EVENT_INTERVAL)
            await eof
        finally:
            self.closed[kind] = time.monotonic()
            conn.writer.close()


def events(body: str) -> list[dict[str, str]]:
    """The SSE events of ``body``: their fields by name."""
    parsed = []
    for block in body.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name] = value
        if fields:
            parsed.append(fields)
    return parsed


@contextmanager
def gateway(tmp_path: Path, upstream: Upstream) -> Iterator[Stack]:
    public_port, admin_port = free_port(), free_port()
    config = write_config(
        tmp_path,
        server={
            "port": public_port,
            "drain_seconds": DRAIN,
            "shutdown_grace_seconds": GRACE,
        },
        admin={"enabled": True, "port": admin_port},
        upstream={"url": upstream.server.url},
    )
    admin = f"http://127.0.0.1:{admin_port}"
    with running(
        [str(BIN / "gateway"), "serve", "--config", str(config)],
        admin + "/healthz",
        env=SIGNING_ENV,
    ) as proc:
        yield Stack(proc, None, config, f"http://127.0.0.1:{public_port}", admin)


def test_sigterm_ends_a_stream_with_a_retry_event_and_cancels_a_slow_request(
    tmp_path: Path,
) -> None:
    upstream = Upstream()
    try:
        with gateway(tmp_path, upstream) as gw:
            key, stream_token = gw.token()
            _key, plain_token = gw.token(key)
            streamed = Reader(gw.public, stream_token, stream=True)
            plain = Reader(gw.public, plain_token, stream=False)
            streamed.start()
            plain.start()
            assert streamed.started.wait(10), "no event arrived"
            deadline = time.monotonic() + 10
            while len(upstream.server.raw.requests) < 2:
                assert time.monotonic() < deadline, "the slow request never reached upstream"
                time.sleep(0.02)
            signalled = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            bound = DRAIN + GRACE + MARGIN
            try:
                exit_code = gw.proc.wait(timeout=bound)
            except Exception:
                exit_code = None
            exited_after = time.monotonic() - signalled
            if exit_code is None:  # the old behaviour: let it finish, for the report
                exit_code = gw.proc.wait(timeout=3 * GRACE)
                exited_after = time.monotonic() - signalled
            streamed.join(5)
            plain.join(5)
            log = gw.log()
    finally:
        upstream.server.close()

    report = f"exited after {exited_after:.2f} s (bound {bound:.2f} s)\n{log[-3000:]}"
    assert exit_code == 0, report
    assert exited_after < bound, report

    # the stream ran through the grace, then got the final event and ended in time
    assert streamed.error is None, streamed.error
    ended = events(streamed.body)
    assert len(ended) > (DRAIN + GRACE) / EVENT_INTERVAL / 2, "the stream stopped early"
    final = ended[-1]
    assert final["event"] == "error", ended[-3:]
    assert final["retry"] == str(SHUTDOWN_RETRY_SECONDS * 1000)
    data = json.loads(final["data"])
    assert data["code"] == "shutting_down"
    assert data["retry_after"] == SHUTDOWN_RETRY_SECONDS
    assert all("event" not in e for e in ended[:-1]), "only the last event is the gateway's"
    stream_ended = streamed.ended_at - signalled
    assert DRAIN + GRACE - 0.2 < stream_ended < bound, f"stream ended at {stream_ended:.2f} s"

    # the slow request was cancelled at the end of the grace, its upstream call with it
    assert plain.body == "" and plain.error is not None, (plain.body, plain.error)
    assert DRAIN + GRACE - 0.2 < plain.ended_at - signalled < bound
    assert DRAIN + GRACE - 0.2 < upstream.closed["plain"] - signalled < bound
    assert upstream.closed["stream"] - signalled < bound

    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    over = [e for e in lines if e["event"] == "shutdown_grace_over"]
    assert over and over[0]["streams_ended"] == 1 and over[0]["requests_cancelled"] == 1
    statuses = sorted(e["status"] for e in lines if e["event"] == "request" and e["route"] == SEND)
    assert statuses == [200, 499], statuses
    assert lines[-1]["event"] == "stopped"
