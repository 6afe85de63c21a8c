"""A request read in a background thread, for tests that signal a process meanwhile."""

from __future__ import annotations

import threading
import time

import httpx

from tests.support.stack import SEND


class Reader(threading.Thread):
    """One POST of a message in the background: its body as it arrives, when and how it
    ended."""

    def __init__(self, url: str, token: str, *, stream: bool, message: str = "hello") -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.stream, self.message = url, token, stream, message
        self.started = threading.Event()  # streamed: the first event arrived; else: sent
        self.body = ""
        self.error: Exception | None = None
        self.ended_at = 0.0

    def run(self) -> None:
        body = {"client_token": self.token, "message": self.message, "stream": self.stream}
        try:
            with (
                httpx.Client(timeout=30) as client,
                client.stream("POST", self.url + SEND, json=body) as resp,
            ):
                for text in resp.iter_text():
                    self.body += text
                    self.started.set()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.started.set()
