"""The access line: one per answered request, rendered as the processor chain would.

With the JSON format (:func:`gateway.observability.logging.configure`) the line is
rendered by a plan compiled from the structlog chain in force
(:mod:`gateway.observability.access_plan`: the same fields in the same order, the same
level, timestamp, redaction and renderer, without the generic chain's per-line cost) and
written through the same loop-batched writer. The plan is compiled again whenever the
chain changes; a chain it cannot reproduce, any other set-up (the console format, levels
above info, tests that reset structlog), or a bound context variable send the line
through structlog as every other event goes.
"""

from __future__ import annotations

import structlog
from structlog.typing import Processor

from gateway.observability.access_plan import EVENT, AccessPlan, Uncompiled, compile_plan
from gateway.observability.logging import CONTEXT_VARS, access_writer

_structlog_access = structlog.get_logger("gateway.access")


class _Compiled:
    """The plan of the chain last seen, and a copy of that chain to tell a change."""

    chain: list[Processor] = []
    plan: AccessPlan | None = None


def _compile(chain: list[Processor]) -> None:
    """Compile the plan of ``chain`` (None: the chain holds what it cannot reproduce)."""
    try:
        plan: AccessPlan | None = compile_plan(chain, CONTEXT_VARS)
    except Uncompiled:
        plan = None
    _Compiled.chain, _Compiled.plan = chain.copy(), plan


def emit(
    *,
    request_id: str,
    request_id_generated: bool,
    method: str,
    route: str,
    status: int,
    duration_ms: float,
    client_ip: str | None,
    key_id: str | None,
    token_hash: str | None,
    error: str | None,
) -> None:
    """Write the access line of one request (``request_id_generated``: the gateway made
    the request id, rather than taking it from a trusted proxy)."""
    writer = access_writer()
    if writer is not None:
        sink, chain = writer
        if chain != _Compiled.chain:  # configured anew, or changed in place
            _compile(chain)
        plan = _Compiled.plan
        if plan is not None:
            line = plan.line(
                request_id,
                request_id_generated,
                method,
                route,
                status,
                duration_ms,
                client_ip,
                key_id,
                token_hash,
                error,
            )
            if line is not None:
                sink.msg(line)
                return
    _structlog_access.info(
        EVENT,
        request_id=request_id,
        method=method,
        route=route,
        status=status,
        duration_ms=duration_ms,
        client_ip=client_ip,
        key_id=key_id,
        token_hash=token_hash,
        error=error,
    )
