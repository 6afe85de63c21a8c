"""Requests hostile clients send, as exact bytes, with what the gateway answers.

Each malformed request carries ``MARKER`` (and one a real-looking agent key) in the part
the parser refuses, so an answer or a log line quoting the request would show it.
"""

from gateway.core import agent_keys
from tests.support.harness import SEND_URL, TOKEN_URL
from tests.support.raw_http import request

KEY = agent_keys.generate().key
MARKER = "Zq7marker"
TOKEN_PATH = TOKEN_URL.format(model="demo")


def chunked_send(body: bytes) -> bytes:
    return request(
        "POST",
        SEND_URL,
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        body,
    )


def key_in_a_refused_header(key: str) -> bytes:
    """A token request whose ``Authorization`` header holds ``key`` and then a NUL."""
    return (
        f"GET {TOKEN_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\x00{MARKER}\r\n\r\n"
    ).encode()


#: name -> (exact bytes, status, problem code); each carries MARKER (and the key) in the
#: part the parser refuses, so an echo of the request would show
PARSER_CASES: dict[str, tuple[bytes, int, str]] = {
    "header line too long": (
        request(headers={"X-Long": MARKER * 1000}),
        431,
        "header_fields_too_large",
    ),
    "too many header fields": (
        request(headers={f"X-H{i}": MARKER for i in range(200)}),
        431,
        "header_fields_too_large",
    ),
    "header section too large": (
        request(headers={f"X-H{i}": MARKER * 100 for i in range(40)}),
        431,
        "header_fields_too_large",
    ),
    "request target too long": (
        request(path="/" + MARKER * 1000),
        400,
        "invalid_request",
    ),
    "Content-Length with Transfer-Encoding": (
        request(
            "POST",
            SEND_URL,
            {"Content-Length": "5", "Transfer-Encoding": "chunked", "X-M": MARKER},
            b"0\r\n\r\n",
        ),
        400,
        "invalid_request",
    ),
    "obs-fold": (
        f"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  {MARKER}\r\n\r\n".encode(),
        400,
        "invalid_request",
    ),
    "bad chunk size": (
        chunked_send(f"{MARKER}\r\n{{}}\r\n0\r\n\r\n".encode()),
        400,
        "invalid_request",
    ),
    "invalid method": (
        f"G(T /{MARKER} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        400,
        "invalid_request",
    ),
    "invalid version": (
        f"GET /{MARKER} HTTP/9.9\r\nHost: x\r\n\r\n".encode(),
        400,
        "invalid_request",
    ),
    "NUL in a header": (
        f"GET / HTTP/1.1\r\nHost: x\r\nX-A: {MARKER}\x00b\r\n\r\n".encode(),
        400,
        "invalid_request",
    ),
    "a key in the refused header": (key_in_a_refused_header(KEY), 400, "invalid_request"),
}
