"""Visitors of a served gateway: each sends requests with its own token and reads what
comes back; :func:`outcome` says whether it was the visitor's own answer, an upstream
problem, or (never allowed) another request's bytes."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from tests.support.harness import MESSAGES_URL, SEND_URL
from tests.support.raw_upstream import ThreadedRawServer
from tests.support.served import USER_AGENT, ServedGateway, Token
from tests.upstream.hostile import EMPTY, OWN, OWN_ERROR, TRUNCATED

KINDS = ("get", "post", "stream")
MISMATCH = "MISMATCH"
#: conversation ids (UUIDs) and the gateway's request ids (24 hex digits)
_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{24}")
UPSTREAM_CODES = {"upstream_unavailable", "upstream_error", "upstream_timeout"}


@dataclass
class Result:
    kind: str
    token: Token
    status: int
    headers: CIMultiDict[str]
    body: bytes
    error: str | None

    @property
    def request_id(self) -> str:
        return self.headers.get("X-Request-Id", "")

    def describe(self) -> str:
        text = self.body[:300].decode("utf-8", "replace")
        return (
            f"{self.kind} status={self.status} request_id={self.request_id} "
            f"conversation={self.token.conversation_id} error={self.error} body={text!r}"
        )


def outcome(result: Result) -> str:
    """What the visitor got (see :mod:`tests.upstream.hostile`); ``MISMATCH`` when any
    id in the answer is not its own."""
    text = result.body.decode("utf-8", "replace")
    own = {result.request_id, result.token.conversation_id}
    if any(found not in own for found in _IDS.findall(text)):
        return MISMATCH
    if result.error is not None:
        return TRUNCATED if result.status == 200 else f"client error {result.error}"
    status = result.status
    if status in (502, 504):
        try:
            code = json.loads(text)["code"]
        except (ValueError, KeyError):
            return f"{status} without a problem"
        return str(status) if code in UPSTREAM_CODES else f"{status} {code}"
    if status in (204, 304) and not result.body:
        return EMPTY
    if status != 200:
        return f"unexpected {status}"
    content_type = result.headers.get("Content-Type", "")
    if content_type.startswith("application/json"):
        try:
            data = json.loads(text)
        except ValueError:
            return "not JSON"
        named = (data.get("request_id"), data.get("conversation_id"))
        return OWN if named == (result.request_id, result.token.conversation_id) else MISMATCH
    if content_type.startswith("text/event-stream"):
        return _stream_outcome(text, result)
    return f"unexpected content type {content_type}"


def _stream_outcome(text: str, result: Result) -> str:
    events = [block for block in text.split("\n\n") if block.strip()]
    if not events:
        return "empty stream"
    errored = False
    for block in events:
        lines = block.split("\n")
        name = next((line[7:] for line in lines if line.startswith("event: ")), "message")
        data = json.loads(next(line[6:] for line in lines if line.startswith("data: ")))
        if name == "error":
            errored = data.get("code") in UPSTREAM_CODES
            continue
        if (data.get("request_id"), data.get("conversation_id")) != (
            result.request_id,
            result.token.conversation_id,
        ):
            return MISMATCH
    return OWN_ERROR if errored else OWN


async def visit(http: aiohttp.ClientSession, gw: ServedGateway, kind: str, token: Token) -> Result:
    if kind == "get":
        request = http.get(gw.public + MESSAGES_URL.format(token=token.token))
    else:
        payload = {"client_token": token.token, "message": "hi", "stream": kind == "stream"}
        request = http.post(gw.public + SEND_URL, json=payload)
    status, headers, body, error = 0, CIMultiDict[str](), b"", None
    try:
        async with request as resp:
            status, headers = resp.status, CIMultiDict(resp.headers)
            async for chunk in resp.content.iter_any():
                body += chunk
    except (TimeoutError, aiohttp.ClientError) as exc:
        error = type(exc).__name__
    return Result(kind, token, status, headers, body, error)


def session(connections: int = 64) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        headers={"User-Agent": USER_AGENT},
        timeout=aiohttp.ClientTimeout(total=30),
    )


def settle(gw: ServedGateway, hostile: ThreadedRawServer) -> None:
    """Start clean: the upstream drops every connection, and the gateway has seen it."""
    hostile.drop_connections()
    deadline = time.monotonic() + 15
    while gw.metric("gateway_upstream_connections", state="open") > 0:
        assert time.monotonic() < deadline, "the gateway kept upstream connections"
        time.sleep(0.05)


def post_ids_sent_twice(hostile: ThreadedRawServer, since: int) -> list[str]:
    """POSTs the upstream received more than once (a chat message sent twice)."""
    counts = Counter(
        request.request_id
        for request in hostile.raw.requests[since:]
        if request.method == "POST" and request.request_id
    )
    return [request_id for request_id, count in counts.items() if count > 1]


def tally(results: list[Result]) -> dict[str, int]:
    return dict(Counter(f"{r.kind}:{outcome(r)}" for r in results))
