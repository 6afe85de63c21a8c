"""Conversations kept in memory, bounded (least recently used ones are forgotten)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Conversation:
    conversation_id: str
    model_id: str
    messages: list[dict[str, str]] = field(default_factory=list)
    #: the authenticated subject of a private conversation
    owner: str | None = None

    def add(self, role: str, content: str) -> dict[str, str]:
        message = {"role": role, "content": content, "created_at": now_iso()}
        self.messages.append(message)
        return message

    def view(self) -> dict[str, object]:
        return {
            "conversation_id": self.conversation_id,
            "model_id": self.model_id,
            "messages": list(self.messages),
        }


class Conversations:
    def __init__(self, max_conversations: int = 10_000) -> None:
        self._items: OrderedDict[str, Conversation] = OrderedDict()
        self._max = max_conversations

    def get(self, conversation_id: str) -> Conversation | None:
        conversation = self._items.get(conversation_id)
        if conversation is not None:
            self._items.move_to_end(conversation_id)
        return conversation

    def get_or_create(
        self,
        key: str,
        model_id: str,
        *,
        display_id: str | None = None,
        owner: str | None = None,
    ) -> Conversation:
        """The conversation stored under ``key``; a new one is shown as ``display_id``."""
        conversation = self.get(key)
        if conversation is None:
            conversation = Conversation(display_id or key, model_id, owner=owner)
            self._items[key] = conversation
            while len(self._items) > self._max:
                self._items.popitem(last=False)
        return conversation

    def delete(self, key: str) -> bool:
        return self._items.pop(key, None) is not None

    def values(self) -> Iterator[Conversation]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)
