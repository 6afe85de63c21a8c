"""The live policies: the current policy set, reloaded and swapped atomically when the
files change.

Triggers: a change under the policy path (watchfiles, with a periodic content check as a
fallback for mounts without notifications, such as Kubernetes ConfigMap volumes) and
``SIGHUP``. A new set is validated whole before the swap; an invalid one is logged with
its file, line and field, and the last good set stays in force. Requests in flight keep
the set they started with.

A file being written in place (truncated, then written in several steps) is never loaded
half-written: after a change, the files are read again every ``settle_seconds`` until
their content is the same twice in a row, and only then parsed; a set that fails to
load right after a change is tried again (``attempts`` in all, ``settle_seconds`` apart)
before the failure is logged and counted. Renaming a complete file into place (``mv``)
is still the way to change policies: see docs/policies.md.

A set that validates but leaves the gateway unprotected (no enforcing limit on the
token or send route, or no penalty box: :mod:`gateway.core.protection`) is refused like
an invalid one, unless ``policies.allow_unprotected`` is set, which logs a warning at
every load instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path

import structlog

from gateway.config.yaml_source import SourceError
from gateway.core.policy import PolicySet
from gateway.policies.loader import LoadedPolicies, load_policies, policy_files
from gateway.policies.protection import Assessment, assess
from gateway.watching import changes

log = structlog.get_logger("gateway.policies")

#: how long a changed file must stay the same before it is read
SETTLE_SECONDS = 0.5
#: loads tried after a change before a failure is reported
ATTEMPTS = 3


def _digest(path: Path) -> bytes:
    hasher = hashlib.sha256()
    try:
        for file in policy_files(path):
            hasher.update(file.name.encode() + b"\0")
            hasher.update(file.read_bytes() + b"\0")
    except (SourceError, OSError) as exc:
        hasher.update(f"error:{exc}".encode())
    return hasher.digest()


class LivePolicies:
    """The policy set in force, and its reloads (file changes, ``SIGHUP``)."""

    def __init__(
        self,
        path: Path,
        *,
        poll_seconds: float = 2.0,
        on_reload: Callable[[str], None] | None = None,
        allow_unprotected: bool = False,
        settle_seconds: float = SETTLE_SECONDS,
        attempts: int = ATTEMPTS,
    ) -> None:
        self.path = path
        self._poll_seconds = poll_seconds
        self._on_reload = on_reload
        self._allow_unprotected = allow_unprotected
        self._settle_seconds = settle_seconds
        self._attempts = max(attempts, 1)
        self._loaded: LoadedPolicies | None = None
        self._digest = b""

    @property
    def current(self) -> PolicySet:
        if self._loaded is None:
            raise RuntimeError("policies not loaded yet")
        return self._loaded.policies

    def _assess(self, loaded: LoadedPolicies) -> Assessment:
        return assess(loaded, allow_unprotected=self._allow_unprotected, source=str(self.path))

    def load(self) -> None:
        """The first load: an invalid or unprotected set raises :class:`SourceError`."""
        digest = _digest(self.path)
        loaded = load_policies(self.path)
        verdict = self._assess(loaded)
        if verdict.refused:
            raise SourceError(verdict.refusal())
        self._loaded, self._digest = loaded, digest
        self._warn(verdict, "start")

    def _attempt(self) -> tuple[LoadedPolicies | None, str]:
        """One load and assessment: the set to put in force, or why not."""
        try:
            loaded = load_policies(self.path)
        except SourceError as exc:
            return None, str(exc)
        verdict = self._assess(loaded)
        if verdict.refused:
            return None, verdict.refusal()
        return loaded, ""

    def _apply(self, loaded: LoadedPolicies, digest: bytes, reason: str) -> None:
        self._loaded, self._digest = loaded, digest
        log.info(
            "policies_reloaded",
            reason=reason,
            policies=len(loaded.policies.policies),
            files=[str(f) for f in loaded.files],
        )
        self._warn(self._assess(loaded), reason)
        self._report("success")

    def _fail(self, digest: bytes, reason: str, error: str) -> None:
        self._digest = digest  # not tried again until the files change
        log.error(
            "policies_reload_failed",
            reason=reason,
            error=error,
            kept_policies=len(self._loaded.policies.policies) if self._loaded else 0,
        )
        self._report("failure")

    def _warn(self, verdict: Assessment, reason: str) -> None:
        for notice in verdict.warnings:
            log.warning(notice.event, reason=reason, detail=notice.message, fix=notice.fix)

    def reload(self, reason: str = "signal") -> bool:
        """Load again now (``SIGHUP``); keep the current set on error. True when a new
        set is in force."""
        digest = _digest(self.path)
        loaded, error = self._attempt()
        if loaded is None:
            self._fail(digest, reason, error)
            return False
        self._apply(loaded, digest, reason)
        return True

    def _report(self, result: str) -> None:
        if self._on_reload is not None:
            self._on_reload(result)

    async def _pause(self, stop: asyncio.Event) -> bool:
        """Wait ``settle_seconds``; False when ``stop`` was set meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self._settle_seconds)
        return not stop.is_set()

    async def _settled(self, stop: asyncio.Event) -> bytes | None:
        """The files' digest once two reads ``settle_seconds`` apart agree (None on stop)."""
        before = _digest(self.path)
        while await self._pause(stop):
            after = _digest(self.path)
            if after == before:
                return after
            before = after
        return None

    async def reload_settled(self, stop: asyncio.Event, reason: str = "file_change") -> bool:
        """Reload after a change, once the files are stable; retry a set that fails right
        after a change. True when a new set is in force."""
        attempt = 0
        while True:
            digest = await self._settled(stop)
            if digest is None or digest == self._digest:
                return False
            loaded, error = self._attempt()
            if _digest(self.path) != digest:
                continue  # changed while being read: settle again, not counted
            if loaded is not None:
                self._apply(loaded, digest, reason)
                return True
            attempt += 1
            if attempt >= self._attempts:
                self._fail(digest, reason, error)
                return False
            log.info("policies_reload_retry", reason=reason, attempt=attempt, error=error)

    async def run(self, stop: asyncio.Event) -> None:
        """Reload whenever the files' content changes, until ``stop`` is set."""
        watched = self.path if self.path.is_dir() else self.path.parent
        async for _ in changes(watched, stop, self._poll_seconds):
            try:
                if _digest(self.path) != self._digest:
                    await self.reload_settled(stop)
            except Exception:  # never let the watcher die
                log.exception("policies_reload_failed", reason="file_change")
