"""The access line's fast path, compiled from the structlog processor chain in force.

Every request writes an access line, and running the generic chain (context merge, level,
ISO timestamp, redaction walking every field, rendering) costs several microseconds per
line. :func:`compile_plan` reads the chain once and reproduces what each of its
processors would do to an access line, in the chain's order: the keys it adds and where,
the values it sets, whether and with which redactor fields are redacted, and the renderer
that turns the line into bytes. A processor it does not know, or a known one with an
option it cannot reproduce, makes it refuse (:class:`Uncompiled`); the line then goes
through the chain itself. So changing the chain cannot make the two renderings differ: the
fast path follows the change or steps aside.

What each known processor becomes:

* ``merge_contextvars``: nothing, as long as no variable bound through
  :func:`gateway.observability.logging.context_var` holds a value when the line is
  written (the gateway binds only the request id, unbound before its line is written);
  while one does, that line goes through the chain.
* ``add_log_level``: run once on the template (a constant).
* ``TimeStamper(fmt="iso", utc=True, key=...)``: :func:`iso_utc_now` under its key.
* ``ExceptionRenderer``: nothing (an access line carries no ``exc_info``).
* the redaction processor (:func:`~gateway.observability.redaction.redact` or a
  :class:`~gateway.observability.redaction.Redactor`): the fields a client controls go
  through its ``text``; the others cannot hold a secret by construction (see
  :func:`_line_function`); constants are redacted once, here; a field whose name the
  redactor blanks makes the plan refuse.
* the renderer, last: :func:`~gateway.observability.logging.render_json` becomes
  ``orjson.dumps``; a ``JSONRenderer`` is called as the chain would call it.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from structlog.typing import Processor

from gateway.observability.labels import METHODS
from gateway.observability.logging import render_json
from gateway.observability.redaction import REDACTOR, Redactor, redact

EVENT = "request"
#: the line's own fields, in the order the chain receives them (``event`` comes after)
FIELDS = (
    "request_id",
    "method",
    "route",
    "status",
    "duration_ms",
    "client_ip",
    "key_id",
    "token_hash",
    "error",
)
#: the method name an access line is logged with
METHOD_NAME = "info"
#: processors whose effect on a line does not depend on the line: run once on the template
_CONSTANT = frozenset({structlog.processors.add_log_level})


class Uncompiled(ValueError):
    """The chain holds a processor (or an option of one) the fast path cannot reproduce."""


class _Second:
    """The formatted date and time of the last whole second seen (lines come in bursts)."""

    number = -1
    text = ""


def iso_utc_now(now_ns: int | None = None) -> str:
    """``datetime.now(UTC).isoformat()`` with ``Z`` for ``+00:00``, as structlog's
    ``TimeStamper(fmt="iso", utc=True)`` writes it (no fraction on a whole second), with
    the date formatted once per second rather than once per line."""
    second, rest = divmod(time.time_ns() if now_ns is None else now_ns, 1_000_000_000)
    if second != _Second.number:
        _Second.text = datetime.fromtimestamp(second, UTC).isoformat()[: -len("+00:00")]
        _Second.number = second
    micros = rest // 1000  # datetime.now() floors to the microsecond as well
    if micros:
        return f"{_Second.text}.{micros:06d}Z"
    return _Second.text + "Z"


@dataclass(frozen=True, slots=True)
class AccessPlan:
    """What the chain does to an access line: the keys it adds after the line's fields,
    where the time goes, what it merges, how it redacts and renders."""

    #: the keys after the fields (:data:`FIELDS`), in the chain's order, with their
    #: constant values (None where the time goes)
    tail: dict[str, Any]
    #: where ``TimeStamper`` puts the time, if the chain has one
    timestamp_key: str | None
    #: the variables whose value ``merge_contextvars`` would merge (None: it is absent)
    context_vars: Sequence[contextvars.ContextVar[Any]] | None
    #: the redactor the chain applies, if any
    redactor: Redactor | None
    #: the chain's renderer, applied to the finished line
    render: Callable[[dict[str, Any]], Any]

    #: ``line(request_id, request_id_generated, method, route, status, duration_ms,
    #: client_ip, key_id, token_hash, error)``: see :func:`_line_function`
    line: Callable[..., Any] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "line", _line_function(self))


def compile_plan(
    chain: Sequence[Processor], context_vars: Sequence[contextvars.ContextVar[Any]] = ()
) -> AccessPlan:
    """The plan reproducing ``chain`` for access lines, or :class:`Uncompiled`.

    ``context_vars`` are the variables ``merge_contextvars`` may find bound when a line is
    written (the plan keeps the sequence, so variables created later are seen too)."""
    template: dict[str, Any] = dict.fromkeys(FIELDS)
    template["event"] = EVENT
    timestamp_key: str | None = None
    merged: Sequence[contextvars.ContextVar[Any]] | None = None
    redactor: Redactor | None = None
    render = _renderer(chain[-1] if chain else None)
    for processor in chain[:-1]:
        if processor is structlog.contextvars.merge_contextvars:
            merged = context_vars
        elif processor in _CONSTANT:
            template = dict(processor(None, METHOD_NAME, template))
        elif isinstance(processor, structlog.processors.TimeStamper):
            if processor.fmt != "iso" or not processor.utc:
                raise Uncompiled(f"TimeStamper(fmt={processor.fmt!r}, utc={processor.utc})")
            timestamp_key = processor.key
            template[timestamp_key] = None
        elif isinstance(processor, structlog.processors.ExceptionRenderer):
            continue
        elif processor is redact or isinstance(processor, Redactor):
            if redactor is not None:
                raise Uncompiled("a second redaction processor")
            redactor = processor if isinstance(processor, Redactor) else REDACTOR
            template = _redacted(redactor, template)
        else:
            raise Uncompiled(f"unknown processor {processor!r}")
    fields, tail = list(template)[: len(FIELDS)], dict(list(template.items())[len(FIELDS) :])
    if fields != list(FIELDS):
        raise Uncompiled(f"the chain moves the line's fields: {list(template)}")
    return AccessPlan(tail, timestamp_key, merged, redactor, render)


#: the source of a plan's line function: the line's dict written out with the plan's keys
#: in their order (the fields, then the tail), as a literal, as the code it replaced was
_LINE_SOURCE = """
def line(request_id, request_id_generated, method, route, status, duration_ms, client_ip,
         key_id, token_hash, error):
    for var in context_vars:
        if var.get() is not Ellipsis:
            return None
    return render({{{items}}})
