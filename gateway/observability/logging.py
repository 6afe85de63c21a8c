"""Structured logs with structlog: one JSON object per line.

Gateway events go to stdout; records of libraries that use the standard ``logging``
module (warnings and above) go to stderr, rendered as JSON by the same processors. Both
chains end with the redaction processor (:mod:`gateway.observability.redaction`), so no
key, token, signing key or ``Authorization`` header can reach a line. Request context
(the request id) travels through contextvars; tests capture events with
``structlog.testing.capture_logs`` or read a real process's output.
"""

from __future__ import annotations

import logging
import sys
from typing import BinaryIO

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer

from gateway.observability.redaction import redact

#: tracebacks as structured data, without local variables (they may hold secrets)
render_exceptions = structlog.processors.ExceptionRenderer(
    ExceptionDictTransformer(show_locals=False)
)


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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *_shared_processors(),
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=(
            structlog.BytesLoggerFactory(out or sys.stdout.buffer)
            if fmt == "json"
            else structlog.PrintLoggerFactory(sys.stdout)
        ),
        cache_logger_on_first_use=True,
    )
    _configure_stdlib(max(numeric, logging.WARNING), fmt)


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
