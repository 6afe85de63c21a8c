"""Answer generators: an echo model, or any OpenAI-compatible chat completions server.

Both yield the answer as text pieces as soon as they exist, so the backend can stream
them as server-sent events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import aiohttp


class Model(Protocol):
    def answer(self, model_id: str, history: Sequence[dict[str, str]]) -> AsyncIterator[str]: ...


class ModelError(Exception):
    """The model could not answer."""


class EchoModel:
    """Answers "You said: <message>" word by word, ``word_delay`` seconds apart."""

    def __init__(self, word_delay: float = 0.02) -> None:
        self.word_delay = word_delay

    async def answer(self, model_id: str, history: Sequence[dict[str, str]]) -> AsyncIterator[str]:
        text = f"You said: {history[-1]['content']}"
        words = text.split(" ")
        for index, word in enumerate(words):
            if index and self.word_delay:
                await asyncio.sleep(self.word_delay)
            yield word if index == len(words) - 1 else word + " "


def completions_url(base_url: str) -> str:
    """The chat completions endpoint of an OpenAI-compatible server. The base URL may end
    in ``/v1``, as the OpenAI SDKs and compatible servers document it
    (``https://api.openai.com/v1``), or not (``http://litellm:4000``)."""
    base = base_url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return base + "/chat/completions"


class OpenAIChatModel:
    """Calls the server's ``/v1/chat/completions`` (:func:`completions_url`) with
    ``stream: true``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        api_key: str | None = None,
        model_map: dict[str, str] | None = None,
        timeout: float = 120.0,
    ) -> None:
        self._session = session
        self._url = completions_url(base_url)
        self._api_key = api_key
        self._model_map = model_map or {}
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout)

    async def answer(self, model_id: str, history: Sequence[dict[str, str]]) -> AsyncIterator[str]:
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        body = {
            "model": self._model_map.get(model_id, model_id),
            "messages": [{"role": m["role"], "content": m["content"]} for m in history],
            "stream": True,
        }
        try:
            async with self._session.post(
                self._url, json=body, headers=headers, timeout=self._timeout
            ) as resp:
                if resp.status != 200:
                    raise ModelError(f"chat completions answered {resp.status}")
                async for data in _sse_data(resp.content):
                    if data == "[DONE]":
                        return
                    try:
                        choices = json.loads(data).get("choices") or []
                    except json.JSONDecodeError as exc:
                        raise ModelError("chat completions sent invalid JSON") from exc
                    for choice in choices:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            yield piece
        except aiohttp.ClientError as exc:
            raise ModelError(f"chat completions unreachable: {type(exc).__name__}") from exc


async def _sse_data(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined by newlines)."""
    lines: list[str] = []
    while True:
        raw = await content.readline()
        if not raw:
            break
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)