"""
#: each field's value in the line, without and with redaction
_PLAIN_VALUES = {name: name for name in FIELDS}
_REDACTED_VALUES = {
    **_PLAIN_VALUES,
    "request_id": "request_id if request_id_generated else text(request_id)",
    "method": "method if method in METHODS else text(method)",
    "client_ip": "text(client_ip) if client_ip is not None else None",
}


def _line_function(plan: AccessPlan) -> Callable[..., Any]:
    """The function rendering a line by ``plan``: ``line(request_id, request_id_generated,
    method, route, status, duration_ms, client_ip, key_id, token_hash, error)``, the
    rendered line or None when it must go through the chain (a context variable is bound).

    It is generated (as :mod:`dataclasses` generates ``__init__``) so that the line is one
    dict literal, as fast as the hand-written line it replaces; only names of this module
    and the keys' ``repr`` go into its source, constant values are passed as globals.

    With redaction, only what a client controls goes through the redactor: a request id
    taken from a trusted proxy, a method outside the standard names, the client address.
    The rest cannot carry a secret: a generated request id (random hex), a standard
    method, the route (a template from the code or the configuration, never the request's
    path), numbers, the key id (one matching the key id pattern: from a key record, a
    well-formed key or a token this gateway signed), the token hash (12 hex digits), the
    error (a problem code).
    """
    values = _PLAIN_VALUES if plan.redactor is None else _REDACTED_VALUES
    scope: dict[str, Any] = {
        "context_vars": plan.context_vars or (),
        "render": plan.render,
        "text": plan.redactor.text if plan.redactor is not None else None,
        "METHODS": METHODS,
        "iso_utc_now": iso_utc_now,
    }
    items = [f"{name!r}: {values[name]}" for name in FIELDS]
    for number, (key, value) in enumerate(plan.tail.items()):
        scope[f"tail_{number}"] = value
        items.append(f"{key!r}: tail_{number}")
    if plan.timestamp_key is not None:
        stamp = f"{plan.timestamp_key!r}: iso_utc_now()"
        position = [item.split(":")[0] for item in items].index(repr(plan.timestamp_key))
        items[position] = stamp
    exec(_LINE_SOURCE.format(items=", ".join(items)), scope)  # noqa: S102
    function: Callable[..., Any] = scope["line"]
    return function


def _renderer(processor: Processor | None) -> Callable[[dict[str, Any]], Any]:
    if processor is render_json:
        return orjson.dumps
    if isinstance(processor, structlog.processors.JSONRenderer):
        return functools.partial(processor, None, METHOD_NAME)
    raise Uncompiled(f"the chain does not end with a JSON renderer: {processor!r}")


def _redacted(redactor: Redactor, template: dict[str, Any]) -> dict[str, Any]:
    """The template as the redactor leaves it: constants redacted once; a field it would
    blank by its name refuses the plan (the fast path writes fields as they come)."""
    for name, value in template.items():
        if value is None and redactor.sensitive(name):
            raise Uncompiled(f"the redactor blanks the field {name!r}")
    return redactor.mapping(template)
