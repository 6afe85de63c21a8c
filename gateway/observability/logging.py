"""Structured logs with structlog: one JSON object per line.

Gateway events go to stdout; records of libraries that use the standard ``logging``
module (warnings and above) go to stderr, rendered as JSON by the same processors. Both
chains end with the redaction processor (:mod:`gateway.observability.redaction`), so no
key, token, signing key or ``Authorization`` header can reach a line. Request context
(the request id) travels through contextvars; tests capture events with
``structlog.testing.capture_logs`` or read a real process's output.

Lines logged from the event loop are written once per turn of the loop (one system call
for all the access lines of the requests answered in that turn, instead of one each);
lines logged without a running loop, or from another thread, are written at once. With
the JSON format, access lines skip the generic chain (:mod:`gateway.observability.access_log`)
and go to the same writer.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
from typing import Any, BinaryIO

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer

from gateway.observability.redaction import redact

#: tracebacks as structured data, without local variables (they may hold secrets)
render_exceptions = structlog.processors.ExceptionRenderer(
    ExceptionDictTransformer(show_locals=False)
)


class LoopBatchedLogger:
    """A structlog logger for rendered bytes, like ``structlog.BytesLogger``, that keeps
    the lines of one event-loop turn and writes them together at its end."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._lines: list[bytes] = []
        self._lock = threading.Lock()
        self._owner: asyncio.AbstractEventLoop | None = None

    def msg(self, message: bytes) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or (self._owner is not None and loop is not self._owner):
            self._write([message])  # no loop here (or another one): at once
            return
        if not self._lines:
            self._owner = loop
            loop.call_soon(self.flush)
        self._lines.append(message)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        self._owner = None
        if lines:
            self._write(lines)

    def _write(self, lines: list[bytes]) -> None:
        with self._lock:
            self._file.write(b"\n".join(lines) + b"\n")
            self._file.flush()


class _BatchedLoggerFactory:
    def __init__(self, file: BinaryIO) -> None:
        self.logger = LoopBatchedLogger(file)
        atexit.register(self.logger.flush)

    def __call__(self, *args: Any) -> LoopBatchedLogger:
        return self.logger


_factory: _BatchedLoggerFactory | None = None


class _Installed:
    """What :func:`configure` installed last, to tell whether it is still in force."""

    processors: list[structlog.typing.Processor] | None = None
    renderer: structlog.typing.Processor | None = None
    #: the writer of access lines rendered outside the chain (JSON at info or below)
    access: LoopBatchedLogger | None = None


def flush() -> None:
    """Write any lines still waiting for the end of their loop turn (at shutdown)."""
    if _factory is not None:
        _factory.logger.flush()


def _shared_processors() -> list[structlog.typing.Processor]:
    return [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        render_exceptions,
    ]


def configure(level: str = "info", fmt: str = "json", *, out: BinaryIO | None = None) -> None:
    """Install the processor chains; ``out`` (default stdout) receives gateway events."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
    processors = [structlog.contextvars.merge_contextvars, *_shared_processors(), redact, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_logger_factory(fmt, out),
        cache_logger_on_first_use=True,
    )
    _configure_stdlib(max(numeric, logging.WARNING), fmt)
    _Installed.processors, _Installed.renderer = processors, renderer
    # access lines are info lines: above info, structlog's filter drops them
    batched = _factory.logger if _factory is not None else None
    _Installed.access = batched if numeric <= logging.INFO else None


def access_writer() -> LoopBatchedLogger | None:
    """Where to write an access line rendered outside the processor chain
    (:mod:`gateway.observability.access_log`), or None for the chain itself: None unless
    the JSON chain :func:`configure` installed is the one in force. Tests reset
    structlog, or capture its events by swapping the processors of that same list (whose
    last one is then no longer the renderer), and then see every line in the chain."""
    access, installed = _Installed.access, _Installed.processors
    if access is None or installed is None:
        return None
    processors = structlog.get_config()["processors"]
    if processors is not installed or installed[-1] is not _Installed.renderer:
        return None
    return access


def _logger_factory(fmt: str, out: BinaryIO | None) -> Any:
    global _factory
    flush()
    if fmt != "json":
        _factory = None
        return structlog.PrintLoggerFactory(sys.stdout)
    _factory = _BatchedLoggerFactory(out or sys.stdout.buffer)
    return _factory


def _configure_stdlib(level: int, fmt: str) -> None:
    stdlib_renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                render_exceptions,
                redact,
                stdlib_renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").disabled = True  # its lines would contain tokens
