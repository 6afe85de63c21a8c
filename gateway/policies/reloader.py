"""Hot reload: the current policy set, swapped atomically when the files change.

Triggers: a change under the policy path (watchfiles, with a periodic content check as a
fallback for mounts without notifications, such as Kubernetes ConfigMap volumes) and
``SIGHUP``. A new set is validated whole before the swap; an invalid one is logged with
its file, line and field, and the last good set stays in force. Requests in flight keep
the set they started with.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import structlog

from gateway.core.policy import PolicySet
from gateway.policies.loader import LoadedPolicies, load_policies, policy_files
from gateway.watching import changes
from gateway.yaml_source import SourceError

log = structlog.get_logger("gateway.policies")


def _digest(path: Path) -> bytes:
    hasher = hashlib.sha256()
    try:
        for file in policy_files(path):
            hasher.update(file.name.encode() + b"\0")
            hasher.update(file.read_bytes() + b"\0")
    except (SourceError, OSError) as exc:
        hasher.update(f"error:{exc}".encode())
    return hasher.digest()


class PolicyStore:
    def __init__(
        self,
        path: Path,
        *,
        poll_seconds: float = 2.0,
        on_reload: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self._poll_seconds = poll_seconds
        self._on_reload = on_reload
        self._loaded: LoadedPolicies | None = None
        self._digest = b""

    @property
    def current(self) -> PolicySet:
        if self._loaded is None:
            raise RuntimeError("policies not loaded yet")
        return self._loaded.policies

    @property
    def loaded(self) -> LoadedPolicies:
        if self._loaded is None:
            raise RuntimeError("policies not loaded yet")
        return self._loaded

    def load(self) -> None:
        """The first load: an invalid set raises :class:`SourceError`."""
        digest = _digest(self.path)
        self._loaded = load_policies(self.path)
        self._digest = digest

    def reload(self, reason: str = "signal") -> bool:
        """Load again; keep the current set on error. True when a new set is in force."""
        digest = _digest(self.path)
        try:
            loaded = load_policies(self.path)
        except SourceError as exc:
            self._digest = digest
            log.error("policies_reload_failed", reason=reason, error=str(exc))
            self._report("failure")
            return False
        self._loaded, self._digest = loaded, digest
        log.info(
            "policies_reloaded",
            reason=reason,
            policies=len(loaded.policies.policies),
            files=[str(f) for f in loaded.files],
        )
        self._report("success")
        return True

    def _report(self, result: str) -> None:
        if self._on_reload is not None:
            self._on_reload(result)

    async def run(self, stop: asyncio.Event) -> None:
        """Reload whenever the files' content changes, until ``stop`` is set."""
        watched = self.path if self.path.is_dir() else self.path.parent
        async for _ in changes(watched, stop, self._poll_seconds):
            try:
                if _digest(self.path) != self._digest:
                    self.reload("file_change")
            except Exception:  # never let the watcher die
                log.exception("policies_reload_failed", reason="file_change")
