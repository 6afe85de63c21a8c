"""The throughput scenarios: what each target is sent for one scenario."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from bench.load import Request
from bench.probes import INTERNAL, SEND_PATH, TOKEN_PATH

JSON = "Content-Type: application/json"
MESSAGES_PATH = "/v1/chat/conversation/public/messages/"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    #: kind of target ("direct", "bare", "gateway", "envoy") -> requests, or None (n/a)
    build: Callable[[str, list[str], str], list[Request] | None]


def _send(kind: str, tokens: list[str], key: str) -> list[Request]:
    if kind == "direct":
        body = orjson.dumps({"model_id": "demo", "message": "hello", "stream": False}).decode()
        return [Request("POST", INTERNAL, body, (JSON, "Accept: application/json"))]
    out = []
    for token in tokens:
        body = orjson.dumps({"client_token": token, "message": "hello"}).decode()
        headers = (JSON, f"Authorization: Bearer {token}") if kind == "envoy" else (JSON,)
        out.append(Request("POST", SEND_PATH, body, headers))
    return out


def _read(kind: str, tokens: list[str], key: str) -> list[Request]:
    if kind == "direct":
        return [Request("GET", INTERNAL, "", ("Accept: application/json",))]
    return [
        Request(
            "GET",
            MESSAGES_PATH + token,
            "",
            (f"Authorization: Bearer {token}",) if kind == "envoy" else (),
        )
        for token in tokens
    ]


def _token(kind: str, tokens: list[str], key: str) -> list[Request] | None:
    if kind == "envoy":
        return None  # Envoy does not issue tokens
    return [Request("GET", TOKEN_PATH, "", (f"Authorization: Bearer {key}",))]


SCENARIOS = (
    Scenario("send", "POST a message (JSON answer)", _send),
    Scenario("read", "read messages", _read),
    Scenario("token", "create a token (argon2id key, cache warm)", _token),
)
