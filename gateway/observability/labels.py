"""Bounded label values: what may become a Prometheus label, and what becomes ``other``.

A label value that grows with traffic (an IP, a key, a token, an id) multiplies series
until Prometheus falls over; these helpers make that impossible by construction.
"""

from __future__ import annotations

import re

OTHER = "other"
WORD = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
#: policy names, as the policy language allows them (operator-chosen, never per client)
POLICY_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,47}$")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Vocabulary:
    """Turns a free-form word into a safe label value: ``snake_case`` only, and at most
    ``limit`` distinct values (later newcomers become ``other``)."""

    def __init__(
        self, limit: int = 64, known: tuple[str, ...] = (), pattern: re.Pattern[str] = WORD
    ) -> None:
        self._limit = limit
        self._pattern = pattern
        self._seen: set[str] = set(known)

    def __call__(self, word: str) -> str:
        if word in self._seen:
            return word
        if not self._pattern.match(word) or len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(word)
        return word


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER


def method_label(method: str) -> str:
    return method if method in METHODS else OTHER
