"""The upstream as the gateway sees it, whatever HTTP client does the work.

A :class:`Transport` sends one request to the upstream's origin and gives back an
:class:`UpstreamResponse`: status and headers once they are in, the body as it arrives
(in the manner of httpx's ``BaseTransport``). Two implementations exist
(:mod:`gateway.upstream.http1`, the default, and :mod:`gateway.upstream.aiohttp_session`);
both follow the same rules and pass the same conformance suite (``tests/upstream/``):

- an answer is delivered only to the request it answers: a connection is used again only
  after its last answer proved, by echoing the request's ``X-Request-Id``, that it was that
  request's, and with nothing more after it; an answer on a reused connection must echo
  its request's id; an echoed id that is not the request's fails the request
  (:class:`RequestIdMismatch`) and closes the connection;
- response heads are bounded while they are read (:class:`HeadLimits`);
- framing is exact (:mod:`gateway.upstream.response_head`);
- a ``GET`` or ``HEAD`` that meets a pooled connection the upstream has closed, before any
  byte of an answer, is sent once more on a new connection; never a ``POST``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Protocol, Self
from urllib.parse import urlsplit

from multidict import MultiMapping

#: methods sent once more when a pooled connection was found dead before any answer byte
RETRYABLE_METHODS = frozenset({"GET", "HEAD"})
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")


class UpstreamProtocolError(Exception):
    """The upstream's bytes are not a valid HTTP/1.1 response, or not one the gateway
    accepts. ``reason`` is the metrics word for it."""

    reason: ClassVar[str] = "bad_response"


class HeadTooLarge(UpstreamProtocolError):
    """A response head past one of the :class:`HeadLimits`."""


class RequestIdMismatch(UpstreamProtocolError):
    """The answer echoes an ``X-Request-Id`` that is not its request's: it answers another
    request (a stray or displaced answer)."""

    reason: ClassVar[str] = "request_id_mismatch"


class RequestIdMissing(UpstreamProtocolError):
    """The answer does not echo ``X-Request-Id`` where it must: the echo is required, or
    the connection was reused (only an echo proves whose answer arrives on it)."""

    reason: ClassVar[str] = "request_id_missing"


class UpstreamDisconnected(ConnectionError):
    """The connection closed before the response was complete."""


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """Bounds on a response head, enforced while it is read: bytes of the status line and
    headers together (every informational head before the final one included), bytes of
    one header line (name and value), header fields in one head."""

    max_bytes: int = 65536
    max_line: int = 8190
    max_headers: int = 128


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, parts.port or default)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}"


def check_request(target: str, headers: Mapping[str, str]) -> None:
    """``ValueError`` unless ``target`` is origin-form and no header name or value holds
    CR, LF or NUL (a request must never be split in two)."""
    if not target.startswith("/") or " " in target or not target.isprintable():
        raise ValueError(f"not an origin-form request target: {target!r}")
    for name, value in headers.items():
        for bad in _FORBIDDEN_IN_HEADERS:
            if bad in name or bad in value:
                raise ValueError(f"header {name!r} contains a control character")


def media_type(headers: MultiMapping[str]) -> str:
    """The media type, lower case and without parameters (as aiohttp gives it)."""
    value = headers.get("Content-Type")
    if not value:
        return "application/octet-stream"
    return value.partition(";")[0].strip().lower()


def declared_length(headers: MultiMapping[str]) -> int | None:
    value = headers.get("Content-Length")
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


class UpstreamResponse(Protocol):
    """An upstream response: status and headers now, the body as it arrives.

    Use it as a context manager (or call :meth:`release`): leaving returns a complete
    exchange's connection to the pool and closes an unfinished one, which is how the
    upstream learns that the client went away."""

    #: loop time by which the whole body must be in, when the caller set one
    deadline: float | None

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> MultiMapping[str]: ...

    @property
    def content_type(self) -> str: ...

    @property
    def content_length(self) -> int | None: ...

    def ready(self) -> bool:
        """True when :meth:`read_any` would not wait (false when unknown)."""
        ...

    async def read_any(self) -> bytes:
        """Everything received and not yet read; waits when there is nothing; ``b""``
        once the body is complete. Raises the connection's failure, if it failed."""
        ...

    def release(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Transport(Protocol):
    """Sends requests to one origin over a pool of connections."""

    @property
    def origin(self) -> Origin: ...

    @property
    def open_connections(self) -> int: ...

    @property
    def idle_connections(self) -> int: ...

    @property
    def waiting(self) -> int:
        """Callers waiting for a connection (the pool is full)."""
        ...

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        deadline: float | None = None,
        request_id: str | None = None,
    ) -> UpstreamResponse:
        """Send one request; the response once its headers are in, or ``TimeoutError``
        at ``deadline`` (event-loop time; the wait for a connection included).

        ``target`` is the origin-form path and query, already percent-encoded;
        ``headers`` must not contain CR, LF or NUL (``ValueError``). ``request_id`` is
        the ``X-Request-Id`` sent in ``headers``, which the answer may echo."""
        ...

    async def close(self) -> None:
        """Close every connection; requests still waiting for one fail."""
        ...
