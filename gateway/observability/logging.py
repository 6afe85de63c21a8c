"""Structured logs with structlog: one JSON object per line.

Gateway events go to stdout; records of libraries that use the standard ``logging``
module (warnings and above) go to stderr, rendered as JSON by the same processors. Both
chains end with the redaction processor (:mod:`gateway.observability.redaction`), so no
key, token, signing key or ``Authorization`` header can reach a line. Request context
(the request id) travels through contextvars; tests capture events with
``structlog.testing.capture_logs`` or read a real process's output.

Lines logged from the event loop are written once per turn of the loop (one system call
for all the access lines of the requests answered in that turn, instead of one each);
lines logged without a running loop, or from another thread, are written at once. Access
lines go to the same writer through a plan compiled from the chain in force
(:mod:`gateway.observability.access_plan`) when it has one.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
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


def render_json(logger: Any, method_name: str, event_dict: Any) -> bytes:
    """The renderer of the JSON chain: one object per line, as
    ``JSONRenderer(serializer=orjson.dumps)`` writes it, as a plain function so the access
    line's plan knows what it does (:mod:`gateway.observability.access_plan`)."""
    return orjson.dumps(event_dict)


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

#: the variables bound through :func:`context_var`, which ``merge_contextvars`` merges
CONTEXT_VARS: list[contextvars.ContextVar[Any]] = []


def context_var(name: str) -> contextvars.ContextVar[Any]:
    """The variable behind ``structlog.contextvars.bind_contextvars(name=...)``. Setting it
    binds as that function does, without its per-call bookkeeping (keyword dicts, name
    building); resetting it restores what was bound before (in the gateway: nothing). The
    gateway binds context only through these variables, so the access line's fast path
    knows which ones to look at (:mod:`gateway.observability.access_plan`)."""
    token = structlog.contextvars.bind_contextvars(**{name: None})[name]
    token.var.reset(token)
    if token.var not in CONTEXT_VARS:
        CONTEXT_VARS.append(token.var)
    return token.var


class _Installed:
    """What :func:`configure` installed last, to tell whether it is still in force."""

    processors: list[structlog.typing.Processor] | None = None
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
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else render_json
    )
    processors = [structlog.contextvars.merge_contextvars, *_shared_processors(), redact, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_logger_factory(fmt, out),
        cache_logger_on_first_use=True,
    )
    _configure_stdlib(max(numeric, logging.WARNING), fmt)
    _Installed.processors = processors
    # access lines are info lines: above info, structlog's filter drops them
    batched = _factory.logger if _factory is not None else None
    _Installed.access = batched if numeric <= logging.INFO else None


def access_writer() -> tuple[LoopBatchedLogger, list[structlog.typing.Processor]] | None:
    """Where to write an access line rendered outside the processor chain
    (:mod:`gateway.observability.access_log`), with the chain in force to render it as
    (its contents may change in place: tests capture events by swapping the processors of
    that same list); None for the chain itself: unless the JSON writer :func:`configure`
    installed is in force at info level, or when tests reset structlog."""
    access, installed = _Installed.access, _Installed.processors
    if access is None or installed is None:
        return None
    processors = structlog.get_config()["processors"]
    if processors is not installed:
        return None
    return access, processors


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
