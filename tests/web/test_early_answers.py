"""What the parser's refusals become: fixed details, never a byte of the request."""

import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)

from gateway.web.early_answers import (
    MAX_HEADER_LINE_BYTES,
    MAX_REQUEST_TARGET_BYTES,
    parse_refusal,
    problem_bytes,
)

SECRET = "pak_SeCrEtSeCrEt_0123456789"


@pytest.mark.parametrize(
    ("exc", "status", "detail"),
    [
        (LineTooLong(SECRET.encode(), MAX_REQUEST_TARGET_BYTES), 400, "request target is longer"),
        (LineTooLong(SECRET.encode(), MAX_HEADER_LINE_BYTES), 431, "header line is longer"),
        (BadHttpMessage("Too many headers received"), 431, "more than 128 header fields"),
        (BadHttpMethod(f"G(T /{SECRET}"), 400, "method is not valid"),
        (BadStatusLine(f"GET /{SECRET} HTTP/9.9"), 400, "not valid HTTP/1.1"),
        (InvalidURLError(f"Invalid URL: /{SECRET}"), 400, "target is not valid"),
        (
            InvalidHeader(f"Authorization: Bearer {SECRET}".encode()),
            400,
            "the request is malformed",
        ),
        (
            BadHttpMessage(f"Invalid header value char:\n\n  b'X: {SECRET}\\x00'\n     ^"),
            400,
            "malformed: Invalid header value char",
        ),
        (
            BadHttpMessage(f"{SECRET} header value:\n\n  b'x'\n  ^"),  # not an llhttp phrase
            400,
            "the request is malformed",
        ),
        (TransferEncodingError(f"chunk {SECRET}"), 400, "the request is malformed"),
        (BadHttpMessage("Missing 'Host' header in request."), 400, "Host header is missing"),
        (ValueError(SECRET), 400, "the request is malformed"),
    ],
)
def test_refusals_get_fixed_details(exc: BaseException, status: int, detail: str) -> None:
    err = parse_refusal(exc)
    assert err.status == status and detail in err.detail
    assert SECRET not in err.detail and "SeCrEt" not in err.detail


def test_a_raw_answer_is_complete_http() -> None:
    err = parse_refusal(BadHttpMessage("Too many headers received"))
    raw = problem_bytes(err, "0123abcd", {"Retry-After": "1"})
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert int(fields["Content-Length"]) == len(body)
    assert fields["Connection"] == "close" and fields["X-Request-Id"] == "0123abcd"
    assert fields["Retry-After"] == "1" and fields["X-Content-Type-Options"] == "nosniff"
    assert fields["Content-Type"] == "application/problem+json"
