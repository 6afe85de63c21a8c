"""Domain errors with stable codes; one middleware turns them into RFC 9457 problems.

The ``code`` is the contract clients program against; ``title`` is fixed per code and
``detail`` explains this occurrence without ever including a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

PROBLEM_TYPE_BASE = "urn:agent-gateway:problem:"


@dataclass(frozen=True, slots=True)
class ProblemKind:
    status: int
    title: str


KINDS: dict[str, ProblemKind] = {
    "invalid_request": ProblemKind(400, "Invalid request"),
    "missing_credentials": ProblemKind(401, "Missing credentials"),
    "invalid_token": ProblemKind(401, "Invalid access token"),
    "invalid_dpop_proof": ProblemKind(401, "Invalid DPoP proof"),
    "token_invalid": ProblemKind(403, "Invalid token"),
    "token_expired": ProblemKind(403, "Expired token"),
    "token_revoked": ProblemKind(403, "Revoked token"),
    "token_reuse_suspected": ProblemKind(403, "Suspicious token reuse"),
    "origin_not_allowed": ProblemKind(403, "Origin not allowed"),
    "conversation_expired": ProblemKind(403, "Conversation expired"),
    "insufficient_scope": ProblemKind(403, "Insufficient scope"),
    "key_not_found": ProblemKind(404, "Key not found"),
    "model_not_found": ProblemKind(404, "Model not found"),
    "conversation_not_found": ProblemKind(404, "Conversation not found"),
    "not_found": ProblemKind(404, "Not found"),
    "method_not_allowed": ProblemKind(405, "Method not allowed"),
    "request_timeout": ProblemKind(408, "Request timeout"),
    "payload_too_large": ProblemKind(413, "Payload too large"),
    "unsupported_media_type": ProblemKind(415, "Unsupported media type"),
    "expectation_failed": ProblemKind(417, "Expectation failed"),
    "rate_limited": ProblemKind(429, "Too many requests"),
    "too_many_connections": ProblemKind(429, "Too many connections"),
    "header_fields_too_large": ProblemKind(431, "Request header fields too large"),
    "internal_error": ProblemKind(500, "Internal error"),
    "upstream_unavailable": ProblemKind(502, "Upstream unavailable"),
    "upstream_error": ProblemKind(502, "Upstream error"),
    "store_unavailable": ProblemKind(503, "State store unavailable"),
    "overloaded": ProblemKind(503, "Overloaded"),
    "identity_provider_unavailable": ProblemKind(503, "Identity provider unavailable"),
    "upstream_timeout": ProblemKind(504, "Upstream timeout"),
}


@dataclass(eq=False)
class ProblemError(Exception):
    """Raise anywhere below a handler to answer with ``application/problem+json``."""

    code: str
    detail: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.code not in KINDS:
            raise ValueError(f"unknown problem code {self.code!r}")
        super().__init__(f"{self.code}: {self.detail}")

    @property
    def status(self) -> int:
        return KINDS[self.code].status

    @property
    def title(self) -> str:
        return KINDS[self.code].title

    def body(self) -> dict[str, object]:
        return {
            "type": PROBLEM_TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
