"""The admin listener on a thread of its own, with its own event loop.

``/healthz``, ``/readyz`` and ``/metrics`` then never queue behind public traffic: however
busy (or blocked) the public event loop is, the admin loop keeps accepting and answering,
taking its turns at the interpreter lock (``SWITCH_SECONDS`` at most per step under load). It
reads only what is safe from another thread: the :class:`~gateway.observability.health.
Health` snapshot the public loop publishes (checks, heartbeat, draining flag) and the
Prometheus registry (whose values are locked or plain numbers).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable

from aiohttp import web

from gateway.web.listener import Listener, ListenerRunner

#: the interpreter's switch interval while the admin thread runs: how long it waits for
#: the interpreter lock at most before the busy public thread must hand it over (the
#: default 5 ms, paid at each step of an answer, made /readyz tens of milliseconds under
#: load; the public thread pays nothing for it while the admin thread sleeps in I/O)
SWITCH_SECONDS = 0.001
#: how long :meth:`AdminThread.start` waits for the listener to be bound, and
#: :meth:`AdminThread.stop` for the thread to end
START_SECONDS = 10.0
STOP_SECONDS = 5.0


class AdminThread:
    """Serve ``app`` through ``listener`` on ``host:port``, or on the unix socket ``path``
    (a worker's, see :mod:`gateway.supervisor`), from a daemon thread."""

    def __init__(
        self,
        app: web.Application,
        listener: Listener,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str | None = None,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self._app = app
        self._listener = listener
        self._host, self._port, self._path = host, port, path
        self._loop_factory = loop_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._bound = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="admin-listener", daemon=True)
        #: the addresses bound (``(host, port)`` or the socket path), once started
        self.addresses: list[object] = []

    def start(self) -> None:
        """Start the thread; return once the listener accepts, or raise why it cannot."""
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_SECONDS))
        self._thread.start()
        if not self._bound.wait(START_SECONDS):
            raise RuntimeError("the admin listener did not start")
        if self._failure is not None:
            self._thread.join(STOP_SECONDS)
            raise self._failure

    def stop(self) -> None:
        """Close the listener (answers in progress get a second) and end the thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(STOP_SECONDS)

    async def stop_async(self) -> None:
        """:meth:`stop` without blocking the calling event loop."""
        await asyncio.to_thread(self.stop)

    def _run(self) -> None:
        loop = self._loop_factory()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = ListenerRunner(self._app, self._listener, access_log=None, shutdown_timeout=1)
        try:
            await runner.setup()
            site: web.BaseSite
            if self._path is not None:
                site = web.UnixSite(runner, self._path)
            else:
                site = web.TCPSite(runner, self._host, self._port)
            await site.start()
            self.addresses = list(runner.addresses)
        except BaseException as exc:
            self._failure = exc
            self._bound.set()
            await runner.cleanup()
            return
        self._bound.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
