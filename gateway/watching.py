"""Noticing file changes: change notifications, with a periodic wake-up as a fallback.

Notifications alone miss changes on some mounts (Kubernetes ConfigMap and Secret volumes
swap a symlink; network filesystems send nothing), so the loop also wakes every
``poll_seconds``. Callers compare content, so extra wake-ups cost one read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from watchfiles import awatch


async def changes(directory: Path, stop: asyncio.Event, poll_seconds: float) -> AsyncIterator[None]:
    """Yields after each batch of changes under ``directory`` and at least every
    ``poll_seconds``, until ``stop`` is set."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    async for _batch in awatch(
        directory,
        stop_event=stop,
        yield_on_timeout=True,
        rust_timeout=max(int(poll_seconds * 1000), 50),
        debounce=100,
        step=20,
    ):
        yield
