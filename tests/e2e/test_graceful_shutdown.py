"""`gateway serve` as a process: SIGTERM with a streamed answer in flight."""

import json
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.stack import SEND, stack

pytestmark = pytest.mark.slow  # gateway processes


class StreamReader(threading.Thread):
    """Reads one streamed answer in the background, noting when it started and ended."""

    def __init__(self, url: str, token: str, words: int) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.words = url, token, words
        self.first_chunk = threading.Event()
        self.body = ""
        self.error: Exception | None = None
        self.ended_at = 0.0

    def run(self) -> None:
        message = " ".join(f"w{i}" for i in range(self.words))
        try:
            with (
                httpx.Client(timeout=30) as client,
                client.stream(
                    "POST",
                    self.url + SEND,
                    json={"client_token": self.token, "message": message, "stream": True},
                ) as resp,
            ):
                for text in resp.iter_text():
                    self.body += text
                    self.first_chunk.set()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.first_chunk.set()


def refused(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def readiness(admin: str) -> int:
    try:
        return httpx.get(admin + "/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_sigterm_drains_finishes_the_stream_and_exits_zero(tmp_path: Path) -> None:
    with stack(tmp_path, word_delay=0.1, drain_seconds=0.5, shutdown_grace_seconds=15) as gw:
        _key, token = gw.token()
        assert readiness(gw.admin) == 200
        reader = StreamReader(gw.public, token, words=25)  # about 2.7 s of answer
        reader.start()
        assert reader.first_chunk.wait(10)
        gw.proc.send_signal(signal.SIGTERM)

        # readiness turns false at once, while the admin listener still answers
        deadline = time.monotonic() + 3
        while readiness(gw.admin) != 503:
            assert time.monotonic() < deadline, "readiness did not turn false"
            time.sleep(0.02)
        # after the drain period the public listener refuses new connections
        deadline = time.monotonic() + 5
        while not refused(gw.public):
            assert time.monotonic() < deadline, "the public listener still accepts"
            time.sleep(0.05)
        refused_at = time.monotonic()

        assert gw.proc.wait(timeout=20) == 0
        reader.join(5)

    assert reader.error is None
    assert refused_at < reader.ended_at, "the stream ended before the listener closed"
    assert "event: done" in reader.body
    assert "You said: " + " ".join(f"w{i}" for i in range(25)) in reader.body
    events = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.index("draining") < names.index("shutting_down") < names.index("stopped")
    streamed = [e for e in events if e["event"] == "request" and e["route"] == SEND]
    assert streamed[-1]["status"] == 200


def test_streams_past_the_grace_period_end_with_a_retry_event_and_the_exit_is_clean(
    tmp_path: Path,
) -> None:
    """The gateway ends the stream itself (tests/e2e/test_shutdown.py checks the timing)."""
    with stack(tmp_path, word_delay=0.2, shutdown_grace_seconds=0.5) as gw:
        _key, token = gw.token()
        reader = StreamReader(gw.public, token, words=60)  # about 12 s of answer
        reader.start()
        assert reader.first_chunk.wait(10)
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(timeout=10) == 0
        reader.join(5)
        stopped_after = time.monotonic() - signalled

    assert stopped_after < 8, "shutdown waited for the whole stream"
    assert "event: done" not in reader.body
    assert reader.error is None
    last = reader.body.rstrip("\n").rsplit("\n\n", 1)[-1]
    assert last.startswith("event: error\nretry: ")
    assert json.loads(last.rsplit("data: ", 1)[1])["code"] == "shutting_down"
    events = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    ended = [e for e in events if e["event"] == "request" and e["route"] == SEND]
    assert ended[-1]["status"] == 200  # answered: the stream ended as the gateway chose
